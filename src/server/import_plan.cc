#include "src/server/import_plan.h"

#include <algorithm>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/repository.h"
#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/server/api.h"

namespace pac::concurrency::server {

using internal::Cat;
using Json = nlohmann::json;

namespace {

// obj[key] as a string: "" when absent or null; an error when another type.
absl::Status StringAt(const Json& obj, const char* key, std::string_view where,
                      std::string* out) {
  out->clear();
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        Cat(where, ": ", key, " must be a string"));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::Status StringAt(const Json& obj, const char* key, std::string_view where,
                      PooledText* out) {
  std::string text;
  absl::Status s = StringAt(obj, key, where, &text);
  *out = text;
  return s;
}

// obj[key] as an object (null when absent); an error when another type.
absl::StatusOr<const Json*> ObjectAt(const Json& obj, const char* key,
                                     std::string_view where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        Cat(where, ": ", key, " must be an object"));
  }
  return &*it;
}

}  // namespace

absl::StatusOr<ExportedRun> ReadPipelineRun(const Json& obj,
                                            std::string_view where,
                                            const ImportLabels& names) {
  if (!obj.is_object()) {
    return absl::InvalidArgumentError(Cat(where, ": not an object"));
  }
  ExportedRun r;
  std::string kind;
  if (absl::Status s = StringAt(obj, "kind", where, &kind); !s.ok()) return s;
  if (!kind.empty() && kind != "PipelineRun") {
    return absl::InvalidArgumentError(
        Cat(where, ": wrong kind ", kind, " (expected PipelineRun",
            kind == "Repository" ? "; Repository manifests go to --repositories"
                                 : "",
            ")"));
  }
  auto meta = ObjectAt(obj, "metadata", where);
  if (!meta.ok()) return meta.status();
  if (*meta != nullptr) {
    const Json& m = **meta;
    const std::string at = Cat(where, ": metadata");
    if (absl::Status s = StringAt(m, "namespace", at, &r.ns); !s.ok()) {
      return s;
    }
    for (auto [key, out] : {std::pair{"name", &r.name},
                            std::pair{"creationTimestamp", &r.created}}) {
      if (absl::Status s = StringAt(m, key, at, out); !s.ok()) return s;
    }
    auto labels = ObjectAt(m, "labels", at);
    if (!labels.ok()) return labels.status();
    if (*labels != nullptr) {
      const std::string lat = Cat(at, ".labels");
      for (auto [key, out] : {std::pair{kStateKey, &r.state_label},
                              std::pair{kRepositoryKey, &r.repository_label},
                              std::pair{kManagedByKey, &r.managed_by}}) {
        if (absl::Status s = StringAt(**labels, key, lat, out); !s.ok()) {
          return s;
        }
      }
      for (auto [key, out] :
           {std::pair{&names.group, &r.group_label_value},
            std::pair{&names.priority, &r.priority_label_value}}) {
        if (key->empty()) continue;
        if (absl::Status s = StringAt(**labels, key->c_str(), lat, out);
            !s.ok()) {
          return s;
        }
      }
    }
    auto ann = ObjectAt(m, "annotations", at);
    if (!ann.ok()) return ann.status();
    if (*ann != nullptr) {
      const std::string aat = Cat(at, ".annotations");
      for (auto [key, out] :
           {std::pair{kStateKey, &r.state_annotation},
            std::pair{kRepositoryKey, &r.repository_annotation}}) {
        if (absl::Status s = StringAt(**ann, key, aat, out); !s.ok()) {
          return s;
        }
      }
      if (absl::Status s =
              StringAt(**ann, kExecutionOrderKey, aat, &r.execution_order);
          !s.ok()) {
        return s;
      }
    }
  }
  auto spec = ObjectAt(obj, "spec", where);
  if (!spec.ok()) return spec.status();
  if (*spec != nullptr) {
    if (absl::Status s =
            StringAt(**spec, "status", Cat(where, ": spec"), &r.spec_status);
        !s.ok()) {
      return s;
    }
  }
  auto status = ObjectAt(obj, "status", where);
  if (!status.ok()) return status.status();
  if (*status != nullptr) {
    auto it = (*status)->find("conditions");
    if (it != (*status)->end() && it->is_array()) {
      for (const Json& c : *it) {
        if (c.is_object() && c.value("type", Json()) == "Succeeded" &&
            c.contains("status") && c["status"].is_string()) {
          r.succeeded = c["status"].get<std::string>();
        }
      }
    }
  }
  return r;
}

