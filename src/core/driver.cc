#include "pac/concurrency/driver.h"

#include <algorithm>
#include <map>
#include <set>

#include "src/common/keys.h"
#include "src/common/strings.h"

namespace pac::concurrency {

absl::StatusOr<RepositorySnapshot> Driver::GetRepositorySnapshot(
    const Context& ctx, std::string_view repo_key) {
  RepositorySnapshot out;
  auto limit = GetRepositoryLimit(ctx, repo_key);
  if (!limit.ok()) return limit.status();
  out.limit = *limit;
  auto running = GetRunningPipelineRuns(ctx, repo_key);
  if (!running.ok()) return running.status();
  out.running = *std::move(running);
  auto queued = GetQueuedPipelineRuns(ctx, repo_key);
  if (!queued.ok()) return queued.status();
  out.queued = *std::move(queued);
  return out;
}

// One AcquireSlot per run: each is atomic and idempotent, the whole is
// not (see the declaration).
absl::StatusOr<ImportResult> Driver::ImportRuns(const Context& ctx,
                                                const Repository& repo,
                                                const ImportRequest& request) {
  if (absl::Status s = internal::ValidateImportRequest(repo, request);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  std::set<std::string> mine(request.running.begin(), request.running.end());
  for (const ImportRequest::Waiting& w : request.waiting) {
    mine.insert(w.pipeline_run_key);
  }
  ImportResult out;
  auto others = [&](std::vector<Lease>& admitted) {
    for (Lease& l : admitted) {
      if (mine.count(l.pipeline_run_key) == 0) {
        out.others_admitted.push_back(std::move(l));
      }
    }
  };
  // A limit from a manifest is recorded first; every call below then keeps
  // the recorded one (and records the repository's only if none is).
  if (request.set_limit) {
    auto admitted = SetRepositoryLimit(ctx, repo);
    if (!admitted.ok()) return admitted.status();
    others(*admitted);
  }
  // What the backend holds already: a running run keeps its lease, and in
  // a repository full of leases that cannot expire during this call a
  // queued run keeps its place, so neither is sent again (a second import
  // of the same export costs a read, not a call per run).
  auto before = GetRepositorySnapshot(ctx, repo.Key());
  if (!before.ok()) return before.status();
  const absl::Time safe = absl::Now() + absl::Seconds(5);
  // The lease each run holds, as found or given: a running run's is
  // reported even if it expired before the final read (nobody renews it
  // during an import).
  std::map<std::string, Lease> held;
  int64_t holding = 0;
  for (const Lease& l : before->running) {
    held[l.pipeline_run_key] = l;
    if (l.expires_at > safe) ++holding;
  }
  const int32_t limit = before->limit.value_or(EffectiveLimit(repo));
  std::set<std::string> queued_before;
  if (limit > 0 && holding >= limit) {
    for (const QueueEntry& q : before->queued) {
      queued_before.insert(q.pipeline_run_key);
    }
  }
  for (const std::string& run : request.running) {
    if (held.count(run) != 0) continue;
    AcquireOptions o;
    o.adopt_running = true;
    o.keep_recorded_limit = true;
    auto r = AcquireSlot(ctx, repo, run, o);
    if (!r.ok()) return r.status();
    others(r->admitted);
    held[run] = r->lease;
  }
  // Oldest first, as one step would admit them into free slots.
  std::vector<const ImportRequest::Waiting*> by_time;
  for (const ImportRequest::Waiting& w : request.waiting) by_time.push_back(&w);
  std::stable_sort(by_time.begin(), by_time.end(),
                   [](const auto* a, const auto* b) {
                     return a->creation_time < b->creation_time;
                   });
  for (const ImportRequest::Waiting* w : by_time) {
    if (held.count(w->pipeline_run_key) != 0 ||
        queued_before.count(w->pipeline_run_key) != 0) {
      continue;
    }
    AcquireOptions o;
    o.creation_time = w->creation_time;
    o.keep_recorded_limit = true;
    auto r = AcquireSlot(ctx, repo, w->pipeline_run_key, o);
    if (!r.ok()) return r.status();
    others(r->admitted);
  }
  // The leases and places, as they are after the calls.
  auto snap = GetRepositorySnapshot(ctx, repo.Key());
  if (!snap.ok()) return snap.status();
  std::map<std::string_view, const Lease*> leases;
  for (const Lease& l : snap->running) leases[l.pipeline_run_key] = &l;
  std::map<std::string_view, const QueueEntry*> places;
  for (const QueueEntry& q : snap->queued) places[q.pipeline_run_key] = &q;
  for (const std::string& run : request.running) {
    if (auto it = leases.find(run); it != leases.end()) {
      out.running.push_back(*it->second);
    } else if (auto a = held.find(run); a != held.end()) {
      out.running.push_back(a->second);
    }
  }
  for (const ImportRequest::Waiting& w : request.waiting) {
    if (auto it = leases.find(w.pipeline_run_key); it != leases.end()) {
      out.admitted.push_back(*it->second);
    } else if (auto q = places.find(w.pipeline_run_key); q != places.end()) {
      out.queued.push_back(*q->second);
    }
    // Neither: released since (another process); not reported.
  }
  return out;
}

absl::StatusOr<std::vector<RepositoryCounts>> Driver::GetRepositoryCounts(
    const Context& ctx) {
  auto repos = ListRepositories(ctx, "");
  if (!repos.ok()) return repos.status();
  std::vector<RepositoryCounts> out;
  out.reserve(repos->size());
  for (const std::string& key : *repos) {
    auto snap = GetRepositorySnapshot(ctx, key);
    if (!snap.ok()) return snap.status();
    out.push_back(RepositoryCounts{key, snap->limit,
                                   static_cast<int64_t>(snap->running.size()),
                                   static_cast<int64_t>(snap->queued.size())});
  }
  return out;
}

absl::StatusOr<std::vector<RepositoryListing>> Driver::ListRepositorySnapshots(
    const Context& ctx, std::string_view namespace_name, std::string_view after,
    size_t limit) {
  auto repos = ListRepositories(ctx, namespace_name);
  if (!repos.ok()) return repos.status();
  std::vector<RepositoryListing> out;
  for (auto it = std::upper_bound(repos->begin(), repos->end(), after);
       it != repos->end() && (limit == 0 || out.size() < limit); ++it) {
    auto snap = GetRepositorySnapshot(ctx, *it);
    if (!snap.ok()) return snap.status();
    out.push_back(RepositoryListing{*it, *std::move(snap)});
  }
  return out;
}

absl::StatusOr<ClearQueueResult> Driver::ClearQueue(const Context& ctx,
                                                    std::string_view repo_key) {
  (void)ctx;
  (void)repo_key;
  return absl::UnimplementedError(
      internal::Cat("the ", Type(), " driver cannot clear a queue"));
}

std::string_view QueueModeName(QueueMode mode) {
  switch (mode) {
    case QueueMode::kOldestFirst:
      return "oldest-first";
    case QueueMode::kNewestFirst:
      return "newest-first";
    case QueueMode::kPriority:
      return "priority";
  }
  return "oldest-first";
}

absl::StatusOr<QueueMode> ParseQueueMode(std::string_view name,
                                         std::string_view field) {
  for (QueueMode m : {QueueMode::kOldestFirst, QueueMode::kNewestFirst,
                      QueueMode::kPriority}) {
    if (name == QueueModeName(m)) return m;
  }
  return absl::InvalidArgumentError(internal::Cat(
      field, ": oldest-first, newest-first or priority (got \"", name, "\")"));
}

absl::Status Driver::SetRepositoryPolicy(const Context& ctx,
                                         std::string_view repo_key,
                                         const RepositoryPolicy& policy) {
  (void)ctx;
  (void)repo_key;
  (void)policy;
  return absl::UnimplementedError(
      internal::Cat("the ", Type(), " driver cannot record a policy"));
}

absl::StatusOr<RepositoryPolicy> Driver::GetRepositoryPolicy(
    const Context& ctx, std::string_view repo_key) {
  (void)ctx;
  (void)repo_key;
  return absl::UnimplementedError(
      internal::Cat("the ", Type(), " driver cannot record a policy"));
}

namespace {
absl::Status NoSharedLimits(std::string_view type) {
  return absl::UnimplementedError(
      internal::Cat("the ", type, " driver has no shared limits"));
}
}  // namespace

absl::Status Driver::SetSharedLimit(const Context& ctx,
                                    const SharedLimit& limit) {
  (void)ctx;
  (void)limit;
  return NoSharedLimits(Type());
}

absl::Status Driver::DeleteSharedLimit(const Context& ctx,
                                       std::string_view name) {
  (void)ctx;
  (void)name;
  return NoSharedLimits(Type());
}

absl::StatusOr<std::vector<SharedLimitStatus>> Driver::ListSharedLimits(
    const Context& ctx) {
  (void)ctx;
  return NoSharedLimits(Type());
}

absl::Status ValidateSharedLimitName(std::string_view name,
                                     std::string_view field) {
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  };
  bool ok = !name.empty() && name.size() <= 63 && alnum(name.front()) &&
            alnum(name.back());
  for (char c : name) {
    ok = ok && (alnum(c) || c == '-' || c == '.' || c == '_');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(internal::Cat(
      field,
      ": 1 to 63 lowercase letters, digits, '-', '.' or '_', starting and "
      "ending with a letter or digit (got \"",
      name, "\")"));
}

// Part by part: each atomic, the whole not (see the declaration).
absl::StatusOr<std::vector<ImportResult>> Driver::ImportBatch(
    const Context& ctx, const std::vector<RepositoryImport>& parts) {
  if (absl::Status s =
          internal::ValidateImportBatch(parts, GetImportCapacity());
      !s.ok()) {
    return s;
  }
  std::vector<ImportResult> out;
  out.reserve(parts.size());
  for (const RepositoryImport& p : parts) {
    auto r = ImportRuns(ctx, p.repository, p.request);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

}  // namespace pac::concurrency
