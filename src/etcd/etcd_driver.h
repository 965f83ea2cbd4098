// The etcd driver. Key layout (docs/etcd.md), under the configured prefix P:
//
//   P repo/<ns>/<name>/meta                 rewritten by every guarded change
//   P repo/<ns>/<name>/limit                the concurrency limit
//   P repo/<ns>/<name>/slot/<seat>          a held slot, in a numbered seat;
//                                           value: "<lease id hex>/<lease
//                                           TTL start µs>/<commit id>/<run>";
//                                           it carries its own etcd lease
//   P repo/<ns>/<name>/queue/<µs:20>/<run>  a queued run (creation time)
//   P repo/<ns>/<name>/policy               the queue time limit (µs)
//   P repo/<ns>/<name>/removed/<run>        a run removed from the queue
//                                           (ClearQueue); value: the reason
//   P state/repo/<repo>, P state/run/<run>  free-form states
//   P shared/<name>/limit                   a shared limit
//   P shared/<name>/meta                    rewritten by every grant in a
//                                           member, and by limit changes
//   P shared/<name>/member/<repo>           a member (also in its policy)
//   P shared/<name>/held/<repo>/<seat>      a member's held slot, on the
//                                           slot's etcd lease
//
// Every change of a repository but three is a Txn whose compare is "meta's
// mod_revision is what I saw" and that rewrites `meta`: counting and
// granting are one atomic step, and a concurrent change makes the Txn fail
// and the step retry. The exceptions, joining the end of a non-empty queue,
// a release with nobody queued and a grant with nobody queued under a
// limit of at most kMaxLightGrantLimit, are shown safe in FastEnqueueTxn,
// LightProof and GuardSeats.
#ifndef PAC_SRC_ETCD_ETCD_DRIVER_H_
#define PAC_SRC_ETCD_ETCD_DRIVER_H_

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "pac/concurrency/driver.h"
#include "src/common/mutex.h"
#include "src/common/watch_dispatcher.h"
#include "src/etcd/etcd_kv.h"

namespace pac::concurrency::internal {

// What a step of the etcd driver does about shared limits (EtcdDriver::Step).
struct EtcdStepShared {
  size_t admits = 0;  // queue heads of a member it may admit
  bool pass = false;  // pass the member's shared limits afterwards
  // Set: the limits to pass are added here instead (the caller passes).
  std::vector<std::string>* collect = nullptr;
};

class EtcdDriver final : public Driver {
 public:
  // `kv` is the store (gRPC or mock); `shared` keeps a shared mock alive.
  static absl::StatusOr<std::unique_ptr<Driver>> Create(
      std::shared_ptr<EtcdKV> kv, const EtcdConfig& config,
      const DriverOptions& options);
  ~EtcdDriver() override;

  std::string_view Type() const override { return "etcd"; }
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
  absl::Status CleanupRepository(const Context& ctx,
                                 std::string_view repo_key) override;
  absl::Status SetSharedLimit(const Context& ctx,
                              const SharedLimit& limit) override;
  absl::Status DeleteSharedLimit(const Context& ctx,
                                 std::string_view name) override;
  absl::StatusOr<std::vector<SharedLimitStatus>> ListSharedLimits(
      const Context& ctx) override;
  // Test hook: restarts the watch stream from `revision`, as the driver
  // does after a broken stream that had seen everything before it (a later
  // restart of the driver's own resumes from there too). A revision the
  // store has compacted makes it answer with a compaction, which the
  // driver must survive (resync).
  void ResumeWatchForTest(int64_t revision);
  // Test hook: whether GetRepositoryCounts answers from the counts cache.
  bool CountsCachedForTest() const;

  absl::StatusOr<ImportResult> ImportRuns(
      const Context& ctx, const Repository& repo,
      const ImportRequest& request) override;
  absl::StatusOr<std::vector<ImportResult>> ImportBatch(
      const Context& ctx, const std::vector<RepositoryImport>& parts) override;
  ImportCapacity GetImportCapacity() override;
  absl::StatusOr<std::vector<RepositoryCounts>> GetRepositoryCounts(
      const Context& ctx) override;
  absl::StatusOr<std::vector<RepositoryListing>> ListRepositorySnapshots(
      const Context& ctx, std::string_view namespace_name,
      std::string_view after, size_t limit) override;

  absl::Duration LeaseTTL() const override { return ttl_; }
  absl::Status Close() override;