Json TrimmedJson(const ExportedRun& r, const ImportLabels& names) {
  Json labels = Json::object(), ann = Json::object();
  if (!names.group.empty() && !r.group_label_value.empty()) {
    labels[names.group] = r.group_label_value;
  }
  if (!names.priority.empty() && !r.priority_label_value.empty()) {
    labels[names.priority] = r.priority_label_value;
  }
  if (!r.state_label.empty()) labels[kStateKey] = r.state_label;
  if (!r.repository_label.empty()) labels[kRepositoryKey] = r.repository_label;
  if (!r.managed_by.empty()) labels[kManagedByKey] = r.managed_by;
  if (!r.state_annotation.empty()) ann[kStateKey] = r.state_annotation;
  if (!r.repository_annotation.empty()) {
    ann[kRepositoryKey] = r.repository_annotation;
  }
  if (!r.execution_order.empty()) ann[kExecutionOrderKey] = r.execution_order;
  Json meta = {{"namespace", r.ns}, {"name", r.name}};
  if (!r.created.empty()) meta["creationTimestamp"] = r.created;
  if (!labels.empty()) meta["labels"] = std::move(labels);
  if (!ann.empty()) meta["annotations"] = std::move(ann);
  Json out = {{"kind", "PipelineRun"}, {"metadata", std::move(meta)}};
  if (!r.spec_status.empty()) out["spec"] = {{"status", r.spec_status}};
  if (!r.succeeded.empty()) {
    out["status"] = {{"conditions", Json::array({{{"type", "Succeeded"},
                                                  {"status", r.succeeded}}})}};
  }
  return out;
}

