// The import's plan against Pipelines-as-Code's rules: one test per row of
// docs/migration.md's table, and a comparison with a transcription of
// Pipelines-as-Code's InitQueues on random exports.
#include "src/server/import_plan.h"

#include <algorithm>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/server/export_reader.h"

namespace pac::concurrency::server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

ExportedRun PR(const std::string& name, const std::string& state,
               const std::string& created, const std::string& order = "",
               const std::string& repo = "app", const std::string& ns = "ns") {
  ExportedRun r;
  r.ns = ns;
  r.name = name;
  r.created = created;
  r.state_label = state;
  r.state_annotation = state;
  r.repository_label = repo;
  r.repository_annotation = repo;
  r.managed_by = kManagedByPaC;
  r.execution_order = order;
  r.spec_status = state == "queued" ? kPendingStatus : "";
  return r;
}

std::vector<std::string> QueueOf(const ImportPlan& p, const std::string& repo) {
  std::vector<std::string> out;
  for (const RepositoryPlan& r : p.repositories) {
    if (r.repository != repo) continue;
    for (const QueuedRun& q : r.queue) out.push_back(q.run);
  }
  return out;
}

std::string ReasonOf(const ImportPlan& p, const std::string& run) {
  for (const SkippedRun& s : p.skipped) {
    if (s.run == run) return s.reason;
  }
  return "";
}

const std::map<std::string, int32_t> kLimits = {{"ns/app", 1}, {"ns/other", 2}};

// Row 1: one event's runs created in different seconds stay together, in
// the event's execution order (they were split by creationTimestamp).
TEST(ImportPlanTest, AnEventsRunsStayTogetherAcrossSeconds) {
  const std::string e1 = "ns/a1,ns/a2,ns/a3";
  std::vector<ExportedRun> runs = {
      PR("a1", "queued", "2026-01-01T10:00:00Z", e1),
      PR("b1", "queued", "2026-01-01T10:00:01Z", "ns/b1"),
      PR("a2", "queued", "2026-01-01T10:00:02Z", e1),
      PR("a3", "queued", "2026-01-01T10:00:03Z", e1),
  };
  ImportPlan p = PlanImport(runs, kLimits);
  EXPECT_THAT(QueueOf(p, "ns/app"),
              ElementsAre("ns/a1", "ns/a2", "ns/a3", "ns/b1"));
  // The queue times keep that order: the event's runs share a1's time.
  const auto& q = p.repositories[0].queue;
  EXPECT_EQ(q[1].queue_time, q[0].queue_time);
  EXPECT_LT(q[2].queue_time, q[3].queue_time);
}

// The labels named by ImportLabels give queued runs their group and
// priority, read the same way from JSON and from the stream; a value that
// does not fit is noted and left out.
TEST(ImportPlanTest, LabelsGiveQueuedRunsTheirGroupAndPriority) {
  const ImportLabels labels{"example.com/pr", "example.com/priority"};
  nlohmann::json list = {{"kind", "List"}, {"items", nlohmann::json::array()}};
  for (auto [name, pr, prio] :
       {std::tuple{"a", "pr-7", "3"}, std::tuple{"b", "", "-2"},
        std::tuple{"c", "bad group", "high"}}) {
    ExportedRun r =
        PR(name, "queued", "2026-01-01T10:00:00Z", std::string("ns/") + name);
    r.group_label_value = pr;
    r.priority_label_value = prio;
    list["items"].push_back(TrimmedJson(r, labels));
  }
  auto from_json = ReadPipelineRuns(list, labels);
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  std::vector<ExportedRun> from_stream;
  std::istringstream in(list.dump());
  ASSERT_TRUE(ReadPipelineRunExport(
                  in, "--pipelineruns",
                  [&](ExportedRun r) {
                    from_stream.push_back(std::move(r));
                    return absl::OkStatus();
                  },
                  labels)
                  .ok());
  for (const std::vector<ExportedRun>* runs : {&*from_json, &from_stream}) {
    ImportPlan p = PlanImport(*runs, {{"ns/app", 1}});
    ASSERT_EQ(p.repositories.size(), 1u);
    const auto& q = p.repositories[0].queue;
    ASSERT_EQ(q.size(), 3u);
    EXPECT_EQ(q[0].group, "pr-7");
    EXPECT_EQ(q[0].priority, 3);
    EXPECT_EQ(q[1].group, "");
    EXPECT_EQ(q[1].priority, -2);
    EXPECT_EQ(q[2].group, "");  // not printable ASCII without spaces
    EXPECT_EQ(q[2].priority, 0);
    std::string notes;
    for (const std::string& n : p.notes) notes += n + "\n";
    EXPECT_THAT(notes, HasSubstr("ns/c: group label ignored"));
    EXPECT_THAT(notes, HasSubstr("ns/c: priority label \"high\""));
    // And as a batch entry, as the CLI sends it.
    nlohmann::json entry = RepositoryPlanToJson(p.repositories[0], false);
    EXPECT_EQ(entry["queue"][0]["group"], "pr-7");
    EXPECT_EQ(entry["queue"][0]["priority"], 3);
    EXPECT_FALSE(entry["queue"][1].contains("group"));
  }
  // Without the labels named, nothing is read.
  auto plain = ReadPipelineRuns(list);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)[0].group_label_value, "");
}

