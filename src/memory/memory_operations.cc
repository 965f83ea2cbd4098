// The memory driver's operator actions: ClearQueue, CleanupRepository, and
// the free-form states of repositories and runs. Admission, release and the
// reads are in memory_driver.cc.
#include <string>
#include <vector>

#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/memory/memory_driver.h"

namespace pac::concurrency::internal {

absl::StatusOr<ClearQueueResult> MemoryDriver::ClearQueue(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Shard& shard = ShardFor(repo_key);
  ClearQueueResult out;
  Effects fx;
  {
    MutexLock lock(&shard.mu);
    auto rit = shard.repos.find(repo_key);
    if (rit == shard.repos.end()) return out;
    const std::string& repo = rit->first;
    RepoState& rs = rit->second;
    for (auto& [qk, rec] : rs.queue) {
      rs.removed[rec.run_key] = std::string(kRemovedCleared);
      AddEvent(shard, repo, WatchEventType::kRemoved, rec.run_key, fx,
               kRemovedCleared);
      out.removed.push_back(std::move(rec.run_key));
    }
    rs.queue.clear();
    rs.queued.clear();
  }
  logger_->info("cleared the queue of {} ({} runs removed)", repo_key,
                out.removed.size());
  Deliver(fx);
  return out;
}

absl::Status MemoryDriver::SetRepositoryPolicy(const Context& ctx,
                                               std::string_view repo_key,
                                               const RepositoryPolicy& policy) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  Shard& shard = ShardFor(repo_key);
  Effects fx;
  {
    // Membership may change: under a CrossLock (rare, and it admits across
    // the members when it frees or takes room).
    CrossLock cross(*this, ShardIndex(repo_key));
    MutexLock lock(&shard.mu);
    cross.LockRest();
    auto rit = shard.repos.try_emplace(repo_key).first;
    RepoState& rs = rit->second;
    const bool reorder = rs.policy.mode != policy.mode;
    const bool membership = rs.policy.shared_limits != policy.shared_limits;
    if (membership) {
      NoteMembership(rit->first, rs.policy.shared_limits, policy.shared_limits);
    }
    rs.policy = policy;
    if (reorder) Reorder(rs);  // the new order, in this step
    NoteDeadlines(rs, fx);
    // Live: runs queued longer than a shortened limit leave now.
    Sweep(shard, rit->first, rs, now, fx);
    Promote(shard, rit->first, rs, now, fx);
    // Leaving a shared limit frees its room for the other members.
    if (membership && !IsMember(rs)) PromoteShared(now, fx);
  }
  logger_->info("policy of {} recorded (max queue time {}, {})", repo_key,
                policy.max_queue_time.has_value()
                    ? absl::FormatDuration(*policy.max_queue_time)
                    : "none",
                QueueModeName(policy.mode));
  Deliver(fx);
  return absl::OkStatus();
}

absl::StatusOr<RepositoryPolicy> MemoryDriver::GetRepositoryPolicy(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Shard& shard = ShardFor(repo_key);
  MutexLock lock(&shard.mu);
  auto it = shard.repos.find(repo_key);
  if (it == shard.repos.end()) return RepositoryPolicy{};
  return it->second.policy;
}

absl::Status MemoryDriver::SetRepositoryState(const Context& ctx,
                                              const Repository& repo,
                                              std::string_view state) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ValidateState(state); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string key = repo.Key();
  Shard& shard = ShardFor(key);
  MutexLock lock(&shard.mu);
  shard.repos[key].state = std::string(state);
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemoryDriver::GetRepositoryState(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Shard& shard = ShardFor(repo_key);
  MutexLock lock(&shard.mu);
  auto it = shard.repos.find(repo_key);
  if (it == shard.repos.end() || !it->second.state.has_value()) {
    return absl::NotFoundError(
        internal::Cat("repository ", repo_key, " has no state"));
  }
  return *it->second.state;
}

absl::Status MemoryDriver::SetPipelineRunState(const Context& ctx,
                                               std::string_view run_key,
                                               std::string_view state) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ValidateState(state); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  MutexLock lock(&states_mu_);
  run_states_[run_key] = std::string(state);
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemoryDriver::GetPipelineRunState(
    const Context& ctx, std::string_view run_key) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  MutexLock lock(&states_mu_);
  auto it = run_states_.find(run_key);
  if (it == run_states_.end()) {
    return absl::NotFoundError(
        internal::Cat("pipeline run ", run_key, " has no state"));
  }
  return it->second;
}

absl::Status MemoryDriver::CleanupRepository(const Context& ctx,
                                             std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Shard& shard = ShardFor(repo_key);
  Effects fx;
  std::vector<std::string> runs;
  {
    // A member's policy goes, and its slots free for the other members:
    // under a CrossLock (a cleanup is rare).
    CrossLock cross(*this, ShardIndex(repo_key));
    MutexLock lock(&shard.mu);
    cross.LockRest();
    auto rit = shard.repos.find(repo_key);
    bool was_member = false;
    if (rit != shard.repos.end() && IsMember(rit->second)) {
      was_member = true;
      NoteMembership(rit->first, rit->second.policy.shared_limits, {});
    }
    if (rit != shard.repos.end()) {
      for (const auto& [run, rec] : rit->second.running) {
        shard.leases.erase(rec.lease_id);
        runs.push_back(run);
      }
      for (const auto& [qk, rec] : rit->second.queue)
        runs.push_back(rec.run_key);
      for (const auto& [run, reason] : rit->second.removed) runs.push_back(run);
      shard.repos.erase(rit);
    }
    if (was_member) PromoteShared(clock_->Now(), fx);
    AddEvent(shard, std::string(repo_key), WatchEventType::kCleaned, "", fx);
  }
  {
    MutexLock lock(&states_mu_);
    for (const std::string& run : runs) run_states_.erase(run);
  }
  logger_->info("cleaned up repository {} ({} runs removed)", repo_key,
                runs.size());
  Deliver(fx);
  return absl::OkStatus();
}

}  // namespace pac::concurrency::internal