 private:
  struct SlotInfo {
    std::string run;
    std::string lease_hex;
    // The revision of the Txn that granted it (the seat key's mod
    // revision; a seat is only ever put by a grant): with the seat, its
    // fencing token (FencingToken).
    int64_t revision = 0;
    // When the etcd lease's TTL started (at the latest), from the slot's
    // value "<lease hex>/<µs>/<commit id>": lets whoever releases the slot
    // reuse a young lease. 0: unknown.
    int64_t since_us = 0;
    // The granting Txn's NewCommitId (empty in values written without one).
    std::string commit_id;
    int64_t seat = -1;  // the key is `slot/<seat>`
    std::string group;  // AcquireOptions::group the run was submitted with
  };
  struct QueueInfo {
    std::string run;
    std::string key;
    int64_t creation_us = 0;
    int64_t create_revision = 0;
    int64_t enqueued_us = 0;
    // Its place among the entries one Txn joined (an import's: the value
    // "<enqueued µs>/<ord>"), which orders entries of equal creation time
    // joined together. 0 for the others.
    int64_t ord = 0;
    // The run's supersede group (AcquireOptions::group; the value
    // "<enqueued µs>/0/<group>"), empty for none.
    std::string group = "";
    // The run's own queue time limit (AcquireOptions::max_queue_time; the
    // value "<enqueued µs>/0+<max µs>[/<group>]"), 0 for none.
    int64_t max_queue_us = 0;
    // AcquireOptions::priority (the value "<enqueued µs>/0^<priority>...").
    int32_t priority = 0;
  };
  struct RepoView {
    std::string repo;
    int64_t meta_mod = 0;
    std::string meta_commit_id;  // of the last guarded Txn (meta's value)
    bool exists = false;
    int32_t limit = 0;
    bool has_limit = false;                      // the `limit` key exists
    std::map<std::string, SlotInfo> slots;       // by run
    std::vector<QueueInfo> queue;                // admission order
    std::map<std::string, std::string> removed;  // run -> reason
    // Runs asked to stop (`cancel/<run>`): the revision of the grant asked
    // (a key naming an earlier grant of the run asks nothing).
    std::map<std::string, int64_t> cancels;
    // The repository's queue time limit (the `policy` key), 0 for none.
    int64_t max_queue_us = 0;
    QueueMode mode = QueueMode::kOldestFirst;  // the `policy` key's too
    // The shared limits it draws from (the `policy` key's too), sorted:
    // a member's grants put `held` keys and rewrite each limit's `meta`,
    // and its queue is admitted by SharedPass only (etcd_shared.cc).
    std::vector<std::string> shared;
    // Some entry has a limit of its own (a hint: never cleared).
    bool entry_limits = false;
    int64_t revision = 0;
    // Left by a light release, which compares no seat but its own: a light
    // grant into another seat may have committed unseen (GuardSeats).
    bool seats_unverified = false;
  };
  // What one repository step decided.
  struct Plan {
    int32_t limit = 0;
    bool touch = false;  // the caller or the limit wants a write anyway
  };

  EtcdDriver(std::shared_ptr<EtcdKV> kv, const EtcdConfig& config,
             const DriverOptions& options);

