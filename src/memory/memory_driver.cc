#include "src/memory/memory_driver.h"

#include <algorithm>
#include <charconv>
#include <random>
#include <set>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"

namespace pac::concurrency::internal {
namespace {

// "m" and six hex digits, distinct for every driver in this process and
// unlikely to repeat across restarts, so a stale id from an earlier process
// is unknown rather than someone else's lease. Short ids stay within the
// small-string buffer: no allocation per grant.
std::string InstancePrefix() {
  static std::atomic<uint32_t> next{std::random_device{}()};
  uint32_t instance = next.fetch_add(1) & 0xffffff;
  return absl::StrFormat("m%06x", instance);
}

constexpr char kHex[] = "0123456789abcdef";

int64_t ToNanos(absl::Time t) {
  if (t == absl::InfiniteFuture()) return INT64_MAX;
  return absl::ToUnixNanos(t);
}

}  // namespace

MemoryDriver::MemoryDriver(const MemoryConfig& config,
                           const DriverOptions& options)
    : ttl_(config.lease_ttl),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      logger_(OrNullLogger(options.logger)),
      id_prefix_(InstancePrefix()) {
  if (options.background_cleanup) {
    clock_listener_ = clock_->AddAdvanceListener([this] {
      {
        MutexLock lock(&cleanup_mu_);
        cleanup_kick_ = true;
      }
      cleanup_cv_.NotifyAll();
    });
    cleanup_thread_ = std::thread([this] { CleanupLoop(); });
  }
  logger_->info("memory driver started (lease ttl {})",
                absl::FormatDuration(ttl_));
}

MemoryDriver::~MemoryDriver() { (void)Close(); }

absl::Status MemoryDriver::Close() {
  if (closed_.exchange(true)) return absl::OkStatus();
  if (clock_listener_ != 0) clock_->RemoveAdvanceListener(clock_listener_);
  {
    MutexLock lock(&cleanup_mu_);
    cleanup_stop_ = true;
  }
  cleanup_cv_.NotifyAll();
  if (cleanup_thread_.joinable()) cleanup_thread_.join();
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    for (auto& [repo, list] : shard.watchers) {
      for (auto& w : list) w->stopped.store(true);
    }
    shard.watchers.clear();
  }
  dispatcher_.Shutdown();
  logger_->info("memory driver closed");
  return absl::OkStatus();
}

absl::Status MemoryDriver::CheckOpen() const {
  if (closed_.load(std::memory_order_relaxed)) {
    return absl::FailedPreconditionError("memory driver is closed");
  }
  return absl::OkStatus();
}

size_t MemoryDriver::ShardIndex(std::string_view repo_key) const {
  return (ViewHash{}(repo_key) >> 40) % kShards;
}

int MemoryDriver::ShardOfLease(std::string_view lease_id) const {
  if (lease_id.size() < id_prefix_.size() + 2 ||
      lease_id.substr(0, id_prefix_.size()) != id_prefix_) {
    return -1;
  }
  char c = lease_id[id_prefix_.size()];
  int shard = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                       : -1;
  if (shard < 0 || static_cast<size_t>(shard) >= kShards) return -1;
  return shard;
}

Lease MemoryDriver::MakeLease(const std::string& repo_key,
                              const std::string& run_key,
                              const LeaseRec& rec) const {
  return Lease{rec.lease_id,        repo_key,       run_key,
               rec.acquired_at,     rec.expires_at, rec.token,
               rec.cancel_requested};
}

void MemoryDriver::NoteExpiry(absl::Time expires_at) {
  int64_t nanos = ToNanos(expires_at);
  int64_t cur = next_wake_nanos_.load(std::memory_order_relaxed);
  bool lowered = false;
  while (nanos < cur) {
    if (next_wake_nanos_.compare_exchange_weak(cur, nanos)) {
      lowered = true;
      break;
    }
  }
  if (lowered) {
    {
      MutexLock lock(&cleanup_mu_);
      cleanup_kick_ = true;
    }
    cleanup_cv_.NotifyAll();
  }
}

