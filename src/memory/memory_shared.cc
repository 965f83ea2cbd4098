// The memory driver's shared limits (docs/policies.md, "Shared limits"):
// the CrossLock a step on a member takes, the admission across members
// (PromoteShared), and SetSharedLimit, DeleteSharedLimit and
// ListSharedLimits.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/memory/memory_driver.h"

namespace pac::concurrency::internal {
namespace {
thread_local bool t_cross_held = false;
}  // namespace

MemoryDriver::CrossLock::CrossLock(MemoryDriver& driver,
                                   size_t own) ABSL_NO_THREAD_SAFETY_ANALYSIS
    : driver_(driver),
      own_(own) {
  driver_.cross_mu_.Lock();
  for (size_t i = 0; i < own_ && i < kShards; ++i) {
    driver_.shards_[i].mu.Lock();
  }
  if (own_ >= kShards) rest_ = true;  // every shard is locked
  t_cross_held = true;
}

void MemoryDriver::CrossLock::LockRest() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (rest_) return;
  for (size_t i = own_ + 1; i < kShards; ++i) driver_.shards_[i].mu.Lock();
  rest_ = true;
}

MemoryDriver::CrossLock::~CrossLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  t_cross_held = false;
  if (rest_ && own_ < kShards) {
    for (size_t i = kShards; i-- > own_ + 1;) driver_.shards_[i].mu.Unlock();
  }
  for (size_t i = std::min(own_, kShards); i-- > 0;) {
    driver_.shards_[i].mu.Unlock();
  }
  driver_.cross_mu_.Unlock();
}

bool MemoryDriver::CrossHeld() { return t_cross_held; }

bool MemoryDriver::PeekMember(Shard& shard, std::string_view repo_key) {
  if (member_repos_.load(std::memory_order_acquire) == 0) return false;
  MutexLock lock(&shard.mu);
  auto rit = shard.repos.find(repo_key);
  return rit != shard.repos.end() && IsMember(rit->second);
}

namespace {
int64_t LiveLeases(const auto& running, absl::Time now) {
  int64_t n = 0;
  for (const auto& [run, rec] : running) n += rec.expires_at > now ? 1 : 0;
  return n;
}
}  // namespace

void MemoryDriver::SharedCounts(
    const std::set<std::string>& members, absl::Time now, int64_t* running,
    int64_t* queued) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  for (const std::string& key : members) {
    Shard& shard = ShardFor(key);
    if (auto rit = shard.repos.find(key); rit != shard.repos.end()) {
      *running += LiveLeases(rit->second.running, now);
      if (queued != nullptr) {
        *queued += static_cast<int64_t>(rit->second.queue.size());
      }
    }
  }
}

bool MemoryDriver::SharedFits(const RepoState& rs,
                              absl::Time now) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  for (const std::string& name : rs.policy.shared_limits) {
    auto def = shared_defs_.find(name);
    if (def == shared_defs_.end() || def->second == 0) continue;
    int64_t running = 0;
    if (auto m = shared_members_.find(name); m != shared_members_.end()) {
      SharedCounts(m->second, now, &running, nullptr);
    }
    if (running >= def->second) return false;
  }
  return true;
}