  std::string RepoPrefix(std::string_view repo) const;
  // A listing's checks, and its key range: `P repo/` or `P repo/<ns>/`
  // (etcd_listing.cc).
  absl::StatusOr<std::pair<std::string, std::string>> ListingBounds(
      const Context& ctx, std::string_view namespace_name);
  // A limit, a slot or a queued run: what makes a repository listed.
  static bool HasRecord(const RepoView& v);
  // The unexpired slots of a view (each lease's TTL asked of etcd, or
  // looked up in `ttls` when the caller asked LeaseTtls for several views),
  // oldest grant first, and its queue.
  absl::StatusOr<std::vector<Lease>> RunningOf(
      const Context& ctx, const RepoView& v,
      const std::map<int64_t, int64_t>* ttls = nullptr);
  // What is left of each lease, in seconds (negative: expired), asked of
  // etcd up to kTtlQueries at a time.
  absl::StatusOr<std::map<int64_t, int64_t>> LeaseTtls(
      const Context& ctx, const std::vector<int64_t>& leases);
  static constexpr size_t kTtlQueries = 16;
  // Appends the leases of the view's slots.
  static void AddLeases(const RepoView& v, std::vector<int64_t>* out);
  static std::vector<QueueEntry> QueuedOf(const RepoView& v);
  // Read() of a repository key the caller gave, once the key, the context
  // and the driver are checked.
  absl::StatusOr<RepoView> ReadChecked(const Context& ctx,
                                       std::string_view repo_key);
  // A fresh read of the repository (also cached).
  absl::StatusOr<RepoView> Read(const Context& ctx, const std::string& repo);
  // The cached view if there is one (`*cached` says so), else a read. A
  // cached view is only a guess: every guarded write compares `meta` (and
  // the slots it counted), and an answer that writes nothing is confirmed
  // (Confirm for an acquire, a fresh read for a release).
  //
  // After this driver's own guarded commit that the cache did not take
  // (Commit::kQueue), the cached view is known to be behind: the
  // watch brings the commit within a round trip, so View waits for it a
  // little (kOwnCommitWait) before it reads instead.
  absl::StatusOr<RepoView> View(const Context& ctx, const std::string& repo,
                                bool* cached) PAC_EXCLUDES(mu_);
  struct ReleaseReq;
  // Guarded steps of one repository in this driver take turns: threads of
  // one process that plan on the same view would fail each other's
  // compares (and, many at once, could starve one). Waits until the turn
  // is free or the context ends. Joining the end of a queue needs no turn.
  // A `release` waits listed in release_waiters_, where the turn's holder
  // may claim and answer it instead (ReleaseGroup): then it returns OK
  // with release->state kDone and the turn not taken.
  absl::Status TakeTurn(const Context& ctx, const std::string& repo,
                        ReleaseReq* release) PAC_EXCLUDES(mu_);
  void EndTurn(const std::string& repo) PAC_EXCLUDES(mu_);
  class Turn;
  // A release waiting for its repository's turn. Releases of one
  // repository would only queue up behind each other's Txns (every one
  // rewrites `meta`), so whoever gets the turn releases the waiting ones
  // with its own in one Txn (ReleaseGroup) and answers them.
  struct ReleaseReq {
    std::string run;
    int64_t lease = 0, revision = 0;
    bool by_lease = false;  // a lease id was given: only that grant
    // kWaiting: listed in release_waiters_; kClaimed: in a group, not
    // listed; kDone: `result` is the answer.
    enum State { kWaiting, kClaimed, kDone } state = kWaiting;
    ReleaseResult result;
  };
  // Adds waiting releases of `repo` to `group`, oldest first.
  void ClaimReleasesLocked(const std::string& repo,
                           std::vector<ReleaseReq*>* group) PAC_REQUIRES(mu_);
  // Releases group[0] (this thread's, holding the turn) and the releases
  // it claims, in one Txn. On an error, the claimed ones are handed back
  // to wait again with their own contexts; otherwise they are answered.
  // In a member of shared limits, `pass` gets them (the caller passes).
  absl::StatusOr<ReleaseResult> ReleaseGroup(const Context& ctx,
                                             const std::string& repo,
                                             ReleaseReq* self,
                                             std::vector<std::string>* pass)
      PAC_EXCLUDES(mu_);
  // Hands group[from..] back to wait again (group[0] is the caller's own).
  void HandBack(const std::string& repo, const std::vector<ReleaseReq*>& group,
                size_t from = 1) PAC_EXCLUDES(mu_);
  void AnswerGroup(const std::vector<ReleaseReq*>& group,
                   const std::vector<ReleaseResult>& results) PAC_EXCLUDES(mu_);
  RepoView ParseView(const std::string& repo, const etcdpb::RangeResponse& r,
                     int64_t revision) const;
  // Applies one key of the repository (`rest`: its name after the
  // repository's prefix) as put or deleted. The caller sorts the queue.
  // `fresh`: the key is not in the view yet (a range read's keys are
  // distinct), so a queue entry is appended without looking for an older
  // version of it: that search made reading a 10k queue quadratic.
  static void ApplyKv(RepoView* v, std::string_view rest, bool put,
                      const etcdpb::KeyValue& kv, bool fresh = false);
  etcdpb::RequestOp RangeRepoOp(const std::string& repo) const;
  // What a step's Txn is, for the view cache.
  enum class Commit {
    // Guarded by `meta`, planned on a view without a queue: on success the
    // repository is `after` exactly, at the commit's revision (new slots
    // and queue entries with revision 0 get the commit's), and the cache
    // takes it.
    kExact,
    // Guarded, planned on a view with a queue: an entry joined at the end
    // (FastEnqueueTxn) does not touch `meta`, so the view may lack one. The
    // watch, which applies every change after the cached view, brings the
    // commit, and the next step of the repository in this driver waits
    // for it (own_commit_rev_).
    kQueue,
    // Joining the end of a queue (FastEnqueueTxn): no range on failure, so
    // that a run joining reads nothing another joining run writes and such
    // Txns can share a request (txn_batcher.h). A lost compare (rare: the
    // entry joined after was admitted) drops the cached view, so the step
    // reads afresh. On success, as kQueue.
    kJoinEnd,
    // A light release (LightProof): compares `meta` but leaves it alone.
    // On success the repository is `after` at the commit's revision, with
    // `meta` as before, and seats_unverified; the cache takes it.
    kLight,
    // A light grant (GuardSeats): compares `meta` and every seat, leaves
    // `meta` alone. On success the repository is `after` at the commit's
    // revision, with `meta` as before; the cache takes it.
    kLightGrant,
  };
  // A release planned on a view without a queue deletes its slots in a Txn
  // that compares `meta` and each slot but writes nothing else: the queue
  // is still empty at the commit (its first entry is always a guarded Txn,
  // which rewrites `meta`), so there is nobody to admit. Such a delete is
  // seen by others as an expiry is: guarded plans compare the slots they
  // counted (GuardSlots). Only for limits up to kMaxGuardedSlots (or none),
  // so that those compares prove a full repository is still full.
  //
  // What proves the commit when its answer was lost (LightCommitted): the
  // Txn compared and wrote no commit id.
  struct LightProof {
    int64_t meta_mod = 0;
    // run, the slot's grant revision, its etcd lease
    std::vector<std::tuple<std::string, int64_t, int64_t>> slots;
  };
  // The revision of `v` if it proves that `light` committed: `meta`
  // unchanged, each slot gone while its etcd lease is alive (no expiry
  // deleted it). Else 0.
  int64_t LightCommitted(const Context& ctx, const RepoView& v,
                         const LightProof& light);
  // Commits a step's Txn. A failed compare of a guarded Txn returns the
  // repository's range, which is cached. The response when it succeeded;
  // nullopt when the step must be planned again (a lost compare, a
  // retryable error); otherwise the error. A Txn that lost its compare
  // gives its leases back to the spares. A Txn that `admits` queued runs
  // goes as AdmittingTxn.
  //
  // `commit_id` (NewCommitId) is in the value of every slot the Txn grants.
  // When the answer was lost and the client sent the Txn again, the second
  // send loses its compare to the first; and a send that failed with
  // Unavailable may have committed. Either way a granted slot carrying
  // `commit_id` proves the commit, and the step is answered as committed at
  // that slot's revision, as planned (else the admitted runs would
  // be reported by nobody). Without that proof, the leases of a Txn that
  // failed with an error are dropped, not reused: it may still commit.
  //
  // When the step must be planned again, `current` (if given) gets the
  // repository as etcd answered it (a lost compare's failure branch, or the
  // read after an error), when there is one: as fresh as a read.
  // `proved_light` is set when a light release was answered as committed
  // by its proof, which another holder's release of the same grant also
  // explains: its etcd lease is then not reused.
  absl::StatusOr<std::optional<etcdpb::TxnResponse>> CommitStep(
      const Context& ctx, const std::string& repo, etcdpb::TxnRequest txn,
      const std::vector<int64_t>& leases, RepoView after, Commit kind,
      bool admits, const std::string& commit_id,
      const LightProof* light = nullptr,
      std::optional<RepoView>* current = nullptr, bool* proved_light = nullptr)
      PAC_EXCLUDES(mu_);
  // The revision at which a slot of `v` was granted with `commit_id` (or
  // `meta` written with it), or 0.
  static int64_t CommittedAt(const RepoView& v, const std::string& commit_id);
  // A token unique to one planned Txn of this driver (instance, counter).
  std::string NewCommitId();
  // What a step removes from the queue (PlanRemovals, etcd_policies.cc).
  struct Removals {
    std::set<const QueueInfo*> stale_only;  // StaleEntries: dropped
    // Out of the plan: stale, superseded and timed out (those left for a
    // later Txn too). Pointers into the view.
    std::set<const QueueInfo*> gone;
    // Removed with a record by the step's Txn, in queue order.
    std::vector<const QueueInfo*> superseded, timed_out;
    bool timed_out_more = false;  // timed-out entries left for the next Txn
    // Non-empty: the caller is removed instead (kRemovedSuperseded,
    // kRemovedTimedOut), alone (RemoveCaller).
    std::string_view caller_reason;
  };
  // The queue policies' part of a step of `run` (empty: nobody) on `v`.
  Removals PlanRemovals(const RepoView& v, const std::string& run,
                        const AcquireOptions& options) const;
  // Removes `run`'s entries from the queue of `v` with a record of
  // `reason`, in a guarded Txn. True once committed; false when planned on
  // an outdated view (`current`: etcd's, as CommitStep gives it).
  absl::StatusOr<bool> RemoveCaller(const Context& ctx, const std::string& repo,
                                    const RepoView& v, const std::string& run,
                                    std::string_view reason,
                                    std::optional<RepoView>* current)
      PAC_EXCLUDES(mu_);
  // Queue time limits (docs/policies.md). When entry `q` of `v` times
  // out, in Unix µs (INT64_MAX: never).
  static int64_t DeadlineUs(const RepoView& v, const QueueInfo& q);
  // The entries of `v` past their deadline at `now_us`.
  static std::set<const QueueInfo*> TimedOut(const RepoView& v, int64_t now_us);
  // Schedules a step of `v`'s repository at its earliest queue deadline
  // (PromoteLoop), unless one is scheduled earlier.
  void NoteDeadlinesLocked(const std::string& repo, const RepoView& v)
      PAC_REQUIRES(mu_);
  void ScheduleLocked(const std::string& repo, int64_t at_us) PAC_REQUIRES(mu_);
  // Oldest-first: (creation time, revision, place in its Txn, key), one
  // total order, the same in every process (etcd.md, "Queue order").
  // Supersede groups compare runs by it under every mode.
  static bool QueueOrder(const QueueInfo& a, const QueueInfo& b);
  // The admission order of `mode`: priority or newest creation time
  // first, then QueueOrder.
  static bool AdmitsBefore(QueueMode mode, const QueueInfo& a,
                           const QueueInfo& b);
  // Sorts a view's queue into the admission order of its mode.
  static void SortQueue(RepoView* v);
  // Compares that each slot of `v` still exists as `v` saw it (at most
  // kMaxGuardedSlots); returns the seats compared.
  std::set<int64_t> GuardSlots(etcdpb::TxnRequest* txn,
                               const RepoView& v) const;
  // Whether runs may be granted in `v`'s repository without a `meta`
  // write (a light grant): a limit of 1 to kMaxLightGrantLimit.
  static bool LightGrantsPossible(const RepoView& v);
  // A light grant puts only its seat. What keeps it atomic against every
  // other grant is that it, and every other Txn that puts a seat or a
  // queue entry (guarded ones, and a join at the end planned on a view
  // with seats_unverified), compares every seat below the limit: "not put
  // since `v`" (mod revision < the view's + 1: unchanged or deleted, the
  // view's 0 for a free seat). Every grant puts a seat below the limit of
  // its view (the lowest free one), and that limit is `v`'s while `meta`
  // is unchanged, so any grant `v` has not seen fails these compares: no
  // two grants count the same free seat, and a run granted unseen is never
  // granted or queued again. Seats in `skip` are compared already (equal,
  // by GuardSlots). No-op unless LightGrantsPossible(v).
  void GuardSeats(etcdpb::TxnRequest* txn, const RepoView& v,
                  const std::set<int64_t>& skip = {}) const;
  // Whether `v` (a cached view) still holds for an answer that writes
  // nothing: `meta` and every slot unchanged. If not, the repository as
  // etcd has it now (also cached).
  absl::StatusOr<std::optional<RepoView>> Confirm(const Context& ctx,
                                                  const RepoView& v)
      PAC_EXCLUDES(mu_);
  // The queue entry of `v` with the greatest key (nullptr: none).
  static const QueueInfo* LastQueueKey(const RepoView& v);
  // Joining the end of a queue does not write `meta` (FastEnqueueTxn). A
  // guarded plan that admits from the queue (up to `last_admitted`, or to
  // its end when `drained`: none of it left, and slots free or one given
  // to the caller) adds a compare that no entry it has not seen sorts
  // before what it admits.
  void GuardAdmissions(etcdpb::TxnRequest* txn, const RepoView& v,
                       const QueueInfo* last_admitted, bool drained) const;
  // Queue entries to drop when the repository is next written: a run
  // queued twice (two processes joined the end at once) keeps its first
  // entry; a run that holds a slot, or was removed (an entry that joined
  // the end beside a ClearQueue planned without it), keeps none. Pointers
  // into `v`.
  static std::set<const QueueInfo*> StaleEntries(const RepoView& v);
  // Deletes `stale` entries (except those of `callers`' runs, which the
  // step handles), kMaxStaleDeletes at most, in `txn` and from `after`.
  static void DropStale(etcdpb::TxnRequest* txn, RepoView* after,
                        const std::set<const QueueInfo*>& stale,
                        const std::set<std::string>& callers);
  // The compare of an enqueue at the end of a queue, after `last` (the
  // view's greatest queue key).
  static etcdpb::TxnRequest FastEnqueueTxn(const QueueInfo& last);
  void CacheView(const std::string& repo, const RepoView& v) PAC_EXCLUDES(mu_);
  void ForgetView(const std::string& repo) PAC_EXCLUDES(mu_);
  // Adds the compare "`meta`'s mod revision is `meta_mod`".
  static void AddMetaCompare(etcdpb::TxnRequest* txn,
                             const std::string& repo_prefix, int64_t meta_mod);
  // Adds the compare "seat `seat` of `repo` holds the grant of `revision`"
  // (EQUAL), or "was put before `revision`" (LESS: GuardSeats).
  void AddSlotCompare(
      etcdpb::TxnRequest* txn, const std::string& repo, int64_t seat,
      int64_t revision,
      etcdpb::Compare::CompareResult result = etcdpb::Compare::EQUAL) const;
  std::string SeatKey(const std::string& repo, int64_t seat) const;
  // A Txn guarded by the repository's meta revision (see the file comment).
  etcdpb::TxnRequest GuardedTxn(const std::string& repo_prefix,
                                int64_t meta_mod,
                                const std::string& commit_id) const;
  // Adds the slot key of a grant to `txn`, in the lowest seat `after` has
  // free, and the grant to `after`; a non-empty `dequeued_key` is deleted
  // in both. Returns the seat. (A release deletes a freed seat only if no
  // grant took it: etcd refuses a put and a delete of one key in one Txn.)
  int64_t AddGrant(etcdpb::TxnRequest* txn, RepoView* after,
                   const std::string& run, int64_t lease,
                   const std::string& dequeued_key,
                   const std::string& commit_id, const std::string& group) const
      PAC_EXCLUDES(mu_);
  // Whether the view's `run`, holding `slot`, was asked to stop.
  static bool CancelRequested(const RepoView& v, const SlotInfo& slot);
  // When `lease`'s TTL started, as far as this driver knows (now if not).
  absl::Time LeaseSince(int64_t lease) const PAC_EXCLUDES(mu_);
  absl::Status PutKey(const Context& ctx, std::string key,
                      std::string_view value);
  absl::StatusOr<std::string> GetKey(const Context& ctx, std::string key,
                                     std::string_view what);
  // The core step: set the limit, admit the queue, then act for `run`
  // (empty: nobody). Retries on conflicts until the context ends. Admits
  // by as many Txns as etcd's kMaxTxnOps needs, oldest first, and answers
  // every run admitted. `holding_turn`: the caller holds the repository's
  // turn (a release admitting the rest of what its own Txn could not).
  //
  // In a member of shared limits (RepoView::shared) a step admits at most
  // `shared.admits` queue heads (SharedPass admits one at a time, in the
  // order of rule 22), grants only within every shared limit of the
  // member (GuardShared), and, unless `holding_turn`, runs a SharedPass
  // when it may have made room (a raised limit, or `shared.pass`) or
  // queued the caller while a shared slot was free.
  using StepShared = EtcdStepShared;
  absl::StatusOr<AcquireResult> Step(const Context& ctx,
                                     const std::string& repo, int32_t limit,
                                     bool set_limit, const std::string& run,
                                     const AcquireOptions& options,
                                     bool holding_turn = false,
                                     StepShared shared = {});
  // Step without the pass; `pass` gets the member's shared limits when
  // one is due, `recheck` when the caller was queued in a member.
  absl::StatusOr<AcquireResult> PlanAndCommit(
      const Context& ctx, const std::string& repo, int32_t limit,
      bool set_limit, const std::string& run, const AcquireOptions& options,
      bool holding_turn, StepShared shared, std::vector<std::string>* pass,
      bool* recheck);

