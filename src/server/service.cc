#include "src/server/service.h"

#include <deque>
#include <memory>

#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/server/auth.h"
#include "src/server/manifests.h"
#include "src/server/version.h"

namespace pac::concurrency::server {

using internal::Cat;
using internal::CondVar;
using internal::Mutex;
using internal::MutexLock;

namespace {

constexpr size_t kMaxQueuedAtEntries = 100000;
constexpr absl::Duration kWatchHeartbeat = absl::Seconds(10);

absl::StatusOr<std::optional<int32_t>> OptionalLimit(const Json& body) {
  auto it = body.find("concurrency_limit");
  if (it == body.end() || it->is_null()) return std::optional<int32_t>();
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(
        "concurrency_limit: must be an integer (0 = unlimited)");
  }
  int64_t v = it->get<int64_t>();
  if (v < 0) {
    return absl::InvalidArgumentError(
        Cat("concurrency_limit: must not be negative (got ", v, ")"));
  }
  if (v > INT32_MAX) {
    return absl::InvalidArgumentError("concurrency_limit: too large");
  }
  return std::optional<int32_t>(static_cast<int32_t>(v));
}

// What holds a queued run at `position` (docs/policies.md, "Why a run
// waits"): the repository's limit, directly or through the runs queued
// ahead of it, which are admitted first.
Json WaitingFor(int64_t position) {
  return Json{{"reason", "repository_limit"},
              {"ahead", std::max<int64_t>(0, position - 1)}};
}

Json QueueEntryToJson(const QueueEntry& q, const RepositorySnapshot& snap,
                      absl::Time now) {
  Json why = WaitingFor(q.position);
  why["limit"] = snap.limit.value_or(0);
  why["in_use"] = snap.running.size();
  return Json{{"pipeline_run", q.pipeline_run_key},
              {"position", q.position},
              {"creation_time", FormatTimestamp(q.creation_time)},
              {"enqueued_at", FormatTimestamp(q.enqueued_at)},
              {"waiting_seconds",
               std::max(0.0, absl::ToDoubleSeconds(now - q.enqueued_at))},
              {"priority", q.priority},
              {"waiting_for", std::move(why)}};
}

}  // namespace

Service::Service(Driver* driver, Clock* clock, Metrics* metrics)
    : driver_(driver),
      clock_(clock != nullptr ? clock : Clock::Real()),
      metrics_(metrics) {
  if (metrics_ == nullptr) return;
  metrics_->Describe("pac_acquire_duration_seconds", "histogram",
                     "Time to answer a submit, by outcome.");
  metrics_->Describe("pac_queue_wait_seconds", "histogram",
                     "Time a run queued through this server waited in the "
                     "queue, until admitted or removed (outcome: admitted, "
                     "cleared, superseded, timed-out).");
  metrics_->Describe("pac_admissions_total", "counter",
                     "Runs granted a slot, by how.");
  metrics_->Describe("pac_releases_total", "counter", "Slots released.");
  metrics_->Describe("pac_runs_removed_total", "counter",
                     "Runs queued through this server that left their queue "
                     "without a slot, by reason.");
  metrics_->Describe("pac_errors_total", "counter",
                     "Failed operations, by operation and code.");
  metrics_->Describe("pac_build_info", "gauge",
                     "Always 1: this build's version and its driver.");
  metrics_->Describe("pac_slots_in_use", "gauge",
                     "Unexpired leases of the repository.");
  metrics_->Describe("pac_concurrency_limit", "gauge",
                     "Recorded limit of the repository (0 = unlimited).");
  metrics_->Describe("pac_queue_depth", "gauge",
                     "Runs waiting in the repository's queue.");
  metrics_->Describe("pac_shared_limit", "gauge",
                     "A shared limit (0 = no limit; absent: never set).");
  metrics_->Describe("pac_shared_limit_in_use", "gauge",
                     "Unexpired leases of the shared limit's members.");
  metrics_->Describe("pac_shared_limit_queued", "gauge",
                     "Queued runs of the shared limit's members.");
}