void MemoryDriver::PromoteShared(absl::Time now,
                                 Effects& fx) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  struct Member {
    Shard* shard;
    const std::string* key;
    RepoState* rs;
  };
  std::vector<Member> members;
  absl::flat_hash_set<std::string_view> seen;
  bool queued = false;
  for (const auto& [name, keys] : shared_members_) {
    for (const std::string& key : keys) {
      if (!seen.insert(key).second) continue;
      Shard& shard = ShardFor(key);
      auto rit = shard.repos.find(key);
      if (rit == shard.repos.end()) continue;
      members.push_back(Member{&shard, &rit->first, &rit->second});
      queued = queued || !rit->second.queue.empty();
    }
  }
  // Nobody queued: nothing to admit (expired leases count for nothing
  // meanwhile, and the cleanup thread reclaims them).
  if (!queued) return;
  for (const Member& m : members) Sweep(*m.shard, *m.key, *m.rs, now, fx);
  absl::flat_hash_map<std::string_view, int64_t> running;
  for (const Member& m : members) {
    for (const std::string& name : m.rs->policy.shared_limits) {
      running[name] += static_cast<int64_t>(m.rs->running.size());
    }
  }
  auto fits = [&](const RepoState& rs) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (rs.limit != 0 && static_cast<int64_t>(rs.running.size()) >= rs.limit) {
      return false;
    }
    for (const std::string& name : rs.policy.shared_limits) {
      auto def = shared_defs_.find(name);
      if (def != shared_defs_.end() && def->second != 0 &&
          running[name] >= def->second) {
        return false;
      }
    }
    return true;
  };
  // The fairness rule: of the members' heads that fit, the one queued
  // earliest (enqueue order) goes first; a head that does not fit is
  // passed over, not waited for.
  while (true) {
    const Member* best = nullptr;
    for (const Member& m : members) {
      if (m.rs->queue.empty() || !fits(*m.rs)) continue;
      if (best == nullptr || m.rs->queue.begin()->first.sequence <
                                 best->rs->queue.begin()->first.sequence) {
        best = &m;
      }
    }
    if (best == nullptr) break;
    AdmitHead(*best->shard, *best->key, *best->rs, now, fx);
    for (const std::string& name : best->rs->policy.shared_limits) {
      ++running[name];
    }
  }
}

void MemoryDriver::NoteMembership(
    const std::string& repo_key, const std::vector<std::string>& before,
    const std::vector<std::string>& after) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  for (const std::string& name : before) {
    auto it = shared_members_.find(name);
    if (it == shared_members_.end()) continue;
    it->second.erase(repo_key);
    if (it->second.empty()) shared_members_.erase(it);
  }
  for (const std::string& name : after) shared_members_[name].insert(repo_key);
  if (before.empty() != after.empty()) {
    member_repos_.fetch_add(after.empty() ? -1 : 1, std::memory_order_release);
  }
}

std::vector<Lease> MemoryDriver::SharedPass() {
  Effects fx;
  {
    CrossLock cross(*this, kShards);
    if (!closed_.load()) PromoteShared(clock_->Now(), fx);
  }
  std::vector<Lease> admitted = fx.admitted;
  Deliver(fx);
  return admitted;
}

absl::Status MemoryDriver::SetSharedLimit(const Context& ctx,
                                          const SharedLimit& limit) {
  if (absl::Status s = ValidateSharedLimit(limit); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Effects fx;
  {
    CrossLock cross(*this, kShards);
    cross_mu_.AssertHeld();
    shared_defs_[limit.name] = limit.limit;
    PromoteShared(clock_->Now(), fx);
  }
  logger_->info("shared limit {} set to {}", limit.name, limit.limit);
  Deliver(fx);
  return absl::OkStatus();
}

absl::Status MemoryDriver::DeleteSharedLimit(const Context& ctx,
                                             std::string_view name) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Effects fx;
  {
    CrossLock cross(*this, kShards);
    cross_mu_.AssertHeld();
    if (auto it = shared_defs_.find(name); it != shared_defs_.end()) {
      shared_defs_.erase(it);
      PromoteShared(clock_->Now(), fx);
    }
  }
  logger_->info("shared limit {} deleted", name);
  Deliver(fx);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SharedLimitStatus>> MemoryDriver::ListSharedLimits(
    const Context& ctx) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  std::map<std::string, SharedLimitStatus> out;
  {
    CrossLock cross(*this, kShards);
    const absl::Time now = clock_->Now();
    for (const auto& [name, limit] : shared_defs_) {
      out[name].limit = limit;
    }
    for (const auto& [name, keys] : shared_members_) {
      SharedLimitStatus& st = out[name];
      st.members.assign(keys.begin(), keys.end());
      SharedCounts(keys, now, &st.running, &st.queued);
    }
  }
  std::vector<SharedLimitStatus> list;
  for (auto& [name, st] : out) {
    st.name = name;
    list.push_back(std::move(st));
  }
  return list;
}

}  // namespace pac::concurrency::internal
