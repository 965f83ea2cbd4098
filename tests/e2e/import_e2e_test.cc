// `pac-concurrency import` against a real server, as an operator runs it on
// a cluster's export (issue 23): full objects as kubectl prints them, JSON
// or YAML, a file or stdin, in batches; an interrupted import run again
// completes with the state of one run in one go.
#include <algorithm>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "src/server/remote_api.h"
#include "tests/conformance/tcp_forwarder.h"
#include "tests/e2e/e2e_process.h"

namespace pac::concurrency {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// One PipelineRun as a cluster returns it (~14 KB: managedFields, the
// last-applied configuration, a spec and a status with child references).
Json ClusterRun(const std::string& ns, int i, const std::string& state,
                int event) {
  const std::string name = "pr-" + std::to_string(i);
  Json managed = Json::array();
  for (int m = 0; m < 8; ++m) {
    managed.push_back(
        {{"apiVersion", "tekton.dev/v1"},
         {"fieldsType", "FieldsV1"},
         {"manager", "pipelines-as-code-controller"},
         {"operation", "Update"},
         {"fieldsV1",
          {{"f:metadata",
            {{"f:annotations", {{"f:x", std::string(600, 'm')}}}}}}}});
  }
  const std::string order = ns + "/pr-" + std::to_string(event * 2) + "," + ns +
                            "/pr-" + std::to_string(event * 2 + 1);
  char created[32];
  std::snprintf(created, sizeof created, "2026-01-01T10:%02d:%02dZ",
                (i / 60) % 60, i % 60);
  Json run = {
      {"apiVersion", "tekton.dev/v1"},
      {"kind", "PipelineRun"},
      {"metadata",
       {{"name", name},
        {"namespace", ns},
        {"creationTimestamp", created},
        {"uid", "7f3a" + std::to_string(i)},
        {"managedFields", managed},
        {"labels",
         {{"pipelinesascode.tekton.dev/state", state},
          {"pipelinesascode.tekton.dev/repository", "app"},
          {"app.kubernetes.io/managed-by", "pipelinesascode.tekton.dev"},
          {"tekton.dev/pipeline", name}}},
        {"annotations",
         {{"pipelinesascode.tekton.dev/state", state},
          {"pipelinesascode.tekton.dev/repository", "app"},
          {"pipelinesascode.tekton.dev/execution-order", order},
          {"kubectl.kubernetes.io/last-applied-configuration",
           std::string(4600, 'c')}}}}},
      {"spec",
       {{"pipelineRef", {{"name", "build"}}},
        {"params", Json::array({{{"name", "revision"},
                                 {"value", std::string(40, 'a')}}})}}},
      {"status",
       {{"conditions",
         Json::array(
             {{{"type", "Succeeded"},
               {"status", "Unknown"},
               {"reason", state == "queued" ? "Pending" : "Running"}}})},
        {"childReferences", Json::array({{{"name", name + "-build"},
                                          {"pipelineTaskName", "build"},
                                          {"kind", "TaskRun"}}})},
        {"pipelineSpec", {{"tasks", std::string(2000, 't')}}}}}};
  if (state == "queued") run["spec"]["status"] = "PipelineRunPending";
  return run;
}

// `runs` runs in namespace `ns`: the first two started, the rest queued in
// events of two.
Json Export(const std::string& ns, int runs) {
  Json list = {
      {"apiVersion", "v1"}, {"kind", "List"}, {"items", Json::array()}};
  for (int i = 0; i < runs; ++i) {
    list["items"].push_back(
        ClusterRun(ns, i, i < 2 ? "started" : "queued", i / 2));
  }
  return list;
}

std::string Manifest(const std::string& ns, int limit) {
  return "kind: Repository\nmetadata: {name: app, namespace: " + ns +
         "}\nspec: {concurrency_limit: " + std::to_string(limit) + "}\n";
}

std::vector<std::string> QueueOf(const std::string& url,
                                 const std::string& repo) {
  server::RemoteApi api(url, "");
  auto s = api.Status(Context::Background(), repo);
  std::vector<std::string> out;
  if (!s.ok()) return out;
  for (const Json& q : (*s)["queued"]) out.push_back(q["pipeline_run"]);
  return out;
}

// Before: 440 full PipelineRuns (6.2 MB) were refused ("request body: too
// large"): the CLI sent whole objects in one request. Now the export is
// read as a stream, trimmed and sent in batches under the default limits,
// from a file, from stdin, and as YAML.
TEST(ImportE2ETest, ARealisticExportImportsWithDefaultLimits) {
  ServerProcess server;
  ASSERT_FALSE(server.url().empty());
  const std::string ns = Unique("imp");
  const Json list = Export(ns, 440);
  const std::string text = list.dump();
  ASSERT_GT(text.size(), 6'000'000u);
  const std::string prs = WriteFile("prs-440.json", text);
  const std::string repos = WriteFile("repos-440.yaml", Manifest(ns, 2));
  // One answer is lost on the way back: the batch is sent again, and
  // changes nothing the second time.
  const std::string host = server.url().substr(server.url().find("//") + 2);
  auto fwd = conformance::TcpForwarder::Start(host);
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  (*fwd)->CutOnNextReply();
  CliResult r = Cli("http://" + (*fwd)->endpoint(),
                    {"import", "--pipelineruns", prs, "--repositories", repos,
                     "-o", "json", "--batch-size", "100"});
  ASSERT_EQ(r.code, 0) << r.out.substr(0, 2000);
  const Json d = r.json();
  EXPECT_EQ(d["running"].size(), 2u);
  EXPECT_EQ(d["queued"].size(), 438u);
  EXPECT_TRUE(d["admitted"].empty());
  EXPECT_EQ(InUse(server.url(), ns + "/app"), 2);
  const std::vector<std::string> queue = QueueOf(server.url(), ns + "/app");
  ASSERT_EQ(queue.size(), 438u);
  EXPECT_EQ(queue[0], ns + "/pr-2");
  EXPECT_EQ(queue[437], ns + "/pr-439");

  // The same export from stdin, as YAML (one document per run), into a
  // second namespace: the same queue.
  const std::string ns2 = Unique("imp");
  std::string yaml;
  const Json list2 = Export(ns2, 440);
  for (const Json& item : list2["items"]) {
    yaml += "---\n" + item.dump() + "\n";
  }
  const std::string yaml_file = WriteFile("prs-440.yaml", yaml);
  const std::string repos2 = WriteFile("repos2-440.yaml", Manifest(ns2, 2));
  CliResult y;
  y.code = Finish(Spawn({"/bin/sh", "-c",
                         std::string(Binary()) + " --server " + server.url() +
                             " import --pipelineruns - --repositories " +
                             repos2 + " < " + yaml_file}),
                  &y.out);
  ASSERT_EQ(y.code, 0) << y.out.substr(0, 2000);
  EXPECT_THAT(y.out, HasSubstr("queued 438"));
  EXPECT_EQ(QueueOf(server.url(), ns2 + "/app").size(), 438u);
  EXPECT_EQ(QueueOf(server.url(), ns2 + "/app")[0], ns2 + "/pr-2");
}

// Before: a 100k import hit the request timeout and left part of it
// written; a second import did not complete it. Now each batch is applied
// idempotently: an import stopped part way (--timeout) and run again
// leaves the same state as one run in one go.
// --group-label and --priority-label: each queued run keeps the group and
// priority its labels give (here the pipeline's name and its number % 3),
// so that under the priority mode the queue follows them, and a newer run
// of a group supersedes the imported one.
// The manifests' pac-concurrency.dev/shared-limits annotation joins the
// repository to its shared limits before any run is imported: the waiting
// runs stay queued behind the shared limit, though the repository's own
// limit has room (without it, both would be admitted).
TEST(ImportE2ETest, TheSharedLimitsAnnotationHoldsTheImportedQueue) {
  ServerProcess server;
  const std::string ns = Unique("imps");
  const std::string pool = ns + "-pool";
  server::RemoteApi api(server.url(), "");
  ASSERT_TRUE(
      api.SetSharedLimit(Context::Background(), pool, Json{{"limit", 1}}).ok());
  const std::string prs = WriteFile("prs-shared.json", Export(ns, 4).dump());
  const std::string repos = WriteFile(
      "repos-shared.yaml",
      "kind: Repository\nmetadata:\n  name: app\n  namespace: " + ns +
          "\n  annotations: {pac-concurrency.dev/shared-limits: " + pool +
          "}\nspec: {concurrency_limit: 5}\n");
  CliResult r = Cli(server.url(), {"import", "--pipelineruns", prs,
                                   "--repositories", repos, "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.out.substr(0, 2000);
  EXPECT_EQ(InUse(server.url(), ns + "/app"), 2);  // the running, adopted
  EXPECT_EQ(QueueOf(server.url(), ns + "/app").size(), 2u);
  auto policy = api.GetPolicy(Context::Background(), ns + "/app");
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_EQ((*policy)["shared_limits"], Json::array({pool}));
}

TEST(ImportE2ETest, LabelsGiveImportedRunsTheirGroupAndPriority) {
  ServerProcess server;
  ASSERT_FALSE(server.url().empty());
  const std::string ns = Unique("impl");
  Json list = Export(ns, 8);
  for (size_t i = 0; i < list["items"].size(); ++i) {
    list["items"][i]["metadata"]["labels"]["example.com/priority"] =
        std::to_string(i % 3);
  }
  const std::string prs = WriteFile("prs-labels.json", list.dump());
  const std::string repos = WriteFile("repos-labels.yaml", Manifest(ns, 2));
  ASSERT_EQ(Cli(server.url(),
                {"limit", "--repo", ns + "/app", "2", "--mode", "priority"})
                .code,
            0);
  CliResult r =
      Cli(server.url(), {"import", "--pipelineruns", prs, "--repositories",
                         repos, "--group-label", "tekton.dev/pipeline",
                         "--priority-label", "example.com/priority"});
  ASSERT_EQ(r.code, 0) << r.out.substr(0, 2000);
  // pr-2 .. pr-7 queued, priorities 2 0 1 2 0 1: 2s first, then 1s, then
  // 0s, each oldest first.
  EXPECT_EQ(
      QueueOf(server.url(), ns + "/app"),
      (std::vector<std::string>{ns + "/pr-2", ns + "/pr-5", ns + "/pr-4",
                                ns + "/pr-7", ns + "/pr-3", ns + "/pr-6"}));
  // pr-5's group is its pipeline label, "pr-5": a newer run of it
  // supersedes it.
  CliResult newer =
      Cli(server.url(),
          {"acquire", "--repo", ns + "/app", "--run", ns + "/pr-5-again",
           "--group", "pr-5", "--creation-time", "2026-02-01T00:00:00Z"});
  EXPECT_EQ(newer.code, 3) << newer.out;
  const std::vector<std::string> after = QueueOf(server.url(), ns + "/app");
  EXPECT_EQ(std::count(after.begin(), after.end(), ns + "/pr-5"), 0) << r.out;
}

TEST(ImportE2ETest, AnInterruptedImportRunAgainCompletes) {
  ServerProcess server;
  ASSERT_FALSE(server.url().empty());
  const std::string whole = Unique("imp"), parts = Unique("imp");
  const std::string whole_file =
      WriteFile("whole.json", Export(whole, 600).dump());
  const std::string parts_file =
      WriteFile("parts.json", Export(parts, 600).dump());
  const std::string whole_repos = WriteFile("whole.yaml", Manifest(whole, 3));
  const std::string parts_repos = WriteFile("parts.yaml", Manifest(parts, 3));
  CliResult once =
      Cli(server.url(), {"import", "--pipelineruns", whole_file,
                         "--repositories", whole_repos, "--batch-size", "5"});
  ASSERT_EQ(once.code, 0) << once.out.substr(0, 2000);
  // Stopped by its deadline after some batches (a slow link makes a
  // batch take some milliseconds).
  const std::string host = server.url().substr(server.url().find("//") + 2);
  auto slow = conformance::TcpForwarder::Start(host);
  ASSERT_TRUE(slow.ok()) << slow.status();
  (*slow)->SetDelay(absl::Milliseconds(5));
  CliResult cut =
      Cli("http://" + (*slow)->endpoint(),
          {"--timeout", "1s", "import", "--pipelineruns", parts_file,
           "--repositories", parts_repos, "--batch-size", "1"});
  EXPECT_EQ(cut.code, 124) << cut.out.substr(0, 500);
  EXPECT_THAT(cut.out.substr(0, 2000),
              HasSubstr("running it again completes it"));
  const size_t part = QueueOf(server.url(), parts + "/app").size();
  EXPECT_LT(part, 597u) << "the import was not interrupted";
  CliResult again = Cli(
      server.url(), {"import", "--pipelineruns", parts_file, "--repositories",
                     parts_repos, "--batch-size", "5", "-o", "json"});
  ASSERT_EQ(again.code, 0) << again.out.substr(0, 2000);
  std::vector<std::string> a = QueueOf(server.url(), whole + "/app");
  std::vector<std::string> b = QueueOf(server.url(), parts + "/app");
  ASSERT_EQ(a.size(), 597u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(b[i].substr(parts.size()), a[i].substr(whole.size())) << i;
  }
  EXPECT_EQ(InUse(server.url(), parts + "/app"), 3);
}

// On etcd a batch is one Txn, which carries 128 operations at most: the
// server announces the capacity, the CLI cuts its batches to it (before,
// with batches of 1,000, each batch would be refused), and a batch over it
// sent by hand is refused whole, nothing written.
TEST(ImportE2ETest, OnEtcdEachBatchIsOneTxnAndTheCliCutsToIt) {
  const std::string endpoints = conformance::EnvOr("PAC_TEST_ETCD_ENDPOINTS");
  ASSERT_FALSE(endpoints.empty())
      << "PAC_TEST_ETCD_ENDPOINTS is not set: run through `make test`";
  const std::string config =
      WriteFile("import-etcd.yaml",
                "concurrency-driver: etcd\netcd-endpoints: " + endpoints +
                    "\netcd-prefix: /" + Unique("impetcd") + "/\n");
  ServerProcess server({"--config", config});
  ASSERT_FALSE(server.url().empty());
  server::RemoteApi api(server.url(), "");
  auto limits =
      api.Import(Context::Background(), Json{{"limits_of", Json::array()}});
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ((*limits)["import_capacity"]["runs"], 64);
  EXPECT_EQ((*limits)["import_capacity"]["per_repository"], 1);

  const std::string ns = Unique("imp");
  Json big = Json::array();
  Json queue = Json::array();
  for (int i = 0; i < 64; ++i) {
    queue.push_back({{"pipeline_run", ns + "/q-" + std::to_string(i)},
                     {"queue_time", "2026-01-01T10:00:00Z"}});
  }
  big.push_back({{"repository", ns + "/app"},
                 {"concurrency_limit", 1},
                 {"queue", queue}});
  auto refused = api.Import(Context::Background(), Json{{"batch", big}});
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
      << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("per batch"));
  EXPECT_TRUE(QueueOf(server.url(), ns + "/app").empty());
  EXPECT_EQ(InUse(server.url(), ns + "/app"), 0);

  const std::string prs = WriteFile("prs-etcd.json", Export(ns, 300).dump());
  const std::string repos = WriteFile("repos-etcd.yaml", Manifest(ns, 2));
  CliResult r = Cli(server.url(), {"import", "--pipelineruns", prs,
                                   "--repositories", repos, "-o", "json"});
  ASSERT_EQ(r.code, 0) << r.out.substr(0, 2000);
  const Json d = r.json();
  EXPECT_EQ(d["running"].size(), 2u);
  EXPECT_EQ(d["queued"].size(), 298u);
  const std::vector<std::string> q = QueueOf(server.url(), ns + "/app");
  ASSERT_EQ(q.size(), 298u);
  // Each event's two runs share a time and keep their order.
  for (int i = 0; i < 298; ++i) {
    EXPECT_EQ(q[i], ns + "/pr-" + std::to_string(i + 2)) << i;
  }
}

}  // namespace
}  // namespace pac::concurrency
