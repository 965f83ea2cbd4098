// The in-process driver: the reference implementation of the contract and
// the embedded default of the server.
//
// State is split into shards by repository key, each behind its own mutex, so
// repositories do not contend with each other. A lease id names its shard.
// Expired leases stop counting the moment admission looks at the repository
// (rule 9); a cleanup thread wakes at the earliest expiry to reclaim them
// and admit the queue even when nobody calls.
#ifndef PAC_SRC_MEMORY_MEMORY_DRIVER_H_
#define PAC_SRC_MEMORY_MEMORY_DRIVER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "pac/concurrency/driver.h"
#include "src/common/mutex.h"
#include "src/common/strings.h"
#include "src/common/watch_dispatcher.h"

namespace pac::concurrency::internal {

// Transparent hashing so std::string_view looks up std::string keys.
struct ViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const {
    return absl::Hash<absl::string_view>{}(AV(s));
  }
};
struct ViewEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const {
    return a == b;
  }
};
template <typename V>
using StringMap = absl::flat_hash_map<std::string, V, ViewHash, ViewEq>;

class MemoryDriver final : public Driver {
 public:
  MemoryDriver(const MemoryConfig& config, const DriverOptions& options);
  ~MemoryDriver() override;

  std::string_view Type() const override { return "memory"; }
  absl::StatusOr<AcquireResult> AcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key,
      const AcquireOptions& options) override;
  using Driver::AcquireSlot;
  absl::StatusOr<ReleaseResult> ReleaseSlot(const Context& ctx,
                                            std::string_view lease_id,
                                            std::string_view run_key,
                                            std::string_view repo_key) override;
  absl::StatusOr<Lease> RenewLease(const Context& ctx,
                                   std::string_view lease_id) override;
  absl::StatusOr<ImportResult> ImportRuns(
      const Context& ctx, const Repository& repo,
      const ImportRequest& request) override;
  absl::StatusOr<std::vector<ImportResult>> ImportBatch(
      const Context& ctx, const std::vector<RepositoryImport>& parts) override;
  absl::StatusOr<std::vector<RepositoryCounts>> GetRepositoryCounts(
      const Context& ctx) override;
  absl::StatusOr<std::vector<Lease>> SetRepositoryLimit(
      const Context& ctx, const Repository& repo) override;
  absl::StatusOr<std::optional<int32_t>> GetRepositoryLimit(
      const Context& ctx, std::string_view repo_key) override;
  absl::StatusOr<std::vector<std::string>> ListRepositories(
      const Context& ctx, std::string_view namespace_name) override;
  absl::StatusOr<int> GetCurrentSlots(const Context& ctx,
                                      std::string_view repo_key) override;
  absl::StatusOr<std::vector<Lease>> GetRunningPipelineRuns(
      const Context& ctx, std::string_view repo_key) override;
  absl::StatusOr<std::vector<QueueEntry>> GetQueuedPipelineRuns(
      const Context& ctx, std::string_view repo_key) override;
  absl::StatusOr<RepositorySnapshot> GetRepositorySnapshot(
      const Context& ctx, std::string_view repo_key) override;
  absl::StatusOr<std::unique_ptr<WatchHandle>> WatchSlotAvailability(
      const Context& ctx, std::string_view repo_key,
      WatchCallback callback) override;
  absl::Status SetRepositoryState(const Context& ctx, const Repository& repo,
                                  std::string_view state) override;
  absl::StatusOr<std::string> GetRepositoryState(
      const Context& ctx, std::string_view repo_key) override;
  absl::Status SetPipelineRunState(const Context& ctx, std::string_view run_key,
                                   std::string_view state) override;
  absl::StatusOr<std::string> GetPipelineRunState(
      const Context& ctx, std::string_view run_key) override;
  absl::StatusOr<ClearQueueResult> ClearQueue(
      const Context& ctx, std::string_view repo_key) override;
  absl::Status SetRepositoryPolicy(const Context& ctx,
                                   std::string_view repo_key,
                                   const RepositoryPolicy& policy) override;
  absl::StatusOr<RepositoryPolicy> GetRepositoryPolicy(
      const Context& ctx, std::string_view repo_key) override;
  absl::Status SetSharedLimit(const Context& ctx,
                              const SharedLimit& limit) override;
  absl::Status DeleteSharedLimit(const Context& ctx,
                                 std::string_view name) override;
  absl::StatusOr<std::vector<SharedLimitStatus>> ListSharedLimits(
      const Context& ctx) override;
  absl::Status CleanupRepository(const Context& ctx,
                                 std::string_view repo_key) override;
  absl::Duration LeaseTTL() const override { return ttl_; }
  absl::Status Close() override;

 private:
  static constexpr size_t kShards = 16;

  struct LeaseRec {
    std::string lease_id;
    absl::Time acquired_at;
    absl::Time expires_at;
    int64_t token;
    std::string group;  // AcquireOptions::group; empty: none
    bool cancel_requested = false;
  };
  // A queue entry's place under its repository's mode (KeyOf): ordered by
  // `rank` (minus the priority, under kPriority), `time` (the creation
  // time in µs, negated under kNewestFirst), then `sequence`.
  struct QueueKey {
    int64_t rank = 0;
    int64_t time = 0;
    int64_t sequence = 0;
    bool operator<(const QueueKey& o) const {
      return std::tie(rank, time, sequence) <
             std::tie(o.rank, o.time, o.sequence);
    }
  };
  static QueueKey KeyOf(QueueMode mode, absl::Time creation, int32_t priority,
                        int64_t sequence);
  struct QueueRec {
    std::string run_key;
    absl::Time enqueued_at;
    std::string group;  // AcquireOptions::group; empty: none
    // AcquireOptions::max_queue_time; unset: the repository's policy.
    std::optional<absl::Duration> max_queue_time;
    absl::Time creation_time;
    int32_t priority = 0;
  };
  struct RepoState {
    int32_t limit = 0;                   // 0: unlimited
    bool limit_recorded = false;         // by an acquire or SetRepositoryLimit
    StringMap<LeaseRec> running;         // by run key
    std::map<QueueKey, QueueRec> queue;  // admission order
    StringMap<QueueKey> queued;          // run key -> place
    StringMap<std::string> removed;      // run key -> reason (ClearQueue)
    absl::Time earliest_expiry = absl::InfiniteFuture();  // lower bound
    RepositoryPolicy policy;
    // A lower bound of the queued runs' deadlines (QueueDeadline).
    absl::Time earliest_deadline = absl::InfiniteFuture();
    std::optional<std::string> state;
  };
  struct LeaseLoc {
    std::string repo_key;
    std::string run_key;
  };
  struct Shard {
    Mutex mu;
    StringMap<RepoState> repos PAC_GUARDED_BY(mu);
    StringMap<LeaseLoc> leases PAC_GUARDED_BY(mu);
    StringMap<std::vector<std::shared_ptr<WatcherEntry>>> watchers
        PAC_GUARDED_BY(mu);
    int64_t next_lease PAC_GUARDED_BY(mu) = 0;
  };
  // What one locked step produced, delivered after unlocking.
  struct Effects {
    std::vector<Lease> admitted;
    PendingEvents events;
    // The earliest queue deadline the step set: the cleanup thread's wake.
    absl::Time wake = absl::InfiniteFuture();
    // A member of a shared limit may have room the step could not give out
    // (it held one shard): Deliver runs a SharedPass, whose admissions
    // land in `shared_admitted`.
    bool shared_pass = false;
    std::vector<Lease> shared_admitted;
  };
  // Holds cross_mu_ and every shard's lock but `own`'s (kShards: every
  // shard's), which a step on a member of a shared limit needs; the step
  // locks `own` itself between the constructor (cross_mu_, the shards
  // below `own`) and LockRest (the shards above): every lock is taken in
  // index order, as ImportBatch takes its shards. memory_shared.cc.
  class CrossLock;

  size_t ShardIndex(std::string_view repo_key) const;
  Shard& ShardFor(std::string_view repo_key) {
    return shards_[ShardIndex(repo_key)];
  }
  // Parses the shard index out of a lease id; -1 if it is not ours.
  int ShardOfLease(std::string_view lease_id) const;

  Lease MakeLease(const std::string& repo_key, const std::string& run_key,
                  const LeaseRec& rec) const;
  LeaseRec& Grant(Shard& shard, const std::string& repo_key, RepoState& rs,
                  const std::string& run_key, absl::Time now, std::string group)
      PAC_REQUIRES(shard.mu);
  // Reclaims expired leases, and removes queued runs past their deadline
  // (reason kRemovedTimedOut).
  void Sweep(Shard& shard, const std::string& repo_key, RepoState& rs,
             absl::Time now, Effects& fx) PAC_REQUIRES(shard.mu);
  void TimeOut(Shard& shard, const std::string& repo_key, RepoState& rs,
               absl::Time now, Effects& fx) PAC_REQUIRES(shard.mu);
  void SweepLeases(Shard& shard, const std::string& repo_key, RepoState& rs,
                   absl::Time now, Effects& fx) PAC_REQUIRES(shard.mu);
  // When a queued run times out: enqueued + its own limit, else the
  // repository's; InfiniteFuture without either.
  static absl::Time QueueDeadline(const RepoState& rs, const QueueRec& rec);
  // Queues `rec` at `key`, noting its deadline.
  void Enqueue(RepoState& rs, const QueueKey& key, QueueRec rec, Effects& fx);
  // Recomputes rs.earliest_deadline (after a policy change).
  void NoteDeadlines(RepoState& rs, Effects& fx);
  // Re-keys the queue for rs.policy.mode (after a change of mode).
  static void Reorder(RepoState& rs);
  static QueueEntry EntryOf(const QueueKey& key, const QueueRec& rec,
                            int64_t position);
  // The start of an acquire or an import: the repository's state (created
  // if new) with `limit` recorded (with `keep_recorded`, only if none is),
  // expired leases reclaimed and the queue admitted into free slots.
  RepoState& Enter(Shard& shard, const std::string& repo_key, int32_t limit,
                   bool keep_recorded, absl::Time now, Effects& fx)
      PAC_REQUIRES(shard.mu);
  // Admits the queue's heads into free slots. For a member of a shared
  // limit: PromoteShared under a CrossLock, else fx.shared_pass.
  void Promote(Shard& shard, const std::string& repo_key, RepoState& rs,
               absl::Time now, Effects& fx) PAC_REQUIRES(shard.mu);
  // Grants the head of rs.queue a slot.
  void AdmitHead(Shard& shard, const std::string& repo_key, RepoState& rs,
                 absl::Time now, Effects& fx) PAC_REQUIRES(shard.mu);

  // Shared limits (memory_shared.cc). A step that may grant in a member
  // holds a CrossLock; the others leave admission to a SharedPass.
  static bool IsMember(const RepoState& rs) {
    return !rs.policy.shared_limits.empty();
  }
  // Whether the calling thread holds a CrossLock.
  static bool CrossHeld();
  // Whether repo_key is a member (a hint unless the caller holds a lock).
  bool PeekMember(Shard& shard, std::string_view repo_key)
      PAC_EXCLUDES(shard.mu);
  // Under a CrossLock: adds the live leases (and, if `queued`, the queued
  // runs) of the repositories `members` to the counts.
  void SharedCounts(const std::set<std::string>& members, absl::Time now,
                    int64_t* running, int64_t* queued);
  // Under a CrossLock: whether every shared limit of rs has a free slot.
  bool SharedFits(const RepoState& rs, absl::Time now);
  // Under a CrossLock: reclaims the members' expired leases and timed-out
  // runs, then admits their heads while they fit, the head queued
  // earliest first.
  void PromoteShared(absl::Time now, Effects& fx);
  // Records rs's membership change from `before` (under a CrossLock).
  void NoteMembership(const std::string& repo_key,
                      const std::vector<std::string>& before,
                      const std::vector<std::string>& after);
  // A PromoteShared under its own CrossLock; the runs it admitted.
  std::vector<Lease> SharedPass();
  void RemoveLease(Shard& shard, const std::string& repo_key, RepoState& rs,
                   const std::string& run_key) PAC_REQUIRES(shard.mu);
  void AddEvent(Shard& shard, const std::string& repo_key, WatchEventType type,
                const std::string& run_key, Effects& fx,
                std::string_view reason = "") PAC_REQUIRES(shard.mu);
  int64_t PositionOf(const RepoState& rs, const QueueKey& key) const;
  // A submit of `run` with supersede group `group` (docs/policies.md): of
  // the group's queued runs only the newest stays. Removes the group's
  // entries older than `run`'s (its entry, or where it would join at
  // `creation`), or, if one is newer, `run` itself (then returns true).
  bool Supersede(Shard& shard, const std::string& repo_key, RepoState& rs,
                 const std::string& run, const std::string& group,
                 absl::Time creation, Effects& fx) PAC_REQUIRES(shard.mu);
  // A cancel_running submit of `run` (docs/policies.md): asks the group's
  // other running runs to stop.
  void CancelRunning(Shard& shard, const std::string& repo_key, RepoState& rs,
                     const std::string& run, const std::string& group,
                     Effects& fx) PAC_REQUIRES(shard.mu);
  absl::Status CheckOpen() const;
  // One part of ImportBatch, its shard's lock held (with the others').
  void ImportLocked(const Repository& repo, const ImportRequest& request,
                    absl::Time now, Effects& fx, ImportResult& out);
  void Deliver(Effects& fx);
  void NoteExpiry(absl::Time expires_at);
  void CleanupLoop();

  const absl::Duration ttl_;
  Clock* const clock_;
  const std::shared_ptr<spdlog::logger> logger_;
  const std::string id_prefix_;  // "m<instance nonce>."

  std::array<Shard, kShards> shards_;
  std::atomic<int64_t> next_token_{1};
  std::atomic<int64_t> next_sequence_{1};
  std::atomic<bool> closed_{false};

  Mutex states_mu_;
  StringMap<std::string> run_states_ PAC_GUARDED_BY(states_mu_);

  WatchDispatcher dispatcher_;

  // Shared limits: set by SetSharedLimit, and the members of each name a
  // policy gives (whether set or not).
  Mutex cross_mu_;
  StringMap<int32_t> shared_defs_ PAC_GUARDED_BY(cross_mu_);
  std::map<std::string, std::set<std::string>> shared_members_
      PAC_GUARDED_BY(cross_mu_);
  // Repositories that are members (0: no step needs a CrossLock).
  std::atomic<int64_t> member_repos_{0};

  // Cleanup thread.
  Mutex cleanup_mu_;
  CondVar cleanup_cv_;
  bool cleanup_stop_ PAC_GUARDED_BY(cleanup_mu_) = false;
  bool cleanup_kick_ PAC_GUARDED_BY(cleanup_mu_) = false;
  // Earliest expiry the cleanup thread waits for, as Unix nanos.
  std::atomic<int64_t> next_wake_nanos_{INT64_MAX};
  int clock_listener_ = 0;
  std::thread cleanup_thread_;
};

class MemoryDriver::CrossLock {
 public:
  CrossLock(MemoryDriver& driver, size_t own);
  ~CrossLock();
  // The shards above `own`, once the caller holds `own`'s lock.
  void LockRest();
  CrossLock(const CrossLock&) = delete;
  CrossLock& operator=(const CrossLock&) = delete;

 private:
  MemoryDriver& driver_;
  const size_t own_;
  bool rest_ = false;
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_MEMORY_MEMORY_DRIVER_H_