MemoryDriver::LeaseRec& MemoryDriver::Grant(Shard& shard,
                                            const std::string& repo_key,
                                            RepoState& rs,
                                            const std::string& run_key,
                                            absl::Time now, std::string group) {
  size_t index = &shard - shards_.data();
  // "<prefix><shard hex digit><counter hex>", by hand: this is the hot path.
  static_assert(kShards <= 16);
  char buf[24];
  buf[0] = kHex[index];
  char* end =
      std::to_chars(buf + 1, buf + sizeof(buf), ++shard.next_lease, 16).ptr;
  std::string id;
  id.reserve(id_prefix_.size() + (end - buf));
  id.append(id_prefix_).append(buf, end - buf);
  LeaseRec rec{id, now, now + ttl_,
               next_token_.fetch_add(1, std::memory_order_relaxed),
               std::move(group)};
  shard.leases.emplace(std::move(id), LeaseLoc{repo_key, run_key});
  rs.earliest_expiry = std::min(rs.earliest_expiry, rec.expires_at);
  auto [it, inserted] = rs.running.insert_or_assign(run_key, std::move(rec));
  return it->second;
}

void MemoryDriver::RemoveLease(Shard& shard, const std::string& repo_key,
                               RepoState& rs, const std::string& run_key) {
  (void)repo_key;
  auto it = rs.running.find(run_key);
  if (it == rs.running.end()) return;
  shard.leases.erase(it->second.lease_id);
  rs.running.erase(it);
}

void MemoryDriver::AddEvent(Shard& shard, const std::string& repo_key,
                            WatchEventType type, const std::string& run_key,
                            Effects& fx, std::string_view reason) {
  if (shard.watchers.empty()) return;
  auto it = shard.watchers.find(repo_key);
  if (it == shard.watchers.end()) return;
  for (const auto& w : it->second) {
    fx.events.emplace_back(
        w, WatchEvent{type, repo_key, run_key, std::string(reason)});
  }
}

void MemoryDriver::Sweep(Shard& shard, const std::string& repo_key,
                         RepoState& rs, absl::Time now, Effects& fx) {
  TimeOut(shard, repo_key, rs, now, fx);
  SweepLeases(shard, repo_key, rs, now, fx);
}

void MemoryDriver::SweepLeases(Shard& shard, const std::string& repo_key,
                               RepoState& rs, absl::Time now, Effects& fx) {
  if (now < rs.earliest_expiry) return;
  absl::Time earliest = absl::InfiniteFuture();
  std::vector<std::string> expired;
  for (const auto& [run, rec] : rs.running) {
    if (rec.expires_at <= now) {
      expired.push_back(run);
    } else {
      earliest = std::min(earliest, rec.expires_at);
    }
  }
  rs.earliest_expiry = earliest;
  for (const std::string& run : expired) {
    logger_->info("lease of {} in {} expired; slot freed", run, repo_key);
    RemoveLease(shard, repo_key, rs, run);
    AddEvent(shard, repo_key, WatchEventType::kExpired, run, fx);
  }
}

MemoryDriver::RepoState& MemoryDriver::Enter(Shard& shard,
                                             const std::string& repo_key,
                                             int32_t limit, bool keep_recorded,
                                             absl::Time now, Effects& fx) {
  RepoState& rs = shard.repos.try_emplace(repo_key).first->second;
  if (keep_recorded && rs.limit_recorded) limit = rs.limit;
  rs.limit_recorded = true;
  if (rs.limit != limit) {
    rs.limit = limit;
    AddEvent(shard, repo_key, WatchEventType::kLimitChanged, "", fx);
  }
  Sweep(shard, repo_key, rs, now, fx);
  Promote(shard, repo_key, rs, now, fx);
  return rs;
}

void MemoryDriver::Promote(Shard& shard, const std::string& repo_key,
                           RepoState& rs, absl::Time now, Effects& fx) {
  if (IsMember(rs)) {
    if (CrossHeld()) {
      PromoteShared(now, fx);
    } else {
      fx.shared_pass = true;
    }
    return;
  }
  while (
      !rs.queue.empty() &&
      (rs.limit == 0 || static_cast<int64_t>(rs.running.size()) < rs.limit)) {
    AdmitHead(shard, repo_key, rs, now, fx);
  }
}

void MemoryDriver::AdmitHead(Shard& shard, const std::string& repo_key,
                             RepoState& rs, absl::Time now, Effects& fx) {
  auto head = rs.queue.begin();
  std::string run = std::move(head->second.run_key);
  std::string group = std::move(head->second.group);
  rs.queue.erase(head);
  rs.queued.erase(run);
  LeaseRec& rec = Grant(shard, repo_key, rs, run, now, std::move(group));
  logger_->info("admitted {} from the queue of {} (token {})", run, repo_key,
                rec.token);
  fx.admitted.push_back(MakeLease(repo_key, run, rec));
  AddEvent(shard, repo_key, WatchEventType::kAdmitted, run, fx);
}

