// Service (the Api on a driver) and the manifest/import readers, on the
// memory driver with a manual clock.
#include "src/server/service.h"

#include <memory>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/manifests.h"
#include "tests/conformance/forwarding_driver.h"

namespace pac::concurrency::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = NewMemoryDriver(MemoryConfig{absl::Minutes(5)},
                             DriverOptions{&clock_, nullptr, true});
    ASSERT_TRUE(d.ok()) << d.status();
    driver_ = *std::move(d);
    service_ = std::make_unique<Service>(driver_.get(), &clock_, &metrics_);
  }
  void TearDown() override {
    service_.reset();
    (void)driver_->Close();
  }
  Json Submit(const std::string& repo, const Json& body) {
    auto r = service_->Submit(ctx_, repo, body);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : Json();
  }
  std::vector<std::string> Queued(const std::string& repo) {
    std::vector<std::string> out;
    auto s = service_->Status(ctx_, repo);
    EXPECT_TRUE(s.ok()) << s.status();
    for (const Json& q : (*s)["queued"]) out.push_back(q["pipeline_run"]);
    return out;
  }
  std::vector<std::string> Running(const std::string& repo) {
    std::vector<std::string> out;
    auto s = service_->Status(ctx_, repo);
    for (const Json& q : (*s)["running"]) out.push_back(q["pipeline_run"]);
    std::sort(out.begin(), out.end());
    return out;
  }

  ManualClock clock_{absl::FromUnixSeconds(1800000000)};
  std::unique_ptr<Driver> driver_;
  Metrics metrics_;
  std::unique_ptr<Service> service_;
  Context ctx_ = Context::Background();
};