// Row 2: two events in the same second are not interleaved by each run's
// place in its own list.
TEST(ImportPlanTest, TwoEventsInOneSecondAreNotInterleaved) {
  const std::string ea = "ns/a-1,ns/a-2";
  const std::string eb = "ns/b-1,ns/b-2";
  std::vector<ExportedRun> runs = {
      PR("a-1", "queued", "2026-01-01T10:00:00Z", ea),
      PR("a-2", "queued", "2026-01-01T10:00:00Z", ea),
      PR("b-1", "queued", "2026-01-01T10:00:00Z", eb),
      PR("b-2", "queued", "2026-01-01T10:00:00Z", eb),
  };
  EXPECT_THAT(QueueOf(PlanImport(runs, kLimits), "ns/app"),
              ElementsAre("ns/a-1", "ns/a-2", "ns/b-1", "ns/b-2"));
  std::swap(runs[0], runs[2]);  // b's run first in the export
  EXPECT_THAT(QueueOf(PlanImport(runs, kLimits), "ns/app"),
              ElementsAre("ns/b-1", "ns/b-2", "ns/a-1", "ns/a-2"));
}

// Row 3: a run labelled queued whose spec.status is no longer
// PipelineRunPending (cancelled) is skipped, not queued (it was queued and
// later admitted, holding a slot), and still brings its event's runs to
// the place Pipelines-as-Code gives them.
TEST(ImportPlanTest, ACancelledQueuedRunIsSkippedButKeepsItsEventsPlace) {
  const std::string e = "ns/x1,ns/x2";
  std::vector<ExportedRun> runs = {
      PR("x1", "queued", "2026-01-01T10:00:00Z", e),
      PR("y", "queued", "2026-01-01T10:00:01Z", "ns/y"),
      PR("x2", "queued", "2026-01-01T10:00:02Z", e),
  };
  runs[0].spec_status = "CancelledRunFinally";
  ImportPlan p = PlanImport(runs, kLimits);
  EXPECT_THAT(QueueOf(p, "ns/app"), ElementsAre("ns/x2", "ns/y"));
  EXPECT_THAT(ReasonOf(p, "ns/x1"),
              HasSubstr("no longer pending (spec.status CancelledRunFinally)"));
  runs[0].spec_status = "";
  EXPECT_THAT(ReasonOf(PlanImport(runs, kLimits), "ns/x1"),
              HasSubstr("spec.status is not PipelineRunPending"));
}

// Row 4: a queued run without an execution-order annotation (that no other
// run's annotation names) is skipped (it was queued at order 0, ahead of
// same-second runs).
TEST(ImportPlanTest, AQueuedRunNoExecutionOrderNamesIsSkipped) {
  std::vector<ExportedRun> runs = {
      PR("named", "queued", "2026-01-01T10:00:00Z", "ns/named"),
      PR("bare", "queued", "2026-01-01T10:00:00Z", ""),
      PR("listed", "queued", "2026-01-01T10:00:05Z", ""),
      PR("lister", "queued", "2026-01-01T10:00:01Z", "ns/lister,ns/listed"),
  };
  ImportPlan p = PlanImport(runs, kLimits);
  EXPECT_THAT(QueueOf(p, "ns/app"),
              ElementsAre("ns/named", "ns/lister", "ns/listed"));
  EXPECT_THAT(ReasonOf(p, "ns/bare"),
              HasSubstr("no execution-order annotation names it"));
}

