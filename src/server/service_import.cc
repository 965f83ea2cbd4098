// Service::Import: rebuilding running sets and queues from a cluster's
// PipelineRuns (docs/migration.md). Three request forms:
//   {"pipelineruns": List, "repositories": "<yaml>"}  planned here
//   {"batch": [repository plan, ...]}                  planned by the CLI
//   {"limits_of": ["ns/name", ...]}                    the CLI's planning read
// A batch is applied as one Driver::ImportBatch, one atomic step on every
// backend; a whole export sent at once, repository by repository with
// Driver::ImportRuns. Either sent again changes nothing, and an interrupted
// import run again completes.
#include <map>
#include <set>
#include <string_view>

#include "pac/concurrency/status.h"
#include "src/common/strings.h"
#include "src/server/import_plan.h"
#include "src/server/manifests.h"
#include "src/server/service.h"

namespace pac::concurrency::server {

using internal::Cat;

namespace {

// The most runs one request may carry in its batch: enough to amortize a
// request, few enough to finish well inside the request timeout on every
// backend (the backend's own capacity may be smaller: etcd's is one Txn).
constexpr size_t kMaxBatchRuns = 5000;
constexpr size_t kMaxLimitLookups = 20000;

absl::StatusOr<RepositoryPlan> PlanFromJson(const Json& j, size_t i,
                                            bool* set_limit) {
  const std::string where = Cat("batch[", i, "]");
  if (absl::Status s = CheckFields(j, {"repository", "concurrency_limit",
                                       "set_limit", "adopt", "queue"});
      !s.ok()) {
    return absl::InvalidArgumentError(Cat(where, ": ", s.message()));
  }
  RepositoryPlan p;
  if (!j.contains("repository") || !j["repository"].is_string()) {
    return absl::InvalidArgumentError(Cat(where, ".repository: required"));
  }
  p.repository = j["repository"].get<std::string>();
  if (absl::Status s = ValidateKey(p.repository, Cat(where, ".repository"));
      !s.ok()) {
    return s;
  }
  if (!j.contains("concurrency_limit") ||
      !j["concurrency_limit"].is_number_integer() ||
      j["concurrency_limit"].get<int64_t>() < 1 ||
      j["concurrency_limit"].get<int64_t>() > INT32_MAX) {
    return absl::InvalidArgumentError(
        Cat(where, ".concurrency_limit: a positive integer"));
  }
  p.limit = j["concurrency_limit"].get<int32_t>();
  *set_limit = j.value("set_limit", false);
  if (auto it = j.find("adopt"); it != j.end()) {
    if (!it->is_array()) {
      return absl::InvalidArgumentError(Cat(where, ".adopt: a list of runs"));
    }
    for (const Json& r : *it) {
      if (!r.is_string()) {
        return absl::InvalidArgumentError(Cat(where, ".adopt: run keys"));
      }
      p.adopt.push_back(r.get<std::string>());
    }
  }
  if (auto it = j.find("queue"); it != j.end()) {
    if (!it->is_array()) {
      return absl::InvalidArgumentError(Cat(where, ".queue: a list"));
    }
    for (const Json& q : *it) {
      if (!q.is_object() || !q.contains("pipeline_run") ||
          !q["pipeline_run"].is_string() || !q.contains("queue_time") ||
          !q["queue_time"].is_string()) {
        return absl::InvalidArgumentError(
            Cat(where, ".queue: {\"pipeline_run\", \"queue_time\"} objects"));
      }
      auto t = ParseTimestamp(q["queue_time"].get<std::string>(),
                              Cat(where, ".queue_time"));
      if (!t.ok()) return t.status();
      QueuedRun run{q["pipeline_run"].get<std::string>(), *t};
      if (auto g = q.find("group"); g != q.end() && !g->is_null()) {
        if (!g->is_string()) {
          return absl::InvalidArgumentError(
              Cat(where, ".queue.group: a string"));
        }
        run.group = g->get<std::string>();
      }
      if (auto pr = q.find("priority"); pr != q.end() && !pr->is_null()) {
        auto priority = ParsePriority(*pr, Cat(where, ".queue.priority"));
        if (!priority.ok()) return priority.status();
        run.priority = *priority;
      }
      p.queue.push_back(std::move(run));
    }
  }
  for (const std::string& r : p.adopt) {
    if (absl::Status s = ValidateKey(r, Cat(where, ".adopt")); !s.ok()) {
      return s;
    }
  }
  for (const QueuedRun& q : p.queue) {
    if (absl::Status s = ValidateKey(q.run, Cat(where, ".queue")); !s.ok()) {
      return s;
    }
  }
  return p;
}

}  // namespace

Json RepositoryPlanToJson(const RepositoryPlan& p, bool set_limit) {
  Json queue = Json::array();
  for (const QueuedRun& q : p.queue) {
    Json e{{"pipeline_run", q.run},
           {"queue_time", FormatTimestamp(q.queue_time)}};
    if (!q.group.empty()) e["group"] = q.group;
    if (q.priority != 0) e["priority"] = q.priority;
    queue.push_back(std::move(e));
  }
  Json out = {{"repository", p.repository},
              {"concurrency_limit", p.limit},
              {"adopt", p.adopt},
              {"queue", std::move(queue)}};
  if (set_limit) out["set_limit"] = true;
  return out;
}

absl::Status Service::ApplyPlans(const Context& ctx,
                                 const std::vector<PlanToApply>& plans,
                                 bool as_one_step, Json& report) {
  std::vector<RepositoryImport> parts;
  parts.reserve(plans.size());
  for (const auto& [p, set_limit] : plans) {
    auto repo = Repository::FromKey(p->repository, p->limit);
    if (!repo.ok()) return repo.status();
    RepositoryImport part{*std::move(repo), {}};
    part.request.running = p->adopt;
    part.request.waiting.reserve(p->queue.size());
    for (const QueuedRun& q : p->queue) {
      part.request.waiting.push_back(
          {q.run, q.queue_time, q.group, q.priority});
    }
    part.request.set_limit = set_limit;
    parts.push_back(std::move(part));
  }
  absl::StatusOr<std::vector<ImportResult>> res;
  if (as_one_step) {
    res = driver_->ImportBatch(ctx, parts);
  } else {
    res = std::vector<ImportResult>{};
    for (const RepositoryImport& part : parts) {
      auto one = driver_->ImportRuns(ctx, part.repository, part.request);
      if (!one.ok()) {
        res = one.status();
        break;
      }
      res->push_back(*std::move(one));
    }
  }
  if (!res.ok()) {
    CountError("import", res.status());
    return res.status();
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    const RepositoryPlan& p = *plans[i].first;
    const ImportResult& r = (*res)[i];
    for (const Lease& l : r.running) {
      report["running"].push_back(l.pipeline_run_key);
    }
    // A waiting run that holds a slot is one the controller must start,
    // whether this request or an earlier one granted it: the report of an
    // interrupted import run again is the report of one run in one go.
    for (const Lease& l : r.admitted) {
      report["admitted"].push_back(l.pipeline_run_key);
    }
    for (const Lease& l : r.others_admitted) {
      report["admitted"].push_back(l.pipeline_run_key);
    }
    for (const QueueEntry& q : r.queued) {
      report["queued"].push_back(Json{{"pipeline_run", q.pipeline_run_key},
                                      {"repository", p.repository},
                                      {"position", q.position}});
    }
    NoteAdmitted(r.admitted, "acquired");
    NoteAdmitted(r.others_admitted, "promoted");
    Seen(p.repository);
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> Service::Import(const Context& ctx, const Json& body) {
  if (absl::Status s = CheckFields(
          body, {"pipelineruns", "repositories", "global_repository", "batch",
                 "limits_of", "group_label", "priority_label"});
      !s.ok()) {
    return s;
  }
  if (auto it = body.find("limits_of"); it != body.end()) {
    if (body.size() != 1 || !it->is_array() || it->size() > kMaxLimitLookups) {
      return absl::InvalidArgumentError(
          Cat("limits_of: a list of at most ", kMaxLimitLookups,
              " repository keys, alone in the request"));
    }
    Json limits = Json::object();
    for (const Json& k : *it) {
      if (!k.is_string()) {
        return absl::InvalidArgumentError("limits_of: repository keys");
      }
      const std::string key = k.get<std::string>();
      if (absl::Status s = ValidateKey(key, "limits_of"); !s.ok()) return s;
      auto limit = driver_->GetRepositoryLimit(ctx, key);
      if (!limit.ok()) return limit.status();
      if (limit->has_value()) limits[key] = **limit;
    }
    // What one batch may carry on this backend (the CLI cuts its batches
    // to fit).
    const ImportCapacity cap = driver_->GetImportCapacity();
    return Json{{"limits", std::move(limits)},
                {"import_capacity",
                 {{"runs", cap.runs}, {"per_repository", cap.per_repository}}}};
  }
  Json report = {{"repositories", Json::array()}, {"running", Json::array()},
                 {"queued", Json::array()},       {"admitted", Json::array()},
                 {"skipped", Json::array()},      {"notes", Json::array()}};
  if (auto it = body.find("batch"); it != body.end()) {
    if (body.size() != 1 || !it->is_array()) {
      return absl::InvalidArgumentError(
          "batch: a list of repository plans, alone in the request");
    }
    // Everything is read and checked before anything is written.
    std::vector<std::pair<RepositoryPlan, bool>> plans;
    size_t runs = 0;
    for (size_t i = 0; i < it->size(); ++i) {
      bool set_limit = false;
      auto p = PlanFromJson((*it)[i], i, &set_limit);
      if (!p.ok()) return p.status();
      runs += p->adopt.size() + p->queue.size();
      plans.emplace_back(*std::move(p), set_limit);
    }
    if (runs > kMaxBatchRuns) {
      return absl::InvalidArgumentError(Cat("batch: ", runs, " runs; at most ",
                                            kMaxBatchRuns, " per request"));
    }
    // The whole batch is one step: all of it is written or none.
    std::vector<PlanToApply> apply;
    for (const auto& [p, set_limit] : plans) {
      apply.emplace_back(&p, set_limit);
    }
    if (absl::Status s = ApplyPlans(ctx, apply, /*as_one_step=*/true, report);
        !s.ok()) {
      return s;
    }
    for (const auto& [p, set_limit] : plans) {
      if (set_limit) {
        report["repositories"].push_back(
            Json{{"repository", p.repository}, {"concurrency_limit", p.limit}});
      }
    }
    return report;
  }
  std::map<std::string, int32_t> limits;
  // The manifests' shared-limits annotations (docs/policies.md).
  std::vector<SharedLimitsNote> shared;
  if (auto it = body.find("repositories"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          "repositories: must be the manifests' YAML (or JSON) as a string");
    }
    auto repos = ParseRepositoryManifests(it->get<std::string>(), &shared);
    if (!repos.ok()) return repos.status();
    std::string global;
    if (auto g = body.find("global_repository"); g != body.end()) {
      if (!g->is_string()) {
        return absl::InvalidArgumentError(
            "global_repository: a repository key, or \"none\"");
      }
      global = g->get<std::string>();
    }
    auto merged = MergeGlobalRepository(*repos, global);
    if (!merged.ok()) return merged.status();
    for (const std::string& n : *merged) report["notes"].push_back(n);
    for (const Repository& r : *repos) limits[r.Key()] = EffectiveLimit(r);
  }
  // The labels a queued run's group and priority come from (optional).
  ImportLabels labels;
  for (auto [field, out] : {std::pair{"group_label", &labels.group},
                            std::pair{"priority_label", &labels.priority}}) {
    if (auto it = body.find(field); it != body.end() && !it->is_null()) {
      if (!it->is_string()) {
        return absl::InvalidArgumentError(Cat(field, ": a label key"));
      }
      *out = it->get<std::string>();
    }
  }
  std::vector<ExportedRun> runs;
  if (auto it = body.find("pipelineruns"); it != body.end() && !it->is_null()) {
    auto read = ReadPipelineRuns(*it, labels);
    if (!read.ok()) return read.status();
    runs = *std::move(read);
  }
  const std::map<std::string, int32_t> from_manifests = limits;
  // The limits the backend records for repositories without a manifest.
  for (const ExportedRun& r : runs) {
    const std::string repo = RepositoryOf(r);
    if (repo.empty() || limits.count(repo) != 0 ||
        !ValidateKey(repo, "repository").ok()) {
      continue;
    }
    auto recorded = driver_->GetRepositoryLimit(ctx, repo);
    if (!recorded.ok()) return recorded.status();
    if (recorded->has_value()) limits[repo] = **recorded;
  }
  const ImportPlan plan = PlanImport(runs, limits);
  // Limits first, so that the adopted runs count against them.
  for (const auto& [key, limit] : from_manifests) {
    auto repo = Repository::FromKey(key, limit);
    if (!repo.ok()) return repo.status();
    auto one = SetLimitTo(ctx, *repo);
    if (!one.ok()) return one.status();
    for (const Json& l : (*one)["admitted"]) {
      report["admitted"].push_back(l["pipeline_run"]);
    }
    report["repositories"].push_back(
        Json{{"repository", key}, {"concurrency_limit", limit}});
  }
  // Memberships of shared limits before any run: the admissions count
  // against them.
  for (const SharedLimitsNote& note : shared) {
    auto p = SetPolicy(ctx, note.repository_key,
                       Json{{"shared_limits", note.names}});
    if (!p.ok()) return p.status();
  }
  // Repository by repository, each one ImportRuns (any size).
  for (const RepositoryPlan& p : plan.repositories) {
    if (absl::Status s = ApplyPlans(ctx, {{&p, false}},
                                    /*as_one_step=*/false, report);
        !s.ok()) {
      return s;
    }
  }
  for (const SkippedRun& s : plan.skipped) {
    report["skipped"].push_back(
        Json{{"pipeline_run", s.run}, {"reason", s.reason}});
  }
  for (const std::string& n : plan.notes) report["notes"].push_back(n);
  return report;
}

}  // namespace pac::concurrency::server