absl::StatusOr<std::vector<ExportedRun>> ReadPipelineRuns(
    const Json& doc, const ImportLabels& labels) {
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("pipelineruns: must be a JSON object");
  }
  std::vector<ExportedRun> out;
  auto items = doc.find("items");
  if (items == doc.end()) {
    auto r = ReadPipelineRun(doc, "pipelineruns", labels);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
    return out;
  }
  if (!items->is_array()) {
    return absl::InvalidArgumentError("pipelineruns.items: must be an array");
  }
  out.reserve(items->size());
  for (size_t i = 0; i < items->size(); ++i) {
    auto r = ReadPipelineRun((*items)[i], Cat("pipelineruns.items[", i, "]"),
                             labels);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

std::string RepositoryOf(const ExportedRun& run) {
  const std::string& name = !run.repository_annotation.empty()
                                ? run.repository_annotation
                                : run.repository_label;
  return name.empty() ? "" : Cat(run.ns, "/", name);
}

size_t ImportPlan::runs() const {
  size_t n = 0;
  for (const RepositoryPlan& p : repositories) {
    n += p.adopt.size() + p.queue.size();
  }
  return n;
}

namespace {

// A run that passed selection: a state the import keeps, a repository, a
// creation time.
struct Candidate {
  const ExportedRun* run;
  std::string key, repository;
  absl::Time created;
  bool started = false;
  std::string unfit;     // why it cannot be placed ("" if it can)
  std::string group;     // from its group label
  int32_t priority = 0;  // from its priority label
};

// A queued run as the plan places it, with its group and priority.
QueuedRun Queued(const Candidate& c, absl::Time queue_time) {
  return QueuedRun{c.key, queue_time, c.group, c.priority};
}

// Places the runs of one repository and one state the way
// Pipelines-as-Code's InitQueues does: the runs with an execution-order
// annotation by creation time (ties: export order), each bringing the runs
// its annotation names, in that order, that can be placed and are not
// yet. `all_fit`: every fit run is placed, named or not (at the end, by
// creation time).
std::vector<QueuedRun> EventOrder(std::vector<Candidate*> cands, bool all_fit) {
  std::stable_sort(cands.begin(), cands.end(),
                   [](const Candidate* a, const Candidate* b) {
                     return a->created < b->created;
                   });
  std::unordered_map<std::string_view, Candidate*> by_key;
  for (Candidate* c : cands) by_key.emplace(c->key, c);
  std::unordered_set<std::string_view> placed;
  std::vector<QueuedRun> out;
  for (const Candidate* c : cands) {
    for (absl::string_view part :
         absl::StrSplit(c->run->execution_order, ',', absl::SkipEmpty())) {
      auto it = by_key.find(std::string_view(part.data(), part.size()));
      if (it == by_key.end() || !it->second->unfit.empty() ||
          !placed.insert(it->first).second) {
        continue;
      }
      out.push_back(Queued(*it->second, c->created));
    }
  }
  for (const Candidate* c : cands) {
    if (!c->unfit.empty() || placed.count(c->key) != 0) continue;
    if (all_fit) {
      placed.insert(c->key);
      out.push_back(Queued(*c, c->created));
    }
  }
  return out;
}

}  // namespace

ImportPlan PlanImport(const std::vector<ExportedRun>& runs,
                      const std::map<std::string, int32_t>& limits) {
  std::vector<const ExportedRun*> ptrs;
  ptrs.reserve(runs.size());
  for (const ExportedRun& r : runs) ptrs.push_back(&r);
  return PlanImport(ptrs, limits);
}

ImportPlan PlanImport(std::span<const ExportedRun* const> runs,
                      const std::map<std::string, int32_t>& limits) {
  ImportPlan plan;
  std::vector<Candidate> cands;
  cands.reserve(runs.size());
  std::unordered_set<std::string> seen;
  for (const ExportedRun* rp : runs) {
    const ExportedRun& r = *rp;
    const std::string key = r.Key();
    const std::string repo = RepositoryOf(r);
    auto skip = [&](std::string why) {
      plan.skipped.push_back({key, repo, std::move(why)});
    };
    if (absl::Status s = ValidateKey(key, "pipeline_run"); !s.ok()) {
      skip(std::string(s.message()));
      continue;
    }
    if (!seen.insert(key).second) {
      skip("listed twice (the first one counts)");
      continue;
    }
    if (!r.managed_by.empty() && r.managed_by != kManagedByPaC) {
      skip(Cat("not managed by Pipelines-as-Code (", kManagedByKey, "=",
               r.managed_by, ")"));
      continue;
    }
    const std::string& state =
        !r.state_label.empty() ? r.state_label : r.state_annotation;
    if (!r.state_label.empty() && !r.state_annotation.empty() &&
        r.state_label != r.state_annotation) {
      plan.notes.push_back(Cat(key, ": state label ", r.state_label,
                               " and annotation ", r.state_annotation,
                               " disagree; the label is used"));
    }
    if (!r.repository_label.empty() && !r.repository_annotation.empty() &&
        r.repository_label != r.repository_annotation) {
      plan.notes.push_back(Cat(key, ": repository label ", r.repository_label,
                               " and annotation ", r.repository_annotation,
                               " disagree; the annotation is used"));
    }
    if (repo.empty()) {
      skip("no repository label or annotation");
      continue;
    }
    if (absl::Status s = ValidateKey(repo, "repository"); !s.ok()) {
      skip(std::string(s.message()));
      continue;
    }
    if (state.empty()) {
      skip("no state label or annotation");
      continue;
    }
    if (state != "started" && state != "queued") {
      skip(Cat("state ", state));
      continue;
    }
    auto created = ParseTimestamp(r.created, "metadata.creationTimestamp");
    if (!created.ok()) {
      skip(r.created.empty() ? "no metadata.creationTimestamp"
                             : std::string(created.status().message()));
      continue;
    }
    auto limit = limits.find(repo);
    if (limit == limits.end() || limit->second == 0) {
      skip(Cat("repository ", repo,
               limit == limits.end() ? " has no concurrency limit"
                                     : " is unlimited (limit 0)",
               ": Pipelines-as-Code keeps no queue for it"));
      continue;
    }
    Candidate c{&r, key, repo, *created, state == "started", ""};
    if (!r.group_label_value.empty()) {
      AcquireOptions o;
      o.group = r.group_label_value;
      if (absl::Status s = internal::ValidateAcquireOptions(o); s.ok()) {
        c.group = r.group_label_value;
      } else {
        plan.notes.push_back(Cat(key, ": group label ignored: ", s.message()));
      }
    }
    if (!r.priority_label_value.empty() &&
        !absl::SimpleAtoi(r.priority_label_value, &c.priority)) {
      plan.notes.push_back(Cat(key, ": priority label \"",
                               r.priority_label_value,
                               "\" is not a 32-bit integer; 0 is used"));
      c.priority = 0;
    }
    if (r.succeeded == "True" || r.succeeded == "False") {
      c.unfit = Cat("finished (Succeeded=", r.succeeded, ") while ", state);
    } else if (!c.started && r.spec_status != kPendingStatus) {
      c.unfit = r.spec_status.empty()
                    ? "queued but spec.status is not PipelineRunPending"
                    : Cat("queued but no longer pending (spec.status ",
                          r.spec_status, ")");
    }
    cands.push_back(std::move(c));
  }
  std::map<std::string,
           std::pair<std::vector<Candidate*>, std::vector<Candidate*>>>
      by_repo;
  for (Candidate& c : cands) {
    auto& [started, queued] = by_repo[c.repository];
    (c.started ? started : queued).push_back(&c);
  }
  for (auto& [repo, lists] : by_repo) {
    RepositoryPlan p;
    p.repository = repo;
    p.limit = limits.at(repo);
    // Started runs: all of them hold slots (Pipelines-as-Code adopts only
    // those an execution-order names, and only up to the limit).
    for (QueuedRun& q : EventOrder(lists.first, /*all_fit=*/true)) {
      p.adopt.push_back(std::move(q.run));
    }
    p.queue = EventOrder(lists.second, /*all_fit=*/false);
    std::unordered_set<std::string_view> placed;
    for (const std::string& r : p.adopt) placed.insert(r);
    for (const QueuedRun& q : p.queue) placed.insert(q.run);
    for (auto* list : {&lists.first, &lists.second}) {
      for (const Candidate* c : *list) {
        if (placed.count(c->key) != 0) continue;
        plan.skipped.push_back(
            {c->key, repo,
             !c->unfit.empty()
                 ? c->unfit
                 : "queued, but no execution-order annotation names it"});
      }
    }
    if (!p.adopt.empty() || !p.queue.empty()) {
      plan.repositories.push_back(std::move(p));
    }
  }
  return plan;
}

}  // namespace pac::concurrency::server