// Row 5: a repository without a limit (or at 0) keeps no queue: its runs
// are skipped and reported, none gets a lease (a limit of 0 was recorded
// and leases held for its started runs).
TEST(ImportPlanTest, ARepositoryWithoutALimitGetsNothing) {
  std::vector<ExportedRun> runs = {
      PR("s", "started", "2026-01-01T10:00:00Z", "ns/s", "free"),
      PR("q", "queued", "2026-01-01T10:00:00Z", "ns/q", "zero"),
  };
  std::map<std::string, int32_t> limits = {{"ns/zero", 0}};
  ImportPlan p = PlanImport(runs, limits);
  EXPECT_THAT(p.repositories, IsEmpty());
  EXPECT_THAT(ReasonOf(p, "ns/s"),
              HasSubstr("repository ns/free has no concurrency limit"));
  EXPECT_THAT(ReasonOf(p, "ns/q"), HasSubstr("unlimited (limit 0)"));
}

// Row 6: selection by the labels Pipelines-as-Code selects by; the
// annotations where a label is missing; a disagreement is reported; a run
// another manager made is left alone.
TEST(ImportPlanTest, LabelsSelectAnnotationsFillInDisagreementsAreNoted) {
  std::vector<ExportedRun> runs = {
      PR("by-label", "queued", "2026-01-01T10:00:00Z", "ns/by-label"),
      PR("by-annotation", "queued", "2026-01-01T10:00:01Z", "ns/by-annotation"),
      PR("disagree", "started", "2026-01-01T10:00:02Z", "ns/disagree"),
      PR("foreign", "queued", "2026-01-01T10:00:03Z", "ns/foreign"),
  };
  runs[0].state_annotation.clear();
  runs[0].repository_annotation.clear();
  runs[1].state_label.clear();
  runs[1].repository_label.clear();
  runs[2].state_annotation = "completed";  // the label says started
  runs[3].managed_by = "argocd";
  ImportPlan p = PlanImport(runs, kLimits);
  EXPECT_THAT(QueueOf(p, "ns/app"),
              ElementsAre("ns/by-label", "ns/by-annotation"));
  ASSERT_EQ(p.repositories.size(), 1u);
  EXPECT_THAT(p.repositories[0].adopt, ElementsAre("ns/disagree"));
  ASSERT_EQ(p.notes.size(), 1u);
  EXPECT_THAT(p.notes[0], HasSubstr("state label started and annotation "
                                    "completed disagree"));
  EXPECT_THAT(ReasonOf(p, "ns/foreign"), HasSubstr("managed-by=argocd"));
}

// Started runs are adopted (all of them, above the limit too: this
// project's deliberate difference), unless finished; finished queued runs
// are skipped.
TEST(ImportPlanTest, StartedRunsAreAdoptedUnlessFinished) {
  std::vector<ExportedRun> runs = {
      PR("s1", "started", "2026-01-01T10:00:00Z", "ns/s1,ns/s2"),
      PR("s2", "started", "2026-01-01T10:00:00Z", "ns/s1,ns/s2"),
      PR("s3", "started", "2026-01-01T09:00:00Z", ""),
      PR("done", "started", "2026-01-01T09:00:00Z", ""),
      PR("qdone", "queued", "2026-01-01T09:00:00Z", "ns/qdone"),
  };
  runs[3].succeeded = "True";
  runs[4].succeeded = "False";
  ImportPlan p = PlanImport(runs, kLimits);
  ASSERT_EQ(p.repositories.size(), 1u);
  EXPECT_THAT(p.repositories[0].adopt, ElementsAre("ns/s1", "ns/s2", "ns/s3"));
  EXPECT_THAT(ReasonOf(p, "ns/done"), HasSubstr("finished (Succeeded=True)"));
  EXPECT_THAT(ReasonOf(p, "ns/qdone"), HasSubstr("finished (Succeeded=False)"));
}