void Service::CountError(const char* op, const absl::Status& s) {
  if (metrics_ != nullptr) {
    metrics_->Inc("pac_errors_total",
                  {{"code", ErrorCodeName(s)}, {"operation", op}});
  }
}

void Service::Seen(const std::string& repo_key) {
  MutexLock lock(&mu_);
  repos_.insert(repo_key);
}

void Service::NoteQueued(const std::string& repo, const std::string& run) {
  MutexLock lock(&mu_);
  if (queued_at_.size() >= kMaxQueuedAtEntries) return;
  queued_at_.emplace(std::make_pair(repo, run), clock_->Now());
}

void Service::NoteAdmitted(const std::vector<Lease>& leases, const char* how) {
  if (metrics_ == nullptr || leases.empty()) return;
  MutexLock lock(&mu_);
  for (const Lease& l : leases) {
    // A grant is counted once, however often its run re-submits.
    if (counted_.size() >= kMaxQueuedAtEntries) counted_.clear();
    if (!counted_.insert(l.lease_id).second) continue;
    auto it = queued_at_.find({l.repository_key, l.pipeline_run_key});
    const bool waited = it != queued_at_.end();
    metrics_->Inc("pac_admissions_total", {{"how", waited ? "promoted" : how}});
    if (!waited) continue;
    metrics_->Observe("pac_queue_wait_seconds", {{"outcome", "admitted"}},
                      absl::ToDoubleSeconds(l.acquired_at - it->second));
    queued_at_.erase(it);
  }
}

void Service::NoteRemoved(const std::string& repo, const std::string& run,
                          std::string_view reason) {
  if (metrics_ == nullptr) return;
  MutexLock lock(&mu_);
  // Counted once, by the server it was queued through, when it learns of
  // the removal (its own clear, or the refusal of a re-submit).
  auto it = queued_at_.find({repo, run});
  if (it == queued_at_.end()) return;
  const std::string why(reason);
  metrics_->Inc("pac_runs_removed_total", {{"reason", why}});
  metrics_->Observe("pac_queue_wait_seconds", {{"outcome", why}},
                    absl::ToDoubleSeconds(clock_->Now() - it->second));
  queued_at_.erase(it);
}

absl::StatusOr<Json> Service::SetLimitTo(const Context& ctx,
                                         const Repository& repo) {
  auto admitted = driver_->SetRepositoryLimit(ctx, repo);
  if (!admitted.ok()) {
    CountError("set_limit", admitted.status());
    return admitted.status();
  }
  Seen(repo.Key());
  NoteAdmitted(*admitted, "promoted");
  return Json{{"repository", repo.Key()},
              {"concurrency_limit", EffectiveLimit(repo)},
              {"admitted", LeasesToJson(*admitted)}};
}

absl::StatusOr<Json> Service::SetLimit(const Context& ctx,
                                       std::string_view repo_key,
                                       const Json& body) {
  if (absl::Status s = CheckFields(body, {"concurrency_limit"}); !s.ok()) {
    return s;
  }
  auto limit = OptionalLimit(body);
  if (!limit.ok()) return limit.status();
  if (!limit->has_value()) {
    return absl::InvalidArgumentError(
        "concurrency_limit: required (0 = unlimited)");
  }
  auto repo = Repository::FromKey(repo_key, **limit);
  if (!repo.ok()) return repo.status();
  return SetLimitTo(ctx, *repo);
}

absl::StatusOr<Json> Service::ApplyManifests(const Context& ctx,
                                             std::string_view yaml) {
  std::vector<SharedLimitsNote> shared;
  auto repos = ParseRepositoryManifests(yaml, &shared);
  if (!repos.ok()) return repos.status();
  Json out = Json::array();
  for (const Repository& r : *repos) {
    auto one = SetLimitTo(ctx, r);
    if (!one.ok()) return one.status();
    out.push_back(*one);
  }
  // The shared-limits annotation replaces the repository's membership
  // (the rest of its policy stays); without it, membership is left alone.
  for (const SharedLimitsNote& note : shared) {
    auto p = SetPolicy(ctx, note.repository_key,
                       Json{{"shared_limits", note.names}});
    if (!p.ok()) return p.status();
    for (Json& one : out) {
      if (one["repository"] == note.repository_key) {
        one["shared_limits"] = (*p)["shared_limits"];
      }
    }
  }
  return Json{{"repositories", out}};
}