TEST_F(ServiceTest, SubmitWithoutAnyLimitIsRefusedNotGuessed) {
  auto r = service_->Submit(ctx_, "ns/repo", Json{{"pipeline_run", "ns/a"}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("no recorded concurrency limit"));
  // Nothing was written.
  EXPECT_FALSE(driver_->GetRepositoryLimit(ctx_, "ns/repo")->has_value());
}

// Another server changes the limit right after this one read it (a driver
// that sets it to 5 once it has answered GetRepositoryLimit). The submit
// must admit under 5 and leave 5. Before: it wrote back the 1 it had read.
class LimitChangedAfterRead final : public conformance::ForwardingDriver {
 public:
  using ForwardingDriver::ForwardingDriver;
  absl::StatusOr<std::optional<int32_t>> GetRepositoryLimit(
      const Context& ctx, std::string_view repo) override {
    auto read = store().GetRepositoryLimit(ctx, repo);
    auto key = Repository::FromKey(repo, 5);
    EXPECT_TRUE(key.ok());
    EXPECT_TRUE(store().SetRepositoryLimit(ctx, *key).ok());
    return read;
  }
};

TEST(ServiceRaceTest, ASubmitDoesNotUndoALimitChangedAfterItsRead) {
  ManualClock clock;
  auto d = NewMemoryDriver(MemoryConfig{absl::Minutes(5)},
                           DriverOptions{&clock, nullptr, true});
  ASSERT_TRUE(d.ok());
  std::shared_ptr<Driver> store = *std::move(d);
  Context ctx;
  ASSERT_TRUE(store->SetRepositoryLimit(ctx, Repository{"ns", "repo", 1}).ok());
  ASSERT_TRUE(
      store->AcquireSlot(ctx, Repository{"ns", "repo", 1}, "ns/a")->acquired);
  LimitChangedAfterRead racing(store);
  Metrics metrics;
  Service service(&racing, &clock, &metrics);
  auto b = service.Submit(ctx, "ns/repo", Json{{"pipeline_run", "ns/b"}});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE((*b)["acquired"].get<bool>());
  EXPECT_EQ(*store->GetRepositoryLimit(ctx, "ns/repo"), 5);
  (void)store->Close();
}

TEST_F(ServiceTest, SubmitUsesTheRecordedLimitAndQueuesInOrder) {
  ASSERT_TRUE(
      service_->SetLimit(ctx_, "ns/repo", Json{{"concurrency_limit", 1}}).ok());
  Json a = Submit("ns/repo", Json{{"pipeline_run", "ns/a"}});
  EXPECT_TRUE(a["acquired"].get<bool>());
  EXPECT_FALSE(a["lease"]["lease_id"].get<std::string>().empty());
  Json b = Submit("ns/repo", Json{{"pipeline_run", "ns/b"}});
  EXPECT_FALSE(b["acquired"].get<bool>());
  EXPECT_EQ(b["position"], 1);
  Json c = Submit("ns/repo", Json{{"pipeline_run", "ns/c"}});
  EXPECT_EQ(c["position"], 2);
  // An older run (by creation time) goes ahead of both.
  Json old = Submit("ns/repo", Json{{"pipeline_run", "ns/old"},
                                    {"creation_time", "2020-01-01T00:00:00Z"}});
  EXPECT_EQ(old["position"], 1);
  EXPECT_THAT(Queued("ns/repo"), ElementsAre("ns/old", "ns/b", "ns/c"));
  // What holds each queued run: the repository's limit, and the runs
  // ahead (on the submit's answer, and in the status with the numbers).
  EXPECT_EQ(c["waiting_for"],
            (Json{{"reason", "repository_limit"}, {"ahead", 1}}));
  EXPECT_FALSE(a.contains("waiting_for"));
  auto st = service_->Status(ctx_, "ns/repo");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["queued"][2]["waiting_for"],
            (Json{{"reason", "repository_limit"},
                  {"ahead", 2},
                  {"limit", 1},
                  {"in_use", 1}}));
  EXPECT_EQ((*st)["queued"][0]["waiting_for"]["ahead"], 0);
  // Submitting again keeps the place.
  EXPECT_EQ(Submit("ns/repo", Json{{"pipeline_run", "ns/b"}})["position"], 2);
  auto rel = service_->Release(ctx_, "ns/repo", "ns/a", "");
  ASSERT_TRUE(rel.ok());
  EXPECT_TRUE((*rel)["released"].get<bool>());
  ASSERT_EQ((*rel)["admitted"].size(), 1u);
  EXPECT_EQ((*rel)["admitted"][0]["pipeline_run"], "ns/old");
  // A raise admits the queue at once.
  auto raised =
      service_->SetLimit(ctx_, "ns/repo", Json{{"concurrency_limit", 3}});
  ASSERT_TRUE(raised.ok());
  EXPECT_EQ((*raised)["admitted"].size(), 2u);
  EXPECT_THAT(Running("ns/repo"), ElementsAre("ns/b", "ns/c", "ns/old"));
}