int64_t MemoryDriver::PositionOf(const RepoState& rs,
                                 const QueueKey& key) const {
  int64_t pos = 1;
  for (auto it = rs.queue.begin(); it != rs.queue.end() && it->first < key;
       ++it) {
    ++pos;
  }
  return pos;
}

void MemoryDriver::Deliver(Effects& fx) {
  if (fx.wake != absl::InfiniteFuture()) NoteExpiry(fx.wake);
  if (!fx.admitted.empty()) {
    for (const Lease& l : fx.admitted) NoteExpiry(l.expires_at);
  }
  if (!fx.events.empty()) dispatcher_.Post(std::move(fx.events));
  if (fx.shared_pass) {
    fx.shared_pass = false;
    fx.shared_admitted = SharedPass();
  }
}

absl::StatusOr<AcquireResult> MemoryDriver::AcquireSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key,
    const AcquireOptions& options) {
  const std::string repo_key = repo.Key();
  if (EffectiveLimit(repo) < 0 || !ValidateKey(repo_key, "repository").ok()) {
    return ValidateRepository(repo);  // says what is wrong
  }
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ValidateAcquireOptions(options); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;

  int32_t limit = EffectiveLimit(repo);
  const absl::Time now = clock_->Now();
  Shard& shard = ShardFor(repo_key);
  AcquireResult result;
  Effects fx;
  bool granted_now = false;
  bool fresh = false;    // this call queued the run or granted it a slot
  absl::Status refused;  // superseded
  // A member of a shared limit is granted a slot only under a CrossLock
  // (SharedFits): a step that finds its repository one without it starts
  // again with it.
  for (bool cross = PeekMember(shard, repo_key);; cross = true) {
    std::optional<CrossLock> cross_lock;
    if (cross) cross_lock.emplace(*this, ShardIndex(repo_key));
    MutexLock lock(&shard.mu);
    if (cross) cross_lock->LockRest();
    // (Membership changes under every shard's lock: with none anywhere,
    // this acquire's repository is no member while it holds its shard.)
    if (!cross && member_repos_.load(std::memory_order_acquire) > 0) {
      if (auto rit = shard.repos.find(repo_key);
          rit != shard.repos.end() && IsMember(rit->second)) {
        continue;
      }
    }
    if (auto rit = shard.repos.find(repo_key); rit != shard.repos.end()) {
      // Runs past their queue deadline leave first (the caller too).
      TimeOut(shard, rit->first, rit->second, now, fx);
    }
    if (!options.adopt_running) {
      // A removed run is refused before anything else is written.
      if (auto rit = shard.repos.find(repo_key); rit != shard.repos.end()) {
        if (auto r = rit->second.removed.find(run_key);
            r != rit->second.removed.end()) {
          refused = RemovedRunError(repo_key, run_key, r->second);
        }
      }
    }
    if (refused.ok() && !options.group.empty() && !options.adopt_running) {
      if (auto rit = shard.repos.find(repo_key);
          rit != shard.repos.end() && !rit->second.running.contains(run_key) &&
          Supersede(shard, rit->first, rit->second, std::string(run_key),
                    options.group, options.creation_time.value_or(now), fx)) {
        refused = SupersededRunError(repo_key, run_key, options.group);
      }
    }
    if (refused.ok()) {
      RepoState& rs =
          Enter(shard, repo_key, limit, options.keep_recorded_limit, now, fx);

      std::string run(run_key);
      auto running = rs.running.find(run);
      if (running != rs.running.end()) {
        result.acquired = true;
        result.lease = MakeLease(repo_key, run, running->second);
      } else if (options.adopt_running ||
                 (rs.queue.empty() &&
                  (rs.limit == 0 ||
                   static_cast<int64_t>(rs.running.size()) < rs.limit) &&
                  (!IsMember(rs) || SharedFits(rs, now)))) {
        if (auto q = rs.queued.find(run); q != rs.queued.end()) {
          rs.queue.erase(q->second);
          rs.queued.erase(q);
        }
        rs.removed.erase(run);  // adopted: it runs after all
        LeaseRec& rec = Grant(shard, repo_key, rs, run, now, options.group);
        result.acquired = true;
        result.lease = MakeLease(repo_key, run, rec);
        granted_now = true;
        fresh = !options.adopt_running;
        AddEvent(shard, repo_key, WatchEventType::kAdmitted, run, fx);
      } else if (auto q = rs.queued.find(run); q != rs.queued.end()) {
        result.position = PositionOf(rs, q->second);
      } else if (options.enqueue) {
        const absl::Time creation = options.creation_time.value_or(now);
        QueueKey key =
            KeyOf(rs.policy.mode, creation, options.priority,
                  next_sequence_.fetch_add(1, std::memory_order_relaxed));
        Enqueue(rs, key,
                QueueRec{run, now, options.group, options.max_queue_time,
                         creation, options.priority},
                fx);
        result.position = PositionOf(rs, key);
        fresh = true;
        logger_->info(
            "concurrency limit {} of {} reached; {} queued at position {}",
            rs.limit, repo_key, run, result.position);
      }
      if (fresh && options.cancel_running) {
        CancelRunning(shard, repo_key, rs, run, options.group, fx);
      }
    }
    break;
  }
  if (!refused.ok()) {
    Deliver(fx);
    return refused;
  }
  if (granted_now) {
    logger_->debug("slot acquired: {} in {} lease {} token {}", run_key,
                   repo_key, result.lease.lease_id, result.lease.fencing_token);
    NoteExpiry(result.lease.expires_at);
  }
  result.admitted = std::move(fx.admitted);
  Deliver(fx);
  return result;
}