  // Shared limits (etcd_shared.cc).
  struct SharedState {
    bool defined = false;  // the `limit` key exists
    int32_t limit = 0;     // 0: no limit
    int64_t meta_mod = 0;  // `meta`'s mod revision, 0: none
    int64_t held = 0;      // `held` keys: the members' live slots
  };
  std::string SharedPrefix(std::string_view name) const;
  std::string HeldKey(std::string_view name, std::string_view repo,
                      int64_t seat) const;
  // The state of each limit named, by a read-only Txn.
  absl::StatusOr<std::map<std::string, SharedState>> ReadShared(
      const Context& ctx, const std::vector<std::string>& names);
  // How many more runs a member of `names` may be granted (INT64_MAX: no
  // limit is set for any).
  static int64_t SharedFree(const std::map<std::string, SharedState>& st,
                            const std::vector<std::string>& names);
  // A member's grant: compares each limit's `meta` unchanged since `st`
  // was read and rewrites it, so that two grants never count the same
  // free shared slot (a release only frees room and writes no `meta`).
  void GuardShared(etcdpb::TxnRequest* txn,
                   const std::vector<std::string>& names,
                   const std::map<std::string, SharedState>& st,
                   const std::string& commit_id) const;
  // Deletes the `held` keys of `v`'s seat (a member's release).
  void DeleteHeld(etcdpb::TxnRequest* txn, const RepoView& v,
                  int64_t seat) const;
  // The answers of `ranges`, by read-only Txns of kMaxTxnOps ranges.
  absl::StatusOr<std::vector<etcdpb::RangeResponse>> Ranges(
      const Context& ctx, const std::vector<etcdpb::RangeRequest>& ranges);
  // The members of `names`, and how many queue keys each repository has.
  absl::StatusOr<std::set<std::string>> SharedMembers(
      const Context& ctx, const std::vector<std::string>& names);
  absl::StatusOr<std::map<std::string, int64_t>> QueueCounts(
      const Context& ctx, const std::set<std::string>& repos);
  // Admits the members' heads that fit, earliest queued first (rule 22),
  // one Step each, until none fits; returns them. Errors are logged: the
  // next event, or PromoteLoop's sweep, passes again.
  std::vector<Lease> SharedPass(const Context& ctx,
                                std::vector<std::string> names);
  // Records `policy` with a membership other than the recorded one: the
  // policy, `meta`, the `member` keys and a `held` key per running slot,
  // in one Txn. False when the membership is already `policy`'s; the
  // limits joined or left go to `touched`.
  absl::StatusOr<bool> ChangeMembership(const Context& ctx,
                                        const std::string& repo,
                                        const RepositoryPolicy& policy,
                                        std::vector<std::string>* touched);
  absl::StatusOr<std::vector<int64_t>> Leases(const Context& ctx, size_t n);

