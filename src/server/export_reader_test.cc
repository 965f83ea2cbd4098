// The streaming reader of kubectl exports (issue 23): JSON and YAML, a List
// or objects one by one, whole objects trimmed to what the import reads,
// and wrong inputs named.
#include "src/server/export_reader.h"

#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pac::concurrency::server {
namespace {

using ::testing::HasSubstr;

// A PipelineRun as a cluster returns it: managedFields, a spec and a status
// with everything around the fields the import reads.
nlohmann::json FullRun(const std::string& name, const std::string& state) {
  nlohmann::json managed = nlohmann::json::array();
  for (int i = 0; i < 5; ++i) {
    managed.push_back(
        {{"manager", "controller"},
         {"fieldsV1", {{"f:status", {{"f:x", std::string(200, 'y')}}}}}});
  }
  return {
      {"apiVersion", "tekton.dev/v1"},
      {"kind", "PipelineRun"},
      {"metadata",
       {{"name", name},
        {"namespace", "ns"},
        {"creationTimestamp", "2026-01-01T10:00:00Z"},
        {"managedFields", managed},
        {"labels",
         {{kStateKey, state},
          {kRepositoryKey, "app"},
          {kManagedByKey, kManagedByPaC},
          {"tekton.dev/pipeline", "p"}}},
        {"annotations",
         {{kStateKey, state},
          {kRepositoryKey, "app"},
          {kExecutionOrderKey, "ns/" + name},
          {"kubectl.kubernetes.io/last-applied-configuration",
           std::string(2000, 'z')}}}}},
      {"spec",
       {{"status", state == "queued" ? kPendingStatus : ""},
        {"pipelineRef", {{"name", "p"}}},
        {"params",
         nlohmann::json::array({{{"name", "status"}, {"value", "x"}}})}}},
      {"status",
       {{"conditions", nlohmann::json::array(
                           {{{"type", "Ready"}, {"status", "False"}},
                            {{"type", "Succeeded"},
                             {"status", state == "done" ? "True" : "Unknown"},
                             {"reason", "Running"}}})},
        {"childReferences", nlohmann::json::array({{{"name", "t"}}})}}}};
}

absl::StatusOr<std::vector<ExportedRun>> Read(const std::string& text) {
  std::istringstream in(text);
  std::vector<ExportedRun> out;
  absl::Status s =
      ReadPipelineRunExport(in, "--pipelineruns", [&](ExportedRun r) {
        out.push_back(std::move(r));
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  return out;
}

// Each form gives the same runs, with the same fields as the whole-object
// reader of the server (ReadPipelineRun).
TEST(ExportReaderTest, JsonAndYamlListsAndDocumentsReadTheSame) {
  nlohmann::json list = {
      {"apiVersion", "v1"},
      {"items",
       nlohmann::json::array({FullRun("a", "queued"), FullRun("b", "started"),
                              FullRun("c", "done")})},
      {"kind", "List"},
      {"metadata", {{"resourceVersion", ""}}}};
  std::vector<nlohmann::json> want;
  for (const auto& item : list["items"]) {
    auto r = ReadPipelineRun(item, "x");
    ASSERT_TRUE(r.ok());
    want.push_back(TrimmedJson(*r));
  }
  std::string docs;
  for (const auto& item : list["items"]) docs += "---\n" + item.dump() + "\n";
  // YAML block style, as kubectl -o yaml prints (JSON is YAML: flow style
  // for the nested parts is still YAML read by events).
  std::string yaml_list = "apiVersion: v1\nkind: List\nitems:\n";
  for (const auto& item : list["items"]) yaml_list += "- " + item.dump() + "\n";
  for (const std::string& text :
       {list.dump(), list.dump(2), docs, yaml_list, list["items"][1].dump()}) {
    auto runs = Read(text);
    ASSERT_TRUE(runs.ok()) << runs.status() << "\n" << text.substr(0, 80);
    if (runs->size() == 1) {
      EXPECT_EQ(TrimmedJson((*runs)[0]), want[1]);
      continue;
    }
    ASSERT_EQ(runs->size(), 3u) << text.substr(0, 80);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(TrimmedJson((*runs)[i]), want[i]) << text.substr(0, 80);
    }
  }
  EXPECT_EQ((*Read(list.dump()))[2].succeeded, "True");
}

TEST(ExportReaderTest, AnEmptyListIsNoRunsAndAnEmptyFileAnError) {
  auto none = Read(R"({"kind":"List","items":[]})");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_THAT(std::string(Read("  \n").status().message()),
              HasSubstr("empty input"));
}

// Issue 23: a Repository List given as PipelineRuns was reported run by run
// as "no repository annotation"; a run without a namespace, or a file that
// is neither JSON nor YAML, are one clear error each.
TEST(ExportReaderTest, WrongInputsAreNamed) {
  struct Case {
    std::string text, want;
  } cases[] = {
      {R"({"kind":"List","items":[{"kind":"Repository","metadata":{"name":"a","namespace":"n"}}]})",
       "items[0]: wrong kind Repository (expected PipelineRun; Repository "
       "manifests go to --repositories)"},
      {"kind: Repository\nmetadata: {name: a, namespace: n}\n",
       "wrong kind Repository"},
      {R"({"kind":"PipelineRun","metadata":{"name":"lost"}})",
       "(lost): no metadata.namespace (export with kubectl get pipelineruns "
       "-A)"},
      {R"({"kind":"List","items":[{"kind":"PipelineRun","metadata":{"namespace":"n"}}]})",
       "items[0]: no metadata.name"},
      {"{\"kind\": \"List\", \"items\": [", "not valid JSON at byte"},
      {"\x89PNG\r\n\x1a\n", "neither a JSON nor a YAML List or object"},
      {"just some words", "neither a JSON nor a YAML List or object"},
      {"a: [unclosed\n", "neither JSON nor valid YAML (line 2"},
      {",\"a\":1", "YAML"},
  };
  for (const Case& c : cases) {
    auto r = Read(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.want)) << c.text;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("--pipelineruns"));
  }
}

// Memory stays flat: a reader that kept whole objects would hold every
// run's managedFields; this one hands each run on as it ends, and what it
// hands on is the trimmed fields only.
TEST(ExportReaderTest, HandsEachRunOnAsItEnds) {
  std::string text = R"({"kind":"List","items":[)";
  const nlohmann::json one = FullRun("r", "queued");
  for (int i = 0; i < 200; ++i) {
    nlohmann::json item = one;
    item["metadata"]["name"] = "r" + std::to_string(i);
    text += (i == 0 ? "" : ",") + item.dump();
  }
  text += "]}";
  std::istringstream in(text);
  size_t seen = 0, max_bytes = 0;
  absl::Status s = ReadPipelineRunExport(in, "x", [&](ExportedRun r) {
    // When run i arrives the reader has consumed little beyond it.
    const auto pos = static_cast<size_t>(in.tellg());
    EXPECT_LT(pos, (seen + 2) * one.dump().size() + 64) << seen;
    max_bytes = std::max(max_bytes, TrimmedJson(r).dump().size());
    ++seen;
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(seen, 200u);
  EXPECT_LT(max_bytes, one.dump().size() / 5);
}

}  // namespace
}  // namespace pac::concurrency::server