absl::StatusOr<ReleaseResult> MemoryDriver::ReleaseSlot(
    const Context& ctx, std::string_view lease_id, std::string_view run_key,
    std::string_view repo_key) {
  if (absl::Status s = ValidateReleaseKeys(lease_id, run_key, repo_key);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;

  ReleaseResult result;
  Shard* shard = nullptr;
  if (!lease_id.empty()) {
    int index = ShardOfLease(lease_id);
    if (index < 0) return result;  // not ours: nothing to release
    shard = &shards_[index];
  } else {
    shard = &ShardFor(repo_key);
  }
  Effects fx;
  {
    MutexLock lock(&shard->mu);
    auto id_it = shard->leases.end();
    std::string_view repo_v = repo_key;
    std::string_view run_v = run_key;
    if (!lease_id.empty()) {
      id_it = shard->leases.find(lease_id);
      if (id_it == shard->leases.end()) return result;
      if ((!run_key.empty() && id_it->second.run_key != run_key) ||
          (!repo_key.empty() && id_it->second.repo_key != repo_key)) {
        return result;  // the id belongs to another run: release nothing
      }
      repo_v = id_it->second.repo_key;
      run_v = id_it->second.run_key;
    }
    auto rit = shard->repos.find(repo_v);
    if (rit == shard->repos.end()) return result;
    const std::string& repo = rit->first;
    RepoState& rs = rit->second;
    auto run_it = rs.running.find(run_v);
    if (run_it != rs.running.end()) {
      // An expired lease is released all the same: the slot is free anyway.
      logger_->debug("slot released: {} in {}", run_it->first, repo);
      AddEvent(*shard, repo, WatchEventType::kReleased, run_it->first, fx);
      if (id_it == shard->leases.end()) {
        id_it = shard->leases.find(run_it->second.lease_id);
      }
      rs.running.erase(run_it);
      // run_v and repo_v may point into this entry: not used after here.
      if (id_it != shard->leases.end()) shard->leases.erase(id_it);
      result.released = true;
    } else if (lease_id.empty()) {
      if (auto q = rs.queued.find(run_v); q != rs.queued.end()) {
        rs.queue.erase(q->second);
        rs.queued.erase(q);
        result.dequeued = true;
      } else if (auto r = rs.removed.find(run_v); r != rs.removed.end()) {
        rs.removed.erase(r);  // the record of a removed run is forgotten
        result.dequeued = true;
      }
    }
    // With nobody queued there is nobody to admit, and expired leases of
    // the repository are ignored by admission anyway: skip the clock. A
    // member's freed slot may admit another member's run.
    if (IsMember(rs) && result.released) {
      fx.shared_pass = true;
    } else if (!rs.queue.empty()) {
      const absl::Time now = clock_->Now();
      Sweep(*shard, repo, rs, now, fx);
      Promote(*shard, repo, rs, now, fx);
    }
  }
  result.admitted = std::move(fx.admitted);
  Deliver(fx);
  for (Lease& l : fx.shared_admitted) result.admitted.push_back(std::move(l));
  return result;
}

absl::StatusOr<Lease> MemoryDriver::RenewLease(const Context& ctx,
                                               std::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError("lease_id: must not be empty");
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  int index = ShardOfLease(lease_id);
  if (index < 0) {
    return LeaseLostError("lease is unknown to this memory driver");
  }
  Shard& shard = shards_[index];
  const absl::Time now = clock_->Now();
  Effects fx;
  absl::StatusOr<Lease> out;
  {
    MutexLock lock(&shard.mu);
    auto lit = shard.leases.find(lease_id);
    if (lit == shard.leases.end()) {
      return LeaseLostError("lease was released or has expired");
    }
    LeaseLoc loc = lit->second;
    RepoState& rs = shard.repos.find(loc.repo_key)->second;
    LeaseRec& rec = rs.running.find(loc.run_key)->second;
    if (rec.expires_at <= now) {
      Sweep(shard, loc.repo_key, rs, now, fx);
      Promote(shard, loc.repo_key, rs, now, fx);
      out = LeaseLostError(internal::Cat("lease of ", loc.run_key, " in ",
                                         loc.repo_key, " has expired"));
    } else {
      rec.expires_at = now + ttl_;
      out = MakeLease(loc.repo_key, loc.run_key, rec);
    }
  }
  Deliver(fx);
  return out;
}

absl::StatusOr<std::vector<Lease>> MemoryDriver::SetRepositoryLimit(
    const Context& ctx, const Repository& repo) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string repo_key = repo.Key();
  const absl::Time now = clock_->Now();
  Shard& shard = ShardFor(repo_key);
  Effects fx;
  {
    MutexLock lock(&shard.mu);
    RepoState& rs = shard.repos[repo_key];
    rs.limit_recorded = true;
    if (rs.limit != EffectiveLimit(repo)) {
      logger_->info("concurrency limit of {} changed from {} to {}", repo_key,
                    rs.limit, EffectiveLimit(repo));
      rs.limit = EffectiveLimit(repo);
      AddEvent(shard, repo_key, WatchEventType::kLimitChanged, "", fx);
    }
    Sweep(shard, repo_key, rs, now, fx);
    Promote(shard, repo_key, rs, now, fx);
  }
  std::vector<Lease> admitted = fx.admitted;
  Deliver(fx);
  for (Lease& l : fx.shared_admitted) admitted.push_back(std::move(l));
  return admitted;
}