absl::StatusOr<Json> Service::Submit(const Context& ctx,
                                     std::string_view repo_key,
                                     const Json& body) {
  if (absl::Status s = CheckFields(
          body, {"pipeline_run", "creation_time", "enqueue",
                 "concurrency_limit", "state", "group", "max_queue_seconds",
                 "priority", "cancel_running"});
      !s.ok()) {
    return s;
  }
  auto run_it = body.find("pipeline_run");
  if (run_it == body.end() || !run_it->is_string()) {
    return absl::InvalidArgumentError(
        "pipeline_run: required string \"namespace/name\"");
  }
  const std::string run = run_it->get<std::string>();
  if (absl::Status s = ValidateKey(run, "pipeline_run"); !s.ok()) return s;
  auto limit = OptionalLimit(body);
  if (!limit.ok()) return limit.status();
  AcquireOptions options;
  if (auto it = body.find("creation_time");
      it != body.end() && !it->is_null()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          "creation_time: must be an RFC 3339 string");
    }
    auto t = ParseTimestamp(it->get<std::string>(), "creation_time");
    if (!t.ok()) return t.status();
    options.creation_time = *t;
  }
  if (auto it = body.find("enqueue"); it != body.end()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError("enqueue: must be true or false");
    }
    options.enqueue = it->get<bool>();
  }
  if (auto it = body.find("group"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(
          "group: must be a string (a supersede group)");
    }
    options.group = it->get<std::string>();
    if (absl::Status s = internal::ValidateAcquireOptions(options); !s.ok()) {
      return s;
    }
  }
  if (auto it = body.find("max_queue_seconds"); it != body.end()) {
    auto d = ParseQueueSeconds(*it, "max_queue_seconds");
    if (!d.ok()) return d.status();
    options.max_queue_time = *d;
  }
  if (auto it = body.find("cancel_running"); it != body.end()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(
          "cancel_running: must be true or false");
    }
    options.cancel_running = it->get<bool>();
    if (absl::Status s = internal::ValidateAcquireOptions(options); !s.ok()) {
      return s;
    }
  }
  if (auto it = body.find("priority"); it != body.end() && !it->is_null()) {
    auto priority = ParsePriority(*it, "priority");
    if (!priority.ok()) return priority.status();
    options.priority = *priority;
  }
  if (auto it = body.find("state"); it != body.end()) {
    if (!it->is_string() || (*it != "started" && *it != "queued")) {
      return absl::InvalidArgumentError(
          "state: must be \"started\" (adopt a running run) or \"queued\"");
    }
    options.adopt_running = *it == "started";
  }
  auto repo = Repository::FromKey(repo_key, limit->value_or(0));
  if (!repo.ok()) return repo.status();
  if (!limit->has_value()) {
    // Keep the limit the backend knows (set by another server, perhaps).
    auto recorded = driver_->GetRepositoryLimit(ctx, repo_key);
    if (!recorded.ok()) {
      CountError("submit", recorded.status());
      return recorded.status();
    }
    if (!recorded->has_value()) {
      return absl::FailedPreconditionError(
          Cat("repository ", repo_key,
              " has no recorded concurrency limit: pass concurrency_limit "
              "(0 = unlimited) or set it first (PUT /v1/repositories/",
              repo_key, ")"));
    }
    repo->concurrency_limit = **recorded;
    // Admit under the limit recorded when the acquire runs: another server
    // may change it after this read, which must not be written back.
    options.keep_recorded_limit = true;
  }
  const absl::Time start = absl::Now();
  auto r = driver_->AcquireSlot(ctx, *repo, run, options);
  const double took = absl::ToDoubleSeconds(absl::Now() - start);
  if (!r.ok()) {
    if (IsRunRemoved(r.status())) {
      NoteRemoved(std::string(repo_key), run, RunRemovedReason(r.status()));
    }
    CountError("submit", r.status());
    if (metrics_ != nullptr) {
      metrics_->Observe("pac_acquire_duration_seconds", {{"outcome", "error"}},
                        took);
    }
    return r.status();
  }
  const std::string key(repo_key);
  Seen(key);
  if (metrics_ != nullptr) {
    metrics_->Observe("pac_acquire_duration_seconds",
                      {{"outcome", r->acquired ? "acquired" : "queued"}}, took);
  }
  NoteAdmitted(r->admitted, "promoted");
  Json out{{"repository", key},
           {"pipeline_run", run},
           {"acquired", r->acquired},
           {"position", r->position},
           {"admitted", LeasesToJson(r->admitted)}};
  if (r->acquired) {
    out["lease"] = LeaseToJson(r->lease);
    NoteAdmitted({r->lease}, "immediate");
  } else if (r->position > 0) {
    out["waiting_for"] = WaitingFor(r->position);
    if (std::optional<Json> hold = SharedHold(ctx, key, nullptr)) {
      (*hold)["ahead"] = out["waiting_for"]["ahead"];
      out["waiting_for"] = *std::move(hold);
    }
    NoteQueued(key, run);
  }
  return out;
}