TEST(ImportPlanTest, ReadsFullAndTrimmedObjectsAlikeAndRefusesWrongKinds) {
  nlohmann::json full = {
      {"apiVersion", "tekton.dev/v1"},
      {"kind", "PipelineRun"},
      {"metadata",
       {{"name", "pr-1"},
        {"namespace", "ns"},
        {"creationTimestamp", "2026-01-01T10:00:00Z"},
        {"managedFields", nlohmann::json::array({{{"manager", "x"}}})},
        {"labels",
         {{kStateKey, "queued"}, {kRepositoryKey, "app"}, {"other", "x"}}},
        {"annotations",
         {{kStateKey, "queued"},
          {kRepositoryKey, "app"},
          {kExecutionOrderKey, "ns/pr-1"},
          {"big", std::string(10000, 'x')}}}}},
      {"spec", {{"status", kPendingStatus}, {"pipelineRef", {{"name", "p"}}}}},
      {"status",
       {{"conditions", nlohmann::json::array({{{"type", "Succeeded"},
                                               {"status", "Unknown"}}})}}}};
  auto r = ReadPipelineRun(full, "x");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->Key(), "ns/pr-1");
  EXPECT_EQ(r->succeeded, "Unknown");
  nlohmann::json trimmed = TrimmedJson(*r);
  EXPECT_LT(trimmed.dump().size(), full.dump().size() / 20);
  auto again = ReadPipelineRun(trimmed, "y");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(TrimmedJson(*again), trimmed);

  nlohmann::json repos = {
      {"kind", "List"},
      {"items", nlohmann::json::array({{{"kind", "Repository"},
                                        {"metadata", {{"name", "a"}}}}})}};
  auto wrong = ReadPipelineRuns(repos);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.status().message()),
              HasSubstr("wrong kind Repository"));
  full["metadata"]["labels"] = "oops";
  EXPECT_THAT(std::string(ReadPipelineRun(full, "z").status().message()),
              HasSubstr("labels must be an object"));
}

// Pipelines-as-Code's InitQueues for the queued runs of one namespace,
// transcribed: the runs labelled queued by creation time; each one's
// execution-order names, kept if their annotation says queued and their
// spec.status is pending, added to the pending queue unless there.
std::vector<std::string> PacInitQueues(const std::vector<ExportedRun>& runs) {
  std::vector<const ExportedRun*> listed;
  std::map<std::string, const ExportedRun*> by_key;
  for (const ExportedRun& r : runs) {
    by_key[r.Key()] = &r;
    if (r.state_label == "queued") listed.push_back(&r);
  }
  std::stable_sort(listed.begin(), listed.end(),
                   [](const ExportedRun* a, const ExportedRun* b) {
                     return a->created < b->created;  // same format: RFC 3339
                   });
  std::vector<std::string> pending;
  std::set<std::string> in;
  for (const ExportedRun* pr : listed) {
    if (pr->execution_order.empty()) continue;
    for (const std::string& name :
         std::vector<std::string>(absl::StrSplit(pr->execution_order, ','))) {
      auto it = by_key.find(name);
      if (it == by_key.end()) continue;
      if (it->second->state_annotation != "queued") continue;
      if (it->second->spec_status != kPendingStatus) continue;
      if (in.insert(name).second) pending.push_back(name);
    }
  }
  return pending;
}

// Random exports of one repository (Pipelines-as-Code keys its queues by
// namespace; the import by repository): events of 1-4 runs created over a
// few seconds, some cancelled, some without the annotation, listed in a
// random order. The import's queue is Pipelines-as-Code's.
TEST(ImportPlanTest, QueueOrderMatchesPipelinesAsCodeOnRandomExports) {
  std::mt19937 rng(2026);
  for (int round = 0; round < 300; ++round) {
    std::vector<ExportedRun> runs;
    int second = 0;
    const int events = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < events; ++e) {
      const int n = 1 + static_cast<int>(rng() % 4);
      std::vector<std::string> names;
      for (int i = 0; i < n; ++i) names.push_back(absl::StrCat("e", e, "-", i));
      std::vector<std::string> keys;
      for (const auto& nm : names) keys.push_back("ns/" + nm);
      const std::string order = absl::StrJoin(keys, ",");
      for (const auto& nm : names) {
        // Distinct seconds: Pipelines-as-Code's sort is not stable.
        second += 1 + static_cast<int>(rng() % 2);
        ExportedRun r = PR(nm, "queued",
                           absl::StrCat("2026-01-01T10:", second / 50 + 10, ":",
                                        second % 50 + 10, "Z"),
                           order);
        if (rng() % 6 == 0) r.spec_status = "Cancelled";
        if (rng() % 8 == 0) r.execution_order.clear();
        runs.push_back(r);
      }
    }
    std::shuffle(runs.begin(), runs.end(), rng);
    ImportPlan p = PlanImport(runs, kLimits);
    EXPECT_EQ(QueueOf(p, "ns/app"), PacInitQueues(runs)) << "round " << round;
  }
}

}  // namespace
}  // namespace pac::concurrency::server