absl::StatusOr<std::optional<int32_t>> MemoryDriver::GetRepositoryLimit(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  Shard& shard = ShardFor(repo_key);
  MutexLock lock(&shard.mu);
  auto rit = shard.repos.find(repo_key);
  if (rit == shard.repos.end() || !rit->second.limit_recorded) {
    return std::optional<int32_t>();
  }
  return std::optional<int32_t>(rit->second.limit);
}

absl::StatusOr<std::vector<std::string>> MemoryDriver::ListRepositories(
    const Context& ctx, std::string_view namespace_name) {
  if (absl::Status s = ValidateNamespaceFilter(namespace_name); !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string ns_prefix =
      namespace_name.empty() ? "" : Cat(namespace_name, "/");
  std::vector<std::string> out;
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    for (const auto& [key, rs] : shard.repos) {
      // Acquiring records the limit, so every repository with a lease or a
      // queued run has one; a repository with only a state is not listed.
      if (!rs.limit_recorded) continue;
      if (!std::string_view(key).starts_with(ns_prefix)) continue;
      out.push_back(key);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::vector<RepositoryCounts>> MemoryDriver::GetRepositoryCounts(
    const Context& ctx) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  std::vector<RepositoryCounts> out;
  for (Shard& shard : shards_) {
    MutexLock lock(&shard.mu);
    for (const auto& [key, rs] : shard.repos) {
      if (!rs.limit_recorded) continue;  // as ListRepositories
      RepositoryCounts c{key, rs.limit, 0,
                         static_cast<int64_t>(rs.queue.size())};
      for (const auto& [run, rec] : rs.running) {
        if (rec.expires_at > now) ++c.running;
      }
      out.push_back(std::move(c));
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.repository_key < b.repository_key;
  });
  return out;
}

absl::StatusOr<int> MemoryDriver::GetCurrentSlots(const Context& ctx,
                                                  std::string_view repo_key) {
  auto leases = GetRunningPipelineRuns(ctx, repo_key);
  if (!leases.ok()) return leases.status();
  return static_cast<int>(leases->size());
}

absl::StatusOr<std::vector<Lease>> MemoryDriver::GetRunningPipelineRuns(
    const Context& ctx, std::string_view repo_key) {
  auto s = GetRepositorySnapshot(ctx, repo_key);
  if (!s.ok()) return s.status();
  return std::move(s->running);
}

absl::StatusOr<std::vector<QueueEntry>> MemoryDriver::GetQueuedPipelineRuns(
    const Context& ctx, std::string_view repo_key) {
  auto s = GetRepositorySnapshot(ctx, repo_key);
  if (!s.ok()) return s.status();
  return std::move(s->queued);
}

absl::StatusOr<RepositorySnapshot> MemoryDriver::GetRepositorySnapshot(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  Shard& shard = ShardFor(repo_key);
  RepositorySnapshot out;
  Effects fx;
  {
    MutexLock lock(&shard.mu);
    auto rit = shard.repos.find(repo_key);
    if (rit == shard.repos.end()) return out;
    std::string key(repo_key);
    Sweep(shard, key, rit->second, now, fx);
    Promote(shard, key, rit->second, now, fx);
    if (rit->second.limit_recorded) out.limit = rit->second.limit;
    out.mode = rit->second.policy.mode;
    for (const auto& [run, rec] : rit->second.running) {
      out.running.push_back(MakeLease(key, run, rec));
    }
    int64_t pos = 0;
    for (const auto& [qk, rec] : rit->second.queue) {
      out.queued.push_back(EntryOf(qk, rec, ++pos));
    }
  }
  Deliver(fx);
  std::sort(out.running.begin(), out.running.end(),
            [](const Lease& a, const Lease& b) {
              return a.fencing_token < b.fencing_token;
            });
  return out;
}

absl::StatusOr<std::unique_ptr<WatchHandle>>
MemoryDriver::WatchSlotAvailability(const Context& ctx,
                                    std::string_view repo_key,
                                    WatchCallback callback) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (!callback) return absl::InvalidArgumentError("callback: must be set");
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  auto entry = std::make_shared<WatcherEntry>(std::string(repo_key),
                                              std::move(callback));
  Shard& shard = ShardFor(repo_key);
  {
    MutexLock lock(&shard.mu);
    shard.watchers[entry->repository_key].push_back(entry);
  }
  std::weak_ptr<WatcherEntry> weak = entry;
  return MakeWatchHandle(ctx, entry, [&shard, weak] {
    auto e = weak.lock();
    if (e == nullptr) return;
    MutexLock lock(&shard.mu);
    auto it = shard.watchers.find(e->repository_key);
    if (it == shard.watchers.end()) return;
    auto& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), e), list.end());
    if (list.empty()) shard.watchers.erase(it);
  });
}