absl::StatusOr<Json> Service::Release(const Context& ctx,
                                      std::string_view repo_key,
                                      std::string_view run_key,
                                      std::string_view lease_id) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  auto r = driver_->ReleaseSlot(ctx, lease_id, run_key, repo_key);
  if (!r.ok()) {
    CountError("release", r.status());
    return r.status();
  }
  if (metrics_ != nullptr && r->released) {
    metrics_->Inc("pac_releases_total", {});
  }
  {
    MutexLock lock(&mu_);
    queued_at_.erase({std::string(repo_key), std::string(run_key)});
  }
  NoteAdmitted(r->admitted, "promoted");
  return Json{{"repository", std::string(repo_key)},
              {"pipeline_run", std::string(run_key)},
              {"released", r->released},
              {"dequeued", r->dequeued},
              {"admitted", LeasesToJson(r->admitted)}};
}

absl::StatusOr<Json> Service::Renew(const Context& ctx,
                                    std::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError("lease_id: required");
  }
  auto l = driver_->RenewLease(ctx, lease_id);
  if (!l.ok()) {
    CountError("renew", l.status());
    return l.status();
  }
  return LeaseToJson(*l);
}

namespace {

// A repository's status answer (GET /v1/repositories/{ns}/{name}).
Json StatusJson(std::string_view repo_key, const RepositorySnapshot& snap,
                absl::Time now) {
  Json run_list = Json::array();
  for (const Lease& l : snap.running) {
    Json j = LeaseToJson(l);
    j["running_seconds"] =
        std::max(0.0, absl::ToDoubleSeconds(now - l.acquired_at));
    run_list.push_back(std::move(j));
  }
  Json queue_list = Json::array();
  for (const QueueEntry& q : snap.queued) {
    queue_list.push_back(QueueEntryToJson(q, snap, now));
  }
  Json out{{"repository", std::string(repo_key)},
           {"concurrency_limit", nullptr},
           {"in_use", snap.running.size()},
           {"queue_depth", snap.queued.size()},
           {"queue_mode", QueueModeName(snap.mode)},
           {"running", std::move(run_list)},
           {"queued", std::move(queue_list)}};
  if (snap.limit.has_value()) out["concurrency_limit"] = *snap.limit;
  return out;
}

}  // namespace

absl::StatusOr<Json> Service::Status(const Context& ctx,
                                     std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  // One consistent state: a run handed a slot between separate reads would
  // show in both lists or in neither.
  auto snap = driver_->GetRepositorySnapshot(ctx, repo_key);
  if (!snap.ok()) return snap.status();
  Json out = StatusJson(repo_key, *snap, clock_->Now());
  MarkSharedHold(ctx, repo_key, *snap, out, nullptr);
  return out;
}