  // Imports (etcd_import.cc). One part of a batch, planned on a fresh view
  // of its repository.
  struct ImportPart {
    std::string repo;
    RepoView view;   // as read
    RepoView after;  // as the Txn leaves it
    int32_t limit = 0;
    bool writes = false;
    bool promote_more = false;     // other runs' heads left to admit
    std::set<std::string> others;  // runs outside the request it admits
  };
  // Plans `part` on plan->view into plan->after, and adds its compare and
  // operations to `txn`, granting (*leases)[*next_lease...] (no leases: a
  // plan for its size only, each grant lease 0). Other runs' queue heads
  // are admitted only with `promote_others`. Returns the grants it made.
  size_t PlanImport(const RepositoryImport& part, const std::string& commit_id,
                    bool promote_others, const std::vector<int64_t>* leases,
                    size_t* next_lease, ImportPart* plan,
                    etcdpb::TxnRequest* txn);
  // ImportBatch in the repositories' turns; `pass` gets the shared limits
  // of the members it imported into. ResourceExhausted when the batch's
  // Txn would be over kMaxTxnOps (members' `held` keys).
  absl::StatusOr<std::vector<ImportResult>> ImportBatchInTurns(
      const Context& ctx, const std::vector<RepositoryImport>& parts,
      std::vector<std::string>* pass);
  // The answers once the batch's Txn committed at `revision` (0: nothing
  // to write), after the ordinary steps that fill seats left free.
  absl::StatusOr<std::vector<ImportResult>> Answer(
      const Context& ctx, const std::vector<RepositoryImport>& parts,
      std::vector<ImportPart>& plans, int64_t revision,
      const std::string& commit_id);
  // A request's leases and places in a view, and the leases of `others`
  // (runs outside the request that the import admitted) still held.
  ImportResult ImportResultOf(const RepoView& v, const ImportRequest& request,
                              const std::set<std::string>& others);
  // Every slot of a view as a Lease (no TTL asked of etcd).
  std::vector<Lease> RunningOfView(const RepoView& v);
  // Grants leases ahead of demand (kLeasePoolTarget spares).
  void RefillLoop();
  // Records that `lease`'s TTL started at `since`.
  void NoteGrantLocked(int64_t lease, absl::Time since) PAC_REQUIRES(mu_);
  // The true expiry of a lease (its TTL start + TTL); `now` + TTL if
  // unknown.
  absl::Time ExpiryOf(int64_t lease, absl::Time now) PAC_EXCLUDES(mu_);
  // After a release: back to the spares if the lease is young.
  void RecycleLocked(int64_t lease, absl::Time since) PAC_REQUIRES(mu_);
  // The Lease of the grant at `revision` into `seat`.
  Lease MakeLease(const std::string& repo, const std::string& run,
                  int64_t lease, int64_t revision, int64_t seat,
                  absl::Time now) const;
  // Replaces the watch stream with one from just after the last revision
  // seen (now, if none). The revision is read under watch_mu_ once the old
  // stream is gone, so of two restarts the later one resumes from what the
  // earlier one's stream saw, or a test hook set.
  void RestartWatch() PAC_EXCLUDES(watch_mu_, mu_);
  void RestartWatchLocked() PAC_REQUIRES(watch_mu_) PAC_EXCLUDES(mu_);
  // Opens the watch stream from `from_revision` unless it is open. The
  // stream costs etcd and this process work on every change under the
  // prefix, so it opens on first need only: a watcher is registered, or
  // the driver sees a queue (whose head an expiry must admit).
  void EnsureWatch(int64_t from_revision) PAC_EXCLUDES(watch_mu_, mu_);
  void StartWatchLocked(int64_t from_revision) PAC_REQUIRES(watch_mu_);
  void OnWatch(const WatchBatch& batch) PAC_EXCLUDES(mu_);
  // A seat deleted by no guarded Txn: a light release or an expiry, told
  // apart after the fact (ResolveExpiries). `events[begin, end)` are its
  // kReleased events.
  struct BareDeletion {
    size_t begin = 0;
    size_t end = 0;
    int64_t lease = 0;
  };
  void CollectWatchEvents(const WatchBatch& batch, PendingEvents* events,
                          std::vector<BareDeletion>* bare) PAC_EXCLUDES(mu_);
  void ResolveExpiries(PendingEvents* events,
                       const std::vector<BareDeletion>& bare) PAC_EXCLUDES(mu_);
  void PromoteLoop();
  absl::Status CheckOpen() const;