TEST_F(ServiceTest, BadRequestsAreInvalidArgumentAndWriteNothing) {
  struct Case {
    Json body;
    std::string want;
  } cases[] = {
      {Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", -1}},
       "must not be negative"},
      {Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", "2"}},
       "must be an integer"},
      {Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}, {"extra", 1}},
       "unknown field \"extra\""},
      {Json{{"pipeline_run", "NS/a"}, {"concurrency_limit", 1}},
       "pipeline_run"},
      {Json{{"concurrency_limit", 1}}, "pipeline_run: required"},
      {Json{{"pipeline_run", "ns/a"}, {"creation_time", "yesterday"}},
       "creation_time"},
      {Json{{"pipeline_run", "ns/a"}, {"enqueue", "yes"}}, "enqueue"},
      {Json{{"pipeline_run", "ns/a"}, {"state", "done"}}, "state"},
      {Json::array(), "must be a JSON object"},
  };
  for (const Case& c : cases) {
    auto r = service_->Submit(ctx_, "ns/repo", c.body);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << c.body.dump();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.want))
        << c.body.dump();
  }
  EXPECT_EQ(
      service_
          ->Submit(ctx_, "bad key",
                   Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(driver_->GetRepositoryLimit(ctx_, "ns/repo")->has_value());
  EXPECT_EQ(service_->SetLimit(ctx_, "ns/repo", Json::object()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ServiceTest, RenewOfAReleasedLeaseIsLeaseLost) {
  Json a = Submit("ns/repo",
                  Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  const std::string id = a["lease"]["lease_id"];
  clock_.Advance(absl::Minutes(4));
  auto renewed = service_->Renew(ctx_, id);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  ASSERT_TRUE(service_->Release(ctx_, "ns/repo", "ns/a", id).ok());
  EXPECT_TRUE(IsLeaseLost(service_->Renew(ctx_, id).status()));
}

TEST_F(ServiceTest, MetricsCountAndGaugeWhatHappened) {
  Submit("ns/repo", Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  Submit("ns/repo", Json{{"pipeline_run", "ns/b"}});
  clock_.Advance(absl::Seconds(7));
  ASSERT_TRUE(service_->Release(ctx_, "ns/repo", "ns/a", "").ok());
  // ns/b re-submits after its promotion (as `run` does): not a new grant.
  EXPECT_TRUE(Submit("ns/repo", Json{{"pipeline_run", "ns/b"}})["acquired"]);
  std::string text = metrics_.Render(service_->Gauges(ctx_));
  EXPECT_THAT(text, HasSubstr("pac_admissions_total{how=\"immediate\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pac_admissions_total{how=\"promoted\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pac_slots_in_use{repository=\"ns/repo\"} 1"));
  EXPECT_THAT(text,
              HasSubstr("pac_concurrency_limit{repository=\"ns/repo\"} 1"));
  EXPECT_THAT(text, HasSubstr("pac_queue_depth{repository=\"ns/repo\"} 0"));
  EXPECT_THAT(text, HasSubstr("pac_releases_total 1"));
  // ns/b waited 7 s: counted in the (5, 10] bucket.
  EXPECT_THAT(text, HasSubstr("pac_queue_wait_seconds_bucket{outcome="
                              "\"admitted\",le=\"5\"} 0"));
  EXPECT_THAT(text, HasSubstr("pac_queue_wait_seconds_bucket{outcome="
                              "\"admitted\",le=\"10\"} 1"));
  EXPECT_THAT(text, HasSubstr("pac_queue_wait_seconds_sum{outcome="
                              "\"admitted\"} 7"));
}

// Runs that leave the queue without a slot are counted by reason, with
// their wait, once each, by the server they were queued through.
TEST_F(ServiceTest, MetricsCountRunsRemovedFromTheQueueByReason) {
  Submit("ns/repo", Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  Submit("ns/repo", Json{{"pipeline_run", "ns/b"}, {"max_queue_seconds", 10}});
  Submit("ns/repo", Json{{"pipeline_run", "ns/c"},
                         {"group", "pr-1"},
                         {"creation_time", "2026-01-01T00:00:00Z"}});
  clock_.Advance(absl::Seconds(12));
  // b timed out; a newer run of c's group supersedes it.
  Submit("ns/repo", Json{{"pipeline_run", "ns/d"},
                         {"group", "pr-1"},
                         {"creation_time", "2026-01-01T00:01:00Z"}});
  for (const char* run : {"ns/b", "ns/c", "ns/b"}) {
    auto again = service_->Submit(ctx_, "ns/repo", Json{{"pipeline_run", run}});
    EXPECT_TRUE(IsRunRemoved(again.status())) << run << again.status();
  }
  ASSERT_TRUE(service_->ClearQueue(ctx_, "ns/repo").ok());  // d
  std::string text = metrics_.Render(service_->Gauges(ctx_));
  EXPECT_THAT(text,
              HasSubstr("pac_runs_removed_total{reason=\"timed-out\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("pac_runs_removed_total{reason=\"superseded\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("pac_runs_removed_total{reason=\"cleared\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pac_queue_wait_seconds_sum{outcome="
                              "\"timed-out\"} 12"));
  EXPECT_THAT(text, HasSubstr("pac_queue_wait_seconds_count{outcome="
                              "\"superseded\"} 1"));
}

TEST_F(ServiceTest, WatchDeliversEventsAndStopsWhenTheReaderSaysSo) {
  Submit("ns/repo", Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  std::vector<std::string> types;
  bool ready = false;
  auto ctx = Context::WithTimeout(Context::Background(), absl::Seconds(10));
  absl::Status s = service_->Watch(
      ctx, "ns/repo",
      [&](const Json& ev) {
        if (ev.is_null()) return true;
        types.push_back(ev["type"]);
        return ev["type"] != "released";
      },
      [&] {
        ready = true;
        // Release from "another client" once the watch is established.
        EXPECT_TRUE(service_->Release(ctx_, "ns/repo", "ns/a", "").ok());
        return true;
      });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(ready);
  EXPECT_THAT(types, ElementsAre("released"));
}

TEST_F(ServiceTest, WatchEndsWithTheContext) {
  auto ctx =
      Context::WithTimeout(Context::Background(), absl::Milliseconds(50));
  absl::Status s = service_->Watch(
      ctx, "ns/repo", [](const Json&) { return true; }, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
}

// --- Manifests and import. ---

TEST(ManifestsTest, ReadsRepositoriesFromSeveralDocumentsAndLists) {
  auto repos = ParseRepositoryManifests(R"(
apiVersion: pipelinesascode.tekton.dev/v1alpha1
kind: Repository
metadata: {name: app, namespace: team-a}
spec: {url: "https://example.com/app", concurrency_limit: 2}
---
apiVersion: v1
kind: List
items:
- kind: Repository
  metadata: {name: lib, namespace: team-b}
  spec: {url: "https://example.com/lib"}
)");
  ASSERT_TRUE(repos.ok()) << repos.status();
  ASSERT_EQ(repos->size(), 2u);
  EXPECT_EQ((*repos)[0].Key(), "team-a/app");
  EXPECT_EQ((*repos)[0].concurrency_limit, 2);
  EXPECT_EQ((*repos)[1].Key(), "team-b/lib");
  // Unset (unlimited, unless a global Repository lends its limit).
  EXPECT_EQ((*repos)[1].concurrency_limit, std::nullopt);
  EXPECT_EQ(EffectiveLimit((*repos)[1]), 0);
}

TEST(ManifestsTest, BadManifestsNameTheProblem) {
  struct Case {
    const char* yaml;
    const char* want;
  } cases[] = {
      {"kind: Repository\nmetadata: {name: app}\n", "metadata.namespace"},
      {"kind: Repository\nmetadata: {name: app, namespace: a}\nspec: "
       "{concurrency_limit: -3}\n",
       "spec.concurrency_limit"},
      {"kind: Repository\nmetadata: {name: app, namespace: a}\nspec: "
       "{concurrency_limit: two}\n",
       "spec.concurrency_limit"},
      {"kind: ConfigMap\nmetadata: {name: app, namespace: a}\n",
       "kind must be Repository"},
      {"kind: Repository\nmetadata: {name: App_1, namespace: a}\n", "App_1"},
      {"key: [unclosed\n", "not valid YAML"},
      {"", "no Repository"},
  };
  for (const Case& c : cases) {
    auto r = ParseRepositoryManifests(c.yaml);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.want)) << c.yaml;
  }
}

Json PipelineRun(const std::string& ns, const std::string& name,
                 const std::string& repo, const std::string& state,
                 const std::string& created, const std::string& order = "") {
  // As Pipelines-as-Code writes them: labels and annotations; a queued
  // run is pending and names its event's runs (itself alone by default).
  Json ann = Json::object(), labels = Json::object();
  if (!repo.empty()) ann["pipelinesascode.tekton.dev/repository"] = repo;
  if (!state.empty()) ann["pipelinesascode.tekton.dev/state"] = state;
  labels = ann;
  ann["pipelinesascode.tekton.dev/execution-order"] =
      order.empty() ? ns + "/" + name : order;
  Json pr = {{"apiVersion", "tekton.dev/v1"},
             {"kind", "PipelineRun"},
             {"metadata",
              {{"name", name},
               {"namespace", ns},
               {"creationTimestamp", created},
               {"labels", labels},
               {"annotations", ann}}}};
  if (state == "queued") pr["spec"] = {{"status", "PipelineRunPending"}};
  return pr;
}

// Found by fuzz/manifest_fuzz: yaml-cpp's LoadAll looped forever (10 GB in
// a minute) on a stray ',' at the top level. Such input is refused at
// once; documents split at "---" keep their line numbers in errors.
TEST(ManifestsTest, AStrayFlowEntryIsRefusedNotLoopedOn) {
  for (const char* text :
       {",\"a\":1", ", a",
        ",\"kind\":\"List\",\"items\":[{\"kind\":\"R\"}]}"}) {
    const absl::Time start = absl::Now();
    auto r = ParseRepositoryManifests(text);
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << text;
    EXPECT_FALSE(r.ok()) << text;
  }
  auto two = ParseRepositoryManifests(
      "kind: Repository\nmetadata: {name: a, namespace: ns}\n---\n"
      "--- # nothing here\n...\n---\nkind: Repository\n"
      "metadata: {name: b, namespace: ns}\nspec: {concurrency_limit: 2}\n");
  ASSERT_TRUE(two.ok()) << two.status();
  ASSERT_EQ(two->size(), 2u);
  EXPECT_EQ((*two)[1].concurrency_limit, 2);
  auto bad = ParseRepositoryManifests(
      "kind: Repository\nmetadata: {name: a, namespace: ns}\n---\n"
      "kind: Repository\nmetadata: [unclosed\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("line 6"));
}

TEST_F(ServiceTest, ImportRebuildsRunningSetsAndQueuesInOrder) {
  Json list{{"apiVersion", "v1"}, {"kind", "List"}, {"items", Json::array()}};
  auto& items = list["items"];
  // Three running (above the limit of 2: adopted, nobody evicted).
  items.push_back(
      PipelineRun("ns", "r1", "app", "started", "2026-01-01T10:00:00Z"));
  items.push_back(
      PipelineRun("ns", "r2", "app", "started", "2026-01-01T10:00:01Z"));
  items.push_back(
      PipelineRun("ns", "r3", "app", "started", "2026-01-01T10:00:02Z"));
  // Queued, listed out of order; q-b and q-a share a timestamp and are
  // ordered by execution-order.
  items.push_back(
      PipelineRun("ns", "q-late", "app", "queued", "2026-01-01T11:00:00Z"));
  items.push_back(PipelineRun("ns", "q-a", "app", "queued",
                              "2026-01-01T10:30:00Z", "ns/q-b,ns/q-a"));
  items.push_back(PipelineRun("ns", "q-b", "app", "queued",
                              "2026-01-01T10:30:00Z", "ns/q-b,ns/q-a"));
  items.push_back(
      PipelineRun("ns", "done", "app", "completed", "2026-01-01T09:00:00Z"));
  items.push_back(PipelineRun("ns", "plain", "", "", "2026-01-01T09:00:00Z"));
  items.push_back(
      PipelineRun("other", "x", "nolimit", "queued", "2026-01-01T09:00:00Z"));
  Json body{{"pipelineruns", list},
            {"repositories",
             "kind: Repository\nmetadata: {name: app, namespace: ns}\n"
             "spec: {concurrency_limit: 2}\n"}};
  auto r = service_->Import(ctx_, body);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["running"].size(), 3u);
  EXPECT_EQ((*r)["queued"].size(), 3u);
  EXPECT_EQ((*r)["skipped"].size(), 3u);
  EXPECT_THAT(Running("ns/app"), ElementsAre("ns/r1", "ns/r2", "ns/r3"));
  EXPECT_THAT(Queued("ns/app"), ElementsAre("ns/q-b", "ns/q-a", "ns/q-late"));
  // Importing again changes nothing.
  ASSERT_TRUE(service_->Import(ctx_, body).ok());
  EXPECT_THAT(Queued("ns/app"), ElementsAre("ns/q-b", "ns/q-a", "ns/q-late"));
  // A batch as the CLI sends it, twice: nothing changes either.
  RepositoryPlan plan;
  plan.repository = "ns/app";
  plan.limit = 2;
  plan.adopt = {"ns/r1"};
  plan.queue = {{"ns/q-a", absl::FromUnixSeconds(1)}};
  Json batch = {{"batch", Json::array({RepositoryPlanToJson(plan, false)})}};
  for (int i = 0; i < 2; ++i) {
    auto again = service_->Import(ctx_, batch);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ((*again)["queued"][0]["position"], 2);
  }
  EXPECT_THAT(Queued("ns/app"), ElementsAre("ns/q-b", "ns/q-a", "ns/q-late"));
  EXPECT_THAT(Running("ns/app"), ElementsAre("ns/r1", "ns/r2", "ns/r3"));
  // Three hold slots under a limit of 2: the first release admits nobody,
  // the second admits the head of the queue.
  EXPECT_TRUE(
      (*service_->Release(ctx_, "ns/app", "ns/r1", ""))["admitted"].empty());
  auto second = service_->Release(ctx_, "ns/app", "ns/r2", "");
  ASSERT_EQ((*second)["admitted"].size(), 1u);
  EXPECT_EQ((*second)["admitted"][0]["pipeline_run"], "ns/q-b");
}

// A re-import writes nothing and answers as the first did: a waiting run
// holding a slot is reported admitted (its controller must start it)
// whichever import granted it, and a started run is reported running,
// never admitted. Before, the second answer moved ns/q1 to
// "already_admitted", so an interrupted import run again reported less
// than one run in one go.
TEST_F(ServiceTest, AReimportAnswersAsTheFirstAndWritesNothing) {
  Json list{
      {"kind", "List"},
      {"items",
       Json::array(
           {PipelineRun("ns", "s1", "app", "started", "2026-01-01T09:00:00Z"),
            PipelineRun("ns", "q1", "app", "queued", "2026-01-01T10:00:00Z"),
            PipelineRun("ns", "q2", "app", "queued",
                        "2026-01-01T10:00:01Z")})}};
  Json body{{"pipelineruns", list},
            {"repositories",
             "kind: Repository\nmetadata: {name: app, namespace: ns}\n"
             "spec: {concurrency_limit: 2}\n"}};
  auto first = service_->Import(ctx_, body);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)["running"], Json::array({"ns/s1"}));
  EXPECT_EQ((*first)["admitted"], Json::array({"ns/q1"}));
  EXPECT_EQ((*first)["queued"].size(), 1u);
  auto before = driver_->GetRepositorySnapshot(ctx_, "ns/app");
  ASSERT_TRUE(before.ok());
  auto second = service_->Import(ctx_, body);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*second, *first);
  auto after = driver_->GetRepositorySnapshot(ctx_, "ns/app");
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->running.size(), before->running.size());
  for (size_t i = 0; i < after->running.size(); ++i) {
    EXPECT_EQ(after->running[i].lease_id, before->running[i].lease_id);
  }
  EXPECT_EQ(after->queued.size(), 1u);
}

// An import cut after its first batch and run again whole reports what
// one run in one go reports (the batches as the CLI sends them).
TEST_F(ServiceTest, AnInterruptedImportRunAgainReportsAsOneRun) {
  auto plan = [](const std::string& repo, int limit,
                 std::vector<std::string> adopt,
                 std::vector<std::string> queue) {
    Json q = Json::array();
    int second = 0;
    for (const std::string& r : queue) {
      q.push_back({{"pipeline_run", r},
                   {"queue_time",
                    absl::StrFormat("2026-01-01T10:00:%02dZ", second++)}});
    }
    return Json{{"repository", repo},
                {"concurrency_limit", limit},
                {"set_limit", true},
                {"adopt", std::move(adopt)},
                {"queue", std::move(q)}};
  };
  Json a = plan("ns/a", 1, {"ns/a1"}, {"ns/a2", "ns/a3"});
  Json b = plan("ns/b", 2, {}, {"ns/b1", "ns/b2", "ns/b3"});
  Json c = plan("ns/c", 1, {}, {"ns/c1"});
  auto merged = [](std::vector<Json> answers) {
    Json out = Json::object();
    for (const Json& r : answers) {
      for (const auto& [k, v] : r.items()) {
        for (const Json& e : v) out[k].push_back(e);
      }
    }
    return out;
  };
  // Cut: only the first batch (a, b) went through; then the whole again.
  auto cut = service_->Import(ctx_, Json{{"batch", {a, b}}});
  ASSERT_TRUE(cut.ok()) << cut.status();
  auto r1 = service_->Import(ctx_, Json{{"batch", {a, b}}});
  auto r2 = service_->Import(ctx_, Json{{"batch", {c}}});
  ASSERT_TRUE(r1.ok() && r2.ok());
  const Json rerun = merged({*r1, *r2});
  // One go, on a fresh backend.
  auto d = NewMemoryDriver(MemoryConfig{absl::Minutes(5)},
                           DriverOptions{&clock_, nullptr, true});
  ASSERT_TRUE(d.ok());
  Service fresh(d->get(), &clock_, nullptr);
  auto g1 = fresh.Import(ctx_, Json{{"batch", {a, b}}});
  auto g2 = fresh.Import(ctx_, Json{{"batch", {c}}});
  ASSERT_TRUE(g1.ok() && g2.ok());
  EXPECT_EQ(rerun, merged({*g1, *g2}));
  EXPECT_EQ(rerun["admitted"], Json::array({"ns/b1", "ns/b2", "ns/c1"}));
  (void)(*d)->Close();
}

// Pipelines-as-Code's global Repository lends its concurrency_limit to a
// Repository that sets none (RepositorySpec.Merge); an explicit 0 stays
// 0, and "none" turns the merge off. Before, ns/app kept no queue and its
// queued runs were skipped ("no concurrency limit").
// Planned by the server: "group_label" and "priority_label" name the
// labels a queued run's group and priority come from.
TEST_F(ServiceTest, ImportReadsGroupAndPriorityFromTheNamedLabels) {
  Json list{{"apiVersion", "v1"}, {"kind", "List"}, {"items", Json::array()}};
  auto& items = list["items"];
  items.push_back(
      PipelineRun("ns", "r1", "app", "started", "2026-01-01T10:00:00Z"));
  items.push_back(PipelineRun("ns", "q-old", "app", "queued",
                              "2026-01-01T10:01:00Z", "ns/q-old"));
  items.push_back(PipelineRun("ns", "q-new", "app", "queued",
                              "2026-01-01T10:02:00Z", "ns/q-new"));
  items[2]["metadata"]["labels"]["x/prio"] = "4";
  items[2]["metadata"]["labels"]["x/pr"] = "pr-9";
  RepositoryPolicy p;
  p.mode = QueueMode::kPriority;
  ASSERT_TRUE(driver_->SetRepositoryPolicy(ctx_, "ns/app", p).ok());
  Json body{{"pipelineruns", list},
            {"group_label", "x/pr"},
            {"priority_label", "x/prio"},
            {"repositories",
             "kind: Repository\nmetadata: {name: app, namespace: ns}\n"
             "spec: {concurrency_limit: 1}\n"}};
  auto r = service_->Import(ctx_, body);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Queued("ns/app"), ElementsAre("ns/q-new", "ns/q-old"));
  auto snap = driver_->GetRepositorySnapshot(ctx_, "ns/app");
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->queued[0].priority, 4);
  // Its group: a newer run of pr-9 supersedes it.
  auto newer =
      service_->Submit(ctx_, "ns/app",
                       Json{{"pipeline_run", "ns/q-newer"},
                            {"group", "pr-9"},
                            {"creation_time", "2026-01-01T11:00:00Z"}});
  ASSERT_TRUE(newer.ok()) << newer.status();
  EXPECT_THAT(Queued("ns/app"), ElementsAre("ns/q-old", "ns/q-newer"));
  auto bad =
      service_->Import(ctx_, Json{{"pipelineruns", list}, {"group_label", 7}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServiceTest, ImportMergesTheGlobalRepositorysLimit) {
  const std::string manifests =
      "kind: Repository\n"
      "metadata: {name: pipelines-as-code, namespace: pipelines-as-code}\n"
      "spec: {concurrency_limit: 1}\n"
      "---\n"
      "kind: Repository\nmetadata: {name: app, namespace: ns}\n"
      "---\n"
      "kind: Repository\nmetadata: {name: zero, namespace: ns}\n"
      "spec: {concurrency_limit: 0}\n";
  Json list{
      {"kind", "List"},
      {"items",
       Json::array(
           {PipelineRun("ns", "a1", "app", "queued", "2026-01-01T10:00:00Z"),
            PipelineRun("ns", "a2", "app", "queued", "2026-01-01T10:00:01Z"),
            PipelineRun("ns", "z1", "zero", "queued",
                        "2026-01-01T10:00:02Z")})}};
  auto off = service_->Import(ctx_, Json{{"pipelineruns", list},
                                         {"repositories", manifests},
                                         {"global_repository", "none"}});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ((*off)["admitted"], Json::array());
  EXPECT_EQ((*off)["skipped"].size(), 3u);

  auto got = service_->Import(
      ctx_, Json{{"pipelineruns", list}, {"repositories", manifests}});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)["admitted"], Json::array({"ns/a1"}));
  ASSERT_EQ((*got)["queued"].size(), 1u);
  EXPECT_EQ((*got)["queued"][0]["pipeline_run"], "ns/a2");
  ASSERT_EQ((*got)["skipped"].size(), 1u);
  EXPECT_EQ((*got)["skipped"][0]["pipeline_run"], "ns/z1");
  EXPECT_THAT((*got)["notes"][0].get<std::string>(),
              ::testing::HasSubstr("pipelines-as-code/pipelines-as-code"));
  EXPECT_EQ(**driver_->GetRepositoryLimit(ctx_, "ns/app"), 1);

  auto missing =
      service_->Import(ctx_, Json{{"pipelineruns", list},
                                  {"repositories", manifests},
                                  {"global_repository", "other/global"}});
  ASSERT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), ::testing::HasSubstr("other/global"));
}