absl::StatusOr<Json> Service::ListRepositories(const Context& ctx,
                                               std::string_view namespace_name,
                                               const ListPage& page) {
  if (page.limit > ListPage::kMaxLimit) {
    return absl::InvalidArgumentError(
        Cat("limit: at most ", ListPage::kMaxLimit));
  }
  if (!page.after.empty()) {
    if (absl::Status s = ValidateKey(page.after, "after"); !s.ok()) return s;
  }
  const Principal who{Role::kRead, page.namespaces};
  auto visible = [&](const std::string& key) {
    return who.AllowsNamespace(std::string_view(key).substr(0, key.find('/')));
  };
  // Pages of the backend's listing with their snapshots (one more than
  // asked, to know whether more follow), until the page is full of
  // repositories the caller may see.
  const size_t ask = page.limit == 0 ? 0 : page.limit + 1;
  const absl::Time now = clock_->Now();
  Json out = Json::array();
  std::string cursor = page.after, last;
  bool more = false;
  // Read once, if a repository with a queue and a free slot of its own
  // asks for them (a full shared limit may hold its runs).
  SharedReads shared;
  while (!more) {
    auto part =
        driver_->ListRepositorySnapshots(ctx, namespace_name, cursor, ask);
    if (!part.ok()) {
      CountError("list", part.status());
      return part.status();
    }
    for (const RepositoryListing& r : *part) {
      cursor = r.repository_key;
      if (!visible(r.repository_key)) continue;
      if (page.limit > 0 && out.size() == page.limit) {
        more = true;
        break;
      }
      out.push_back(StatusJson(r.repository_key, r.snapshot, now));
      MarkSharedHold(ctx, r.repository_key, r.snapshot, out.back(), &shared);
      last = r.repository_key;
    }
    if (ask == 0 || part->size() < ask) break;
  }
  Json answer = {{"repositories", std::move(out)}};
  if (more) answer["next"] = last;
  return answer;
}

absl::StatusOr<Json> Service::Version(const Context& ctx) {
  return Json{{"version", std::string(server::Version())},
              {"driver", std::string(driver_->Type())}};
}

absl::StatusOr<Json> Service::SetState(const Context& ctx, StateOf of,
                                       std::string_view key, const Json& body) {
  const char* field = StateKeyField(of);
  if (absl::Status s = ValidateKey(key, field); !s.ok()) return s;
  if (absl::Status s = CheckFields(body, {"state"}); !s.ok()) return s;
  auto it = body.find("state");
  if (it == body.end() || !it->is_string()) {
    return absl::InvalidArgumentError("state: required, a string");
  }
  const std::string state = it->get<std::string>();
  absl::Status s;
  if (of == StateOf::kRepository) {
    auto repo = Repository::FromKey(key);
    if (!repo.ok()) return repo.status();
    s = driver_->SetRepositoryState(ctx, *repo, state);
  } else {
    s = driver_->SetPipelineRunState(ctx, key, state);
  }
  if (!s.ok()) {
    CountError("set_state", s);
    return s;
  }
  return Json{{field, std::string(key)}, {"state", state}};
}

absl::StatusOr<Json> Service::GetState(const Context& ctx, StateOf of,
                                       std::string_view key) {
  const char* field = StateKeyField(of);
  if (absl::Status s = ValidateKey(key, field); !s.ok()) return s;
  absl::StatusOr<std::string> state =
      of == StateOf::kRepository ? driver_->GetRepositoryState(ctx, key)
                                 : driver_->GetPipelineRunState(ctx, key);
  if (!state.ok()) {
    if (!absl::IsNotFound(state.status()))
      CountError("get_state", state.status());
    return state.status();
  }
  return Json{{field, std::string(key)}, {"state", *state}};
}

absl::StatusOr<Json> Service::ClearQueue(const Context& ctx,
                                         std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = driver_->ClearQueue(ctx, repo_key);
  if (!r.ok()) {
    CountError("clear_queue", r.status());
    return r.status();
  }
  const std::string repo(repo_key);
  for (const std::string& run : r->removed) {
    NoteRemoved(repo, run, kRemovedCleared);
  }
  return Json{{"repository", std::string(repo_key)}, {"removed", r->removed}};
}