  // The counts cache (etcd_counts.cc): every repository's limit, seats and
  // queue entries, from one read of every key and then the watch stream,
  // so that a metrics scrape after the first reads no key.
  struct CountsView {
    bool has_limit = false;
    int32_t limit = 0;
    std::map<int64_t, std::string> seats;  // seat -> run
    std::set<std::string> queue;           // entries: "<time>/<run>"
  };
  using CountsMap = std::map<std::string, CountsView>;
  static void ApplyCount(CountsMap* m, std::string_view repo,
                         std::string_view tail, bool put,
                         const etcdpb::KeyValue& kv);
  static std::vector<RepositoryCounts> CountsOf(const CountsMap& m);
  // Every key under `P repo/`, in pages at one revision, which it returns.
  absl::StatusOr<int64_t> ReadCounts(const Context& ctx, CountsMap* out);
  // The stream's events for the cache (OnWatch, after CollectWatchEvents:
  // without mu_, which a scrape's counting would otherwise hold up).
  void CountEvents(const WatchBatch& batch) PAC_EXCLUDES(counts_mu_);
  // Applies the events of revisions after `after` under `P repo/`.
  void ApplyCountEvents(CountsMap* m, const std::vector<etcdpb::Event>& events,
                        int64_t after) const;
  void DropCountsLocked() PAC_REQUIRES(counts_mu_);