// A Repository List given as PipelineRuns is one clear error, not a
// "no repository annotation" per item; nothing is written.
TEST_F(ServiceTest, ImportRefusesAListOfTheWrongKind) {
  Json repos{
      {"kind", "List"},
      {"items",
       Json::array({{{"kind", "Repository"},
                     {"metadata", {{"name", "app"}, {"namespace", "ns"}}},
                     {"spec", {{"concurrency_limit", 1}}}}})}};
  auto r = service_->Import(ctx_, Json{{"pipelineruns", repos}});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("wrong kind Repository"));
}

TEST_F(ServiceTest, ImportRejectsMalformedInput) {
  EXPECT_EQ(service_->Import(ctx_, Json{{"pipelineruns", Json{{"items", 3}}}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_->Import(ctx_, Json{{"repositories", 7}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_->Import(ctx_, Json{{"bogus", 1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A batch with one bad entry writes nothing.
  Json batch = {
      {"batch",
       Json::array(
           {{{"repository", "ns/ok"},
             {"concurrency_limit", 1},
             {"set_limit", true},
             {"adopt", Json::array({"ns/r"})}},
            {{"repository", "ns/bad"},
             {"concurrency_limit", 1},
             {"queue", Json::array({{{"pipeline_run", "ns/x"},
                                     {"queue_time", "yesterday"}}})}}})}};
  EXPECT_EQ(service_->Import(ctx_, batch).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Running("ns/ok"), ::testing::IsEmpty());
}

}  // namespace
}  // namespace pac::concurrency::server