absl::StatusOr<Json> Service::SetPolicy(const Context& ctx,
                                        std::string_view repo_key,
                                        const Json& body) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = CheckFields(
          body, {"max_queue_seconds", "queue_mode", "shared_limits"});
      !s.ok()) {
    return s;
  }
  // Fields left out keep their recorded values; null sets the default.
  auto recorded = driver_->GetRepositoryPolicy(ctx, repo_key);
  if (!recorded.ok()) {
    CountError("set_policy", recorded.status());
    return recorded.status();
  }
  RepositoryPolicy policy = *recorded;
  if (auto it = body.find("max_queue_seconds"); it != body.end()) {
    auto d = ParseQueueSeconds(*it, "max_queue_seconds");
    if (!d.ok()) return d.status();
    policy.max_queue_time = *d;
  }
  if (auto it = body.find("queue_mode"); it != body.end()) {
    if (it->is_null()) {
      policy.mode = QueueMode::kOldestFirst;
    } else if (!it->is_string()) {
      return absl::InvalidArgumentError(
          "queue_mode: oldest-first, newest-first or priority");
    } else {
      auto mode = ParseQueueMode(it->get<std::string>(), "queue_mode");
      if (!mode.ok()) return mode.status();
      policy.mode = *mode;
    }
  }
  if (auto it = body.find("shared_limits"); it != body.end()) {
    auto names = ParseSharedLimitNames(*it);
    if (!names.ok()) return names.status();
    policy.shared_limits = *std::move(names);
  }
  if (absl::Status s = driver_->SetRepositoryPolicy(ctx, repo_key, policy);
      !s.ok()) {
    CountError("set_policy", s);
    return s;
  }
  return PolicyToJson(repo_key, policy);
}

absl::StatusOr<Json> Service::GetPolicy(const Context& ctx,
                                        std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto policy = driver_->GetRepositoryPolicy(ctx, repo_key);
  if (!policy.ok()) {
    CountError("get_policy", policy.status());
    return policy.status();
  }
  return PolicyToJson(repo_key, *policy);
}

absl::StatusOr<Json> Service::Cleanup(const Context& ctx,
                                      std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = driver_->CleanupRepository(ctx, repo_key); !s.ok()) {
    CountError("cleanup", s);
    return s;
  }
  MutexLock lock(&mu_);
  repos_.erase(std::string(repo_key));
  return Json{{"repository", std::string(repo_key)}, {"cleaned", true}};
}

absl::Status Service::Watch(const Context& ctx, std::string_view repo_key,
                            const std::function<bool(const Json&)>& on_event,
                            const std::function<bool()>& on_ready) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  struct Shared {
    Mutex mu;
    CondVar cv;
    std::deque<WatchEvent> events PAC_GUARDED_BY(mu);
    bool cancelled PAC_GUARDED_BY(mu) = false;
  };
  auto shared = std::make_shared<Shared>();
  auto handle = driver_->WatchSlotAvailability(
      ctx, repo_key, [shared](const WatchEvent& ev) {
        {
          MutexLock lock(&shared->mu);
          if (shared->events.size() < 10000) shared->events.push_back(ev);
        }
        shared->cv.NotifyAll();
      });
  if (!handle.ok()) return handle.status();
  int64_t cb = ctx.AddCancelCallback([shared] {
    {
      MutexLock lock(&shared->mu);
      shared->cancelled = true;
    }
    shared->cv.NotifyAll();
  });
  absl::Status result = absl::OkStatus();
  absl::Time last_sent = absl::Now();
  bool more = !on_ready || on_ready();
  while (more) {
    std::deque<WatchEvent> batch;
    {
      MutexLock lock(&shared->mu);
      while (shared->events.empty() && !shared->cancelled &&
             absl::Now() < ctx.deadline() &&
             absl::Now() < last_sent + kWatchHeartbeat) {
        shared->cv.WaitUntil(
            &shared->mu, std::min(ctx.deadline(), last_sent + kWatchHeartbeat));
      }
      batch.swap(shared->events);
    }
    if (batch.empty() && absl::Now() >= last_sent + kWatchHeartbeat &&
        ctx.Err().ok()) {
      last_sent = absl::Now();
      if (!on_event(Json())) break;  // the heartbeat found the reader gone
      continue;
    }
    if (!batch.empty()) last_sent = absl::Now();
    bool stop = false;
    for (const WatchEvent& ev : batch) {
      Json j{{"type", WatchEventTypeName(ev.type)},
             {"repository", ev.repository_key},
             {"pipeline_run", ev.pipeline_run_key}};
      if (ev.type == WatchEventType::kRemoved) j["reason"] = ev.reason;
      if (!on_event(j)) {
        stop = true;
        break;
      }
    }
    if (stop) break;
    if (absl::Status s = ctx.Err(); !s.ok()) {
      result = s;
      break;
    }
  }
  ctx.RemoveCancelCallback(cb);
  (*handle)->Stop();
  return result;
}