void MemoryDriver::CleanupLoop() {
  while (true) {
    {
      MutexLock lock(&cleanup_mu_);
      if (cleanup_stop_) return;
      if (!cleanup_kick_) {
        int64_t wake = next_wake_nanos_.load();
        absl::Time deadline = absl::InfiniteFuture();
        if (wake != INT64_MAX) {
          absl::Duration left = absl::FromUnixNanos(wake) - clock_->Now();
          deadline = absl::Now() + std::max(left, absl::ZeroDuration());
        }
        if (deadline > absl::Now())
          cleanup_cv_.WaitUntil(&cleanup_mu_, deadline);
      }
      if (cleanup_stop_) return;
      cleanup_kick_ = false;
    }
    const absl::Time now = clock_->Now();
    if (ToNanos(now) < next_wake_nanos_.load()) continue;
    // Reset before scanning: a grant during the scan lowers it again.
    next_wake_nanos_.store(INT64_MAX);
    absl::Time earliest = absl::InfiniteFuture();
    size_t reclaimed_repos = 0;
    for (Shard& shard : shards_) {
      Effects fx;
      {
        MutexLock lock(&shard.mu);
        for (auto& [key, rs] : shard.repos) {
          if (std::min(rs.earliest_expiry, rs.earliest_deadline) <= now) {
            ++reclaimed_repos;
            Sweep(shard, key, rs, now, fx);
            Promote(shard, key, rs, now, fx);
          }
          earliest = std::min(
              earliest, std::min(rs.earliest_expiry, rs.earliest_deadline));
        }
      }
      Deliver(fx);
    }
    if (reclaimed_repos > 0) {
      logger_->debug(
          "cleanup: expired leases or queue deadlines in {} "
          "repositories",
          reclaimed_repos);
    }
    // Lower the wake time to the earliest live expiry (never raise it: a
    // grant may have lowered it meanwhile).
    int64_t want = ToNanos(earliest);
    int64_t cur = next_wake_nanos_.load();
    while (want < cur && !next_wake_nanos_.compare_exchange_weak(cur, want)) {
    }
  }
}

}  // namespace pac::concurrency::internal