  std::shared_ptr<EtcdKV> kv_;
  const std::string prefix_;
  const absl::Duration ttl_;
  const int64_t ttl_seconds_;
  Clock* const clock_;
  const std::shared_ptr<spdlog::logger> logger_;
  const bool background_;
  const std::string instance_id_;  // random: commit ids unique across drivers
  std::atomic<uint64_t> next_commit_{0};
  std::atomic<bool> closed_{false};

  WatchDispatcher dispatcher_;
  WatcherRegistry watchers_;
  mutable Mutex mu_;
  CondVar cv_;

  std::set<std::string> to_promote_ PAC_GUARDED_BY(mu_);
  // Shared limits whose pass failed (SharedPass): PromoteLoop passes them
  // again, after a pause that doubles, until one succeeds.
  std::set<std::string> to_pass_ PAC_GUARDED_BY(mu_);
  // Repositories to step at a queue deadline (Unix µs by clock_).
  std::map<std::string, int64_t> deadline_steps_ PAC_GUARDED_BY(mu_);
  int clock_listener_ = 0;  // wakes PromoteLoop when a test clock jumps
  std::vector<int64_t> spare_leases_ PAC_GUARDED_BY(mu_);
  // When the TTL of each lease this driver knows (spares, and leases it
  // handed out in a Lease) last (re)started: a spare is used, and a
  // released lease reused, only while young.
  std::map<int64_t, absl::Time> lease_since_ PAC_GUARDED_BY(mu_);
  bool refill_wanted_ PAC_GUARDED_BY(mu_) = false;
  CondVar refill_cv_;
  // Each repository as the last Txn or read left it, at `revision`;
  // dropped when the watch reports a later change.
  std::map<std::string, RepoView> views_ PAC_GUARDED_BY(mu_);
  // Signalled when the watch applies changes to cached views.
  CondVar views_cv_;
  // The revision of this driver's last guarded commit per repository that
  // the view cache did not take (Commit::kQueue).
  std::map<std::string, int64_t> own_commit_rev_ PAC_GUARDED_BY(mu_);
  // Repositories whose turn is taken (TakeTurn).
  std::set<std::string> turns_ PAC_GUARDED_BY(mu_);
  // Releases waiting for each repository's turn, oldest first.
  std::map<std::string, std::deque<ReleaseReq*>> release_waiters_
      PAC_GUARDED_BY(mu_);
  CondVar turns_cv_;
  int64_t last_revision_ PAC_GUARDED_BY(mu_) = 0;
  // The current stream delivers every change from this revision on
  // (INT64_MAX: unknown, after a restart from "now").
  int64_t watch_from_ PAC_GUARDED_BY(mu_) = INT64_MAX;
  // The latest revision the stream delivered for each repository; views
  // older than it are not cached. Below the floor, all are unknown.
  std::map<std::string, int64_t> event_rev_ PAC_GUARDED_BY(mu_);
  int64_t event_rev_floor_ PAC_GUARDED_BY(mu_) = 0;
  bool restart_watch_ PAC_GUARDED_BY(mu_) = false;
  bool stop_ PAC_GUARDED_BY(mu_) = false;
  // Serialises replacing the watch stream (promote thread, Close, tests).
  // Taken before mu_, never while holding it: destroying a stream joins
  // its thread, which may be waiting for mu_ in OnWatch.
  Mutex watch_mu_;
  std::unique_ptr<EtcdWatch> watch_ PAC_GUARDED_BY(watch_mu_);
  std::atomic<bool> watch_started_{false};
  // The counts cache: kBuilding while a read fills it (the stream's events
  // wait in counts_backlog_), kReady once it holds every repository at
  // counts_revision_ plus the events since. A stream that broke or met a
  // compaction drops it (kNone); counts_gen_ tells a read that finishes
  // after that not to install.
  enum class CountsState { kNone, kBuilding, kReady };
  // Its own mutex, never held with mu_.
  mutable Mutex counts_mu_;
  CountsState counts_state_ PAC_GUARDED_BY(counts_mu_) = CountsState::kNone;
  uint64_t counts_gen_ PAC_GUARDED_BY(counts_mu_) = 0;
  CountsMap counts_ PAC_GUARDED_BY(counts_mu_);
  int64_t counts_revision_ PAC_GUARDED_BY(counts_mu_) = 0;
  std::vector<etcdpb::Event> counts_backlog_ PAC_GUARDED_BY(counts_mu_);
  std::thread promote_thread_;
  std::thread refill_thread_;  // keeps spare_leases_ stocked
};

// The in-process store shared by every "mock"/"memory" mode driver of one
// process and clock (so that two drivers see one state, as two processes on
// one etcd would).
std::shared_ptr<EtcdKV> SharedMockEtcd(Clock* clock);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_ETCD_ETCD_DRIVER_H_