std::vector<Metrics::Gauge> Service::Gauges(const Context& ctx) {
  std::set<std::string> repos;
  {
    MutexLock lock(&mu_);
    repos = repos_;
  }
  // Every repository the backend holds (one read of all their sizes),
  // and those this service has seen that it no longer holds, at zero.
  std::vector<Metrics::Gauge> in_use, limit, depth;
  // (The backend unreachable: no repository gauges, rather than zeros.)
  std::vector<RepositoryCounts> all;
  if (auto counts = driver_->GetRepositoryCounts(ctx); counts.ok()) {
    all = *std::move(counts);
    std::set<std::string> held;
    for (const RepositoryCounts& c : all) held.insert(c.repository_key);
    for (const std::string& r : repos) {
      if (held.count(r) == 0) all.push_back({r, {}, 0, 0});
    }
  } else {
    CountError("metrics", counts.status());
  }
  for (const RepositoryCounts& c : all) {
    Labels labels{{"repository", c.repository_key}};
    in_use.push_back(
        {"pac_slots_in_use", labels, static_cast<double>(c.running)});
    if (c.limit.has_value()) {
      limit.push_back(
          {"pac_concurrency_limit", labels, static_cast<double>(*c.limit)});
    }
    depth.push_back({"pac_queue_depth", labels, static_cast<double>(c.queued)});
  }
  std::vector<Metrics::Gauge> out;
  out.push_back({"pac_build_info",
                 {{"driver", std::string(driver_->Type())},
                  {"version", std::string(server::Version())}},
                 1});
  for (auto* v : {&in_use, &limit, &depth}) {
    out.insert(out.end(), v->begin(), v->end());
  }
  // Shared limits, where the backend has them (one read).
  if (auto shared = driver_->ListSharedLimits(ctx); shared.ok()) {
    for (const SharedLimitStatus& st : *shared) {
      Labels labels{{"shared_limit", st.name}};
      if (st.limit.has_value()) {
        out.push_back(
            {"pac_shared_limit", labels, static_cast<double>(*st.limit)});
      }
      out.push_back(
          {"pac_shared_limit_in_use", labels, static_cast<double>(st.running)});
      out.push_back(
          {"pac_shared_limit_queued", labels, static_cast<double>(st.queued)});
    }
  } else if (!absl::IsUnimplemented(shared.status())) {
    CountError("metrics", shared.status());
  }
  return out;
}

absl::Status Service::Ready(const Context& ctx) {
  // A probe answers within a second whatever the backend does: a driver
  // retries an unreachable backend until its call's deadline, which for a
  // request is --request-timeout (30 s).
  Context probe = Context::WithTimeout(ctx, kReadyTimeout);
  auto r = driver_->GetRepositoryLimit(probe, "pac-system/readiness-probe");
  return r.ok() ? absl::OkStatus() : r.status();
}

}  // namespace pac::concurrency::server
