// Driver: the storage backend of concurrency control (the specification's
// ConcurrencyDriver), and the types its operations exchange.
//
// Contract (docs/contract.md; the conformance suite checks it for every
// driver):
//  * Thread-safety: every method may be called concurrently from any number
//    of threads, and, for shared backends, processes.
//  * Atomicity: each mutating call is one atomic step on the backend. In
//    particular counting live leases and granting a slot are one step, and a
//    release admits the head of the queue in the same step.
//  * Failure: a call that returns an error wrote nothing (or, when the
//    backend cannot tell, the caller may retry it: every call is idempotent).
//    A Context that is done before the step starts yields Cancelled or
//    DeadlineExceeded and writes nothing.
//  * Ownership: the caller owns the Driver; WatchHandles must be destroyed
//    (or stopped) before the Driver. Close() stops background threads and
//    watches; calls after Close() fail with FailedPrecondition.
#ifndef PAC_CONCURRENCY_DRIVER_H_
#define PAC_CONCURRENCY_DRIVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/clock.h"
#include "pac/concurrency/config.h"
#include "pac/concurrency/context.h"
#include "pac/concurrency/repository.h"

namespace spdlog {
class logger;
}

namespace pac::concurrency {

// A held slot.
struct Lease {
  std::string lease_id;  // opaque, printable, unique per backend
  std::string repository_key;
  std::string pipeline_run_key;
  absl::Time acquired_at;
  absl::Time expires_at;
  // Strictly increases per repository with every grant (rule 4).
  int64_t fencing_token = 0;
  // A newer run of its supersede group asked this run to stop
  // (AcquireOptions::cancel_running): its holder should stop the run and
  // release. The slot stays held until it does (or the lease expires). Set
  // in renew answers, listings and an acquire that finds the lease; a new
  // grant never has it.
  bool cancel_requested = false;
};

// A run waiting for a slot.
struct QueueEntry {
  std::string pipeline_run_key;
  absl::Time creation_time;  // ordering key (RepositoryPolicy::mode)
  int64_t sequence = 0;      // last ordering key: enqueue order
  absl::Time enqueued_at;
  int64_t position = 0;  // 1 = head of the queue
  int32_t priority = 0;  // AcquireOptions::priority
};

struct AcquireOptions {
  // The run's creation time, which orders the queue. Unset: the time the run
  // is first seen by the backend.
  std::optional<absl::Time> creation_time;
  // When no slot is free: true queues the run (it is admitted later, oldest
  // first, by a release); false leaves nothing behind.
  bool enqueue = true;
  // Record a run that is already running (an import after a restart): it
  // takes a slot even above the limit, as lowering a limit never evicts.
  bool adopt_running = false;
  // Admit under the limit the backend has recorded for the repository, and
  // leave it as it is; `repo.concurrency_limit` is recorded only when none
  // is. For a caller that learnt the limit from the backend: another
  // process may change it meanwhile, which writing it back would undo.
  bool keep_recorded_limit = false;
  // A supersede group (docs/policies.md, "Supersede groups"): a pull
  // request, a branch. Of a group's queued runs only the newest stays:
  // submitting a run removes the group's older queued runs (reason
  // kRemovedSuperseded) in the same step, and a run older than one the
  // group has queued is itself removed and refused (RunRemovedError).
  // Running runs are left alone unless `cancel_running`. Empty: no group.
  // At most 253 bytes of printable ASCII without spaces. A run keeps its
  // group while it runs (for cancel_running).
  std::string group;
  // With a group: a new submit (one that queues the run or grants it a
  // slot, not one that finds it already there) also asks every other
  // running run of the group in the repository to stop, in the same step
  // (docs/policies.md, "Cancelling running runs"): each gets
  // Lease::cancel_requested, in renew answers and listings, and its
  // watchers a kCancelRequested event. Their slots stay held until they
  // release. InvalidArgument without a group; ignored with adopt_running.
  bool cancel_running = false;
  // The longest this run may wait in the queue, from when it is queued
  // (docs/policies.md, "Queue time limit"): past it the run leaves the
  // queue with reason kRemovedTimedOut. Unset: the repository's
  // RepositoryPolicy::max_queue_time, if any. Between 1 ms and
  // kMaxQueueTimeLimit.
  std::optional<absl::Duration> max_queue_time;
  // The run's priority: under QueueMode::kPriority higher runs are
  // admitted first. Kept with the run under every mode, so that a later
  // change of mode orders by it.
  int32_t priority = 0;
};

// The order a repository's queue admits in (docs/policies.md, "Queue
// order"). Each is total: ties of creation time go by enqueue order.
enum class QueueMode {
  kOldestFirst,  // creation time, then enqueue order (the default)
  kNewestFirst,  // latest creation time first, then enqueue order
  kPriority,     // higher priority first, then oldest-first
};
// "oldest-first", "newest-first", "priority".
[[nodiscard]] std::string_view QueueModeName(QueueMode mode);
// The mode of a name QueueModeName gives; InvalidArgument naming `field`
// for any other.
[[nodiscard]] absl::StatusOr<QueueMode> ParseQueueMode(std::string_view name,
                                                       std::string_view field);

// The longest a queue time limit may be.
inline constexpr absl::Duration kMaxQueueTimeLimit = absl::Hours(24 * 366);

// What a repository's queue does beyond its limit (docs/policies.md).
// Driver::SetRepositoryPolicy records it for every process sharing the
// backend.
struct RepositoryPolicy {
  // The longest a run may wait in the repository's queue, from when it was
  // queued; a run's own AcquireOptions::max_queue_time comes first. Live:
  // a change applies to the runs queued already. Unset: no limit. Between
  // 1 ms and kMaxQueueTimeLimit.
  std::optional<absl::Duration> max_queue_time;
  // The queue's order. A change reorders the queued runs in the same step.
  QueueMode mode = QueueMode::kOldestFirst;
  // The shared limits the repository draws from (docs/policies.md, "Shared
  // limits"), by name: a run is admitted only when the repository and each
  // of these has a free slot. Live: joining takes effect for the next
  // admission, leaving frees the repository's running runs from the
  // limit's count. A name no limit is set for limits nothing. Sorted, no
  // name twice, at most kMaxSharedLimitsPerRepository, each a valid
  // shared limit name (ValidateSharedLimitName).
  std::vector<std::string> shared_limits;
  bool operator==(const RepositoryPolicy&) const = default;
};

// A limit many repositories draw from (docs/policies.md, "Shared limits"):
// a namespace, a team, a cluster-wide cap. Its members are the
// repositories whose RepositoryPolicy::shared_limits names it.
struct SharedLimit {
  // 1 to 63 bytes of lowercase letters, digits, '-', '.' and '_', starting
  // and ending with a letter or digit.
  std::string name;
  // The most runs of its members that may hold slots at once; 0: no limit.
  int32_t limit = 0;
  bool operator==(const SharedLimit&) const = default;
};
inline constexpr size_t kMaxSharedLimitsPerRepository = 8;
// InvalidArgument naming `field` unless `name` is a valid shared limit
// name.
[[nodiscard]] absl::Status ValidateSharedLimitName(std::string_view name,
                                                   std::string_view field);

// One shared limit as the backend holds it (Driver::ListSharedLimits).
struct SharedLimitStatus {
  std::string name;
  std::optional<int32_t> limit;      // nullopt: named by members, never set
  int64_t running = 0;               // unexpired leases of its members
  int64_t queued = 0;                // queued runs of its members
  std::vector<std::string> members;  // repository keys, in key order
};

struct AcquireResult {
  bool acquired = false;
  Lease lease;           // set when acquired
  int64_t position = 0;  // when queued: 1-based place in the queue, else 0
  // Other runs admitted by this call (expired leases reclaimed, a raised
  // limit), which their holders learn of through watches.
  std::vector<Lease> admitted;
};

// One repository at one moment (Driver::GetRepositorySnapshot).
struct RepositorySnapshot {
  std::optional<int32_t> limit;              // as GetRepositoryLimit
  std::vector<Lease> running;                // as GetRunningPipelineRuns
  std::vector<QueueEntry> queued;            // as GetQueuedPipelineRuns
  QueueMode mode = QueueMode::kOldestFirst;  // the order `queued` is in
};

// One repository's runs as a cluster shows them (Driver::ImportRuns).
struct ImportRequest {
  // Runs the cluster shows running: each takes a slot, above the limit too
  // (as AcquireOptions::adopt_running).
  std::vector<std::string> running;
  // Runs the cluster shows waiting, in admission order, each with the time
  // its queue place is kept by; runs with equal times keep this order.
  struct Waiting {
    std::string pipeline_run_key;
    absl::Time creation_time;
    // As AcquireOptions::group and ::priority, kept with the queued run
    // (an import does not supersede: the cluster shows these runs
    // waiting). Ignored for a run the backend holds already.
    std::string group;
    int32_t priority = 0;
  };
  std::vector<Waiting> waiting;
  // Record repo.concurrency_limit. False: keep the limit the backend
  // records, and record the repository's only when none is (as
  // AcquireOptions::keep_recorded_limit).
  bool set_limit = false;
};

struct ImportResult {
  std::vector<Lease> running;  // the leases of request.running, in its order
  // The waiting runs that hold a slot after the step (granted by it or by
  // an earlier one: the runs whose controller must start them), in request
  // order.
  std::vector<Lease> admitted;
  // The waiting runs still queued, with their places, in request order.
  std::vector<QueueEntry> queued;
  // Runs outside the request admitted by the step (a raised limit, expired
  // leases reclaimed).
  std::vector<Lease> others_admitted;
};

// One repository's sizes (Driver::GetRepositoryCounts).
struct RepositoryCounts {
  std::string repository_key;
  std::optional<int32_t> limit;  // as GetRepositoryLimit
  int64_t running = 0;           // unexpired leases
  int64_t queued = 0;            // queued runs
};

// One repository of a listing (Driver::ListRepositorySnapshots).
struct RepositoryListing {
  std::string repository_key;
  RepositorySnapshot snapshot;
};

// One repository's part of an ImportBatch.
struct RepositoryImport {
  Repository repository;
  ImportRequest request;
};

// How much one ImportBatch may carry (Driver::GetImportCapacity): the
// parts' runs, plus `per_repository` for each part, at most `runs`.
struct ImportCapacity {
  size_t runs = 0;
  size_t per_repository = 0;
  // What `parts` cost against `runs`.
  [[nodiscard]] size_t CostOf(
      const std::vector<RepositoryImport>& parts) const {
    size_t cost = 0;
    for (const RepositoryImport& p : parts) {
      cost +=
          per_repository + p.request.running.size() + p.request.waiting.size();
    }
    return cost;
  }
};

struct ReleaseResult {
  bool released = false;        // a lease was released
  bool dequeued = false;        // a queue entry was removed
  std::vector<Lease> admitted;  // runs admitted into the freed slot(s)
};

enum class WatchEventType {
  kReleased,      // a lease was released
  kExpired,       // a lease expired and was reclaimed
  kAdmitted,      // a run was granted a slot
  kLimitChanged,  // the repository's limit changed
  kCleaned,       // the repository was cleaned up
  kResync,        // the watch reconnected: re-read state
  kRemoved,       // a queued run left the queue without a slot (reason)
  // A running run was asked to stop by a newer run of its supersede group
  // (AcquireOptions::cancel_running); it still holds its slot.
  kCancelRequested,
};

// Why a run left the queue without a slot (WatchEvent::reason,
// RunRemovedReason). docs/policies.md.
inline constexpr std::string_view kRemovedCleared = "cleared";
inline constexpr std::string_view kRemovedSuperseded = "superseded";
inline constexpr std::string_view kRemovedTimedOut = "timed-out";

struct WatchEvent {
  WatchEventType type;
  std::string repository_key;
  std::string pipeline_run_key;  // empty for kLimitChanged/kCleaned/kResync
  std::string reason;  // kRemoved only: kRemovedCleared, ... kRemovedTimedOut
};

// What Driver::ClearQueue removed.
struct ClearQueueResult {
  std::vector<std::string> removed;  // the runs, in admission order
};

using WatchCallback = std::function<void(const WatchEvent&)>;

// Stops a watch when destroyed or on Stop(). After Stop() returns the
// callback is not running and will not run again (unless Stop() is called
// from inside the callback, where it only prevents later calls).
class WatchHandle {
 public:
  virtual ~WatchHandle() = default;
  virtual void Stop() = 0;
};

class Driver {
 public:
  virtual ~Driver() = default;

  // "memory", "postgresql" or "etcd".
  [[nodiscard]] virtual std::string_view Type() const = 0;

  // Grants `run` a slot in `repo` if the repository has a free slot and no
  // older run is queued; otherwise queues it (options.enqueue). Records the
  // repository's limit from `repo`; a raised limit admits queued runs. A run
  // that already holds an unexpired lease gets that lease back (rule 2); a
  // run already queued keeps its place.
  [[nodiscard]] virtual absl::StatusOr<AcquireResult> AcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key,
      const AcquireOptions& options) = 0;
  [[nodiscard]] absl::StatusOr<AcquireResult> AcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key) {
    return AcquireSlot(ctx, repo, run_key, AcquireOptions{});
  }

  // Releases a lease and admits the head of the queue in the same step.
  // With a non-empty `lease_id` only that lease is released (a stale holder
  // cannot release a newer lease of the same run). With an empty `lease_id`
  // the run's lease in `repo_key` is released, and the run is removed from
  // the queue if it waits there. Releasing something unknown is not an
  // error: the result says nothing was released (rule 12).
  [[nodiscard]] virtual absl::StatusOr<ReleaseResult> ReleaseSlot(
      const Context& ctx, std::string_view lease_id, std::string_view run_key,
      std::string_view repo_key) = 0;

  // Extends an unexpired lease by the driver's TTL from now. An expired,
  // released or unknown lease fails with LeaseLostError (IsLeaseLost).
  [[nodiscard]] virtual absl::StatusOr<Lease> RenewLease(
      const Context& ctx, std::string_view lease_id) = 0;

  // Sets the repository's limit (rule 11): lowering evicts nobody; raising
  // admits queued runs at once, returned here.
  [[nodiscard]] virtual absl::StatusOr<std::vector<Lease>> SetRepositoryLimit(
      const Context& ctx, const Repository& repo) = 0;

  // Records what a cluster shows of one repository (an import, docs/
  // migration.md): the running runs take slots, the waiting runs are
  // queued, or admitted into free slots oldest first, and a run the
  // backend already holds keeps its lease or its place, so the same
  // request sent again changes nothing. At most kMaxImportRuns runs; a
  // request naming a run twice, or in both lists, is InvalidArgument and
  // writes nothing. The memory and PostgreSQL drivers take the whole
  // request as one atomic step, and so does etcd up to its
  // GetImportCapacity() (one Txn); a longer request is written there in
  // parts of that size, oldest first, each atomic and idempotent, so an
  // interrupted call may leave part written and is completed by calling it
  // again. This default makes one AcquireSlot per run (the same, run by
  // run).
  static constexpr size_t kMaxImportRuns = 5000;
  [[nodiscard]] virtual absl::StatusOr<ImportResult> ImportRuns(
      const Context& ctx, const Repository& repo, const ImportRequest& request);

  // Records what a cluster shows of several repositories as one atomic
  // step: every part is written as ImportRuns would write it, or, on any
  // error, none is. Parts name distinct repositories; each part is checked
  // as ImportRuns checks it, and a batch costing more than
  // GetImportCapacity() allows is InvalidArgument; either writes nothing.
  // The answers come in the parts' order. Sent again, the batch changes
  // nothing. The memory, PostgreSQL and etcd drivers take the batch as one
  // step (etcd: one Txn); this default calls ImportRuns part by part, each
  // atomic, the whole not.
  [[nodiscard]] virtual absl::StatusOr<std::vector<ImportResult>> ImportBatch(
      const Context& ctx, const std::vector<RepositoryImport>& parts);
  // The most one ImportBatch may carry on this driver. Memory and
  // PostgreSQL: kMaxImportRuns runs. etcd: 64 runs and repositories (a
  // Txn of at most 128 operations; each costs two at most).
  [[nodiscard]] virtual ImportCapacity GetImportCapacity() {
    return ImportCapacity{kMaxImportRuns, 0};
  }

  // The sizes of every repository ListRepositories("") lists, in key
  // order: what a metrics scrape needs, without the runs. The memory and
  // PostgreSQL drivers read them in one pass (one statement), etcd in one
  // paged read of its keys; this default makes one ListRepositories and a
  // GetRepositorySnapshot per repository.
  [[nodiscard]] virtual absl::StatusOr<std::vector<RepositoryCounts>>
  GetRepositoryCounts(const Context& ctx);

  // A page of a listing: the repositories ListRepositories(namespace_name)
  // lists whose keys come after `after` in byte order (empty: from the
  // first), at most `limit` of them (0: all), in key order, each with its
  // snapshot (as GetRepositorySnapshot: each consistent on its own; the
  // page is not one moment). `after` need not be a listed key. The cost
  // follows the page, not the backend's size: PostgreSQL reads a page in
  // one statement; this default makes one ListRepositories and one
  // GetRepositorySnapshot per repository of the page.
  [[nodiscard]] virtual absl::StatusOr<std::vector<RepositoryListing>>
  ListRepositorySnapshots(const Context& ctx, std::string_view namespace_name,
                          std::string_view after, size_t limit);

  // The limit last recorded for the repository (0: unlimited), or nullopt
  // when the backend has no record of it. Lets a caller that does not know
  // the limit (a second server, the CLI) acquire without changing it.
  [[nodiscard]] virtual absl::StatusOr<std::optional<int32_t>>
  GetRepositoryLimit(const Context& ctx, std::string_view repo_key) = 0;

  // Keys of the repositories the backend holds a record of (a recorded
  // limit, an unexpired lease or a queued run), in key order: what every
  // process sharing the backend sees, not only this one. A non-empty
  // `namespace_name` lists only that namespace's repositories; it must be a
  // valid namespace name (InvalidArgument otherwise). A repository removed
  // by CleanupRepository is no longer listed.
  [[nodiscard]] virtual absl::StatusOr<std::vector<std::string>>
  ListRepositories(const Context& ctx, std::string_view namespace_name) = 0;

  // Number of unexpired leases of the repository.
  [[nodiscard]] virtual absl::StatusOr<int> GetCurrentSlots(
      const Context& ctx, std::string_view repo_key) = 0;

  // Unexpired leases, oldest grant first.
  [[nodiscard]] virtual absl::StatusOr<std::vector<Lease>>
  GetRunningPipelineRuns(const Context& ctx, std::string_view repo_key) = 0;

  // The queue in admission order (rule 6).
  [[nodiscard]] virtual absl::StatusOr<std::vector<QueueEntry>>
  GetQueuedPipelineRuns(const Context& ctx, std::string_view repo_key) = 0;

  // The limit, running runs and queue as one consistent state: a run is in
  // at most one of the lists, and a hand-off is seen entirely or not at
  // all. The three calls above are separate reads, each of its own moment.
  // The memory, PostgreSQL and etcd drivers read it in one step (one lock,
  // one statement, one Range); this default makes the three calls.
  [[nodiscard]] virtual absl::StatusOr<RepositorySnapshot>
  GetRepositorySnapshot(const Context& ctx, std::string_view repo_key);

  // Calls `callback` when a slot of the repository frees or a run is
  // admitted (rule 8). The watch ends when the handle is stopped or
  // destroyed, when `ctx` is cancelled, or when the driver closes. Callbacks
  // run on a driver thread, one at a time per watch; they may call the
  // driver.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<WatchHandle>>
  WatchSlotAvailability(const Context& ctx, std::string_view repo_key,
                        WatchCallback callback) = 0;

  // Free-form state strings, as in the specification. Getting a state that
  // was never set is NotFound.
  [[nodiscard]] virtual absl::Status SetRepositoryState(
      const Context& ctx, const Repository& repo, std::string_view state) = 0;
  [[nodiscard]] virtual absl::StatusOr<std::string> GetRepositoryState(
      const Context& ctx, std::string_view repo_key) = 0;
  [[nodiscard]] virtual absl::Status SetPipelineRunState(
      const Context& ctx, std::string_view run_key, std::string_view state) = 0;
  [[nodiscard]] virtual absl::StatusOr<std::string> GetPipelineRunState(
      const Context& ctx, std::string_view run_key) = 0;

  // Removes every queued run of the repository; running runs keep their
  // slots (docs/policies.md, "Clearing a queue"). Each removed run is
  // recorded as removed with reason kRemovedCleared, and its watchers get
  // kRemoved: from then on AcquireSlot of it fails with RunRemovedError
  // (status.h) rather than queue or admit it, until ReleaseSlot by its key
  // (an empty lease id) or CleanupRepository forgets the record, or an
  // AcquireOptions::adopt_running acquire (the run runs after all) or an
  // import of it running replaces it. A repository with nobody queued
  // answers an empty list. The memory and PostgreSQL drivers clear the
  // queue as one atomic step; etcd clears the runs queued when the call
  // starts, in Txns of up to 60 runs, each atomic (a run
  // queued meanwhile may stay). This default is Unimplemented.
  [[nodiscard]] virtual absl::StatusOr<ClearQueueResult> ClearQueue(
      const Context& ctx, std::string_view repo_key);

  // Records the repository's policy (docs/policies.md), replacing the one
  // recorded, for every process sharing the backend; the default policy
  // (every field unset) forgets it. Live: queued runs past a shortened
  // queue time limit leave the queue with reason kRemovedTimedOut in this
  // step or the driver's next background pass. A policy alone does not
  // list the repository. InvalidArgument for a field out of range. This
  // default is Unimplemented.
  [[nodiscard]] virtual absl::Status SetRepositoryPolicy(
      const Context& ctx, std::string_view repo_key,
      const RepositoryPolicy& policy);
  // The recorded policy; the default one when none is.
  [[nodiscard]] virtual absl::StatusOr<RepositoryPolicy> GetRepositoryPolicy(
      const Context& ctx, std::string_view repo_key);

  // Sets a shared limit (docs/policies.md, "Shared limits") for every
  // process sharing the backend. Raising it (or setting it where none was)
  // admits its members' queued runs at once, oldest head first; lowering
  // it evicts nobody. InvalidArgument for a bad name or a negative limit.
  // This default is Unimplemented.
  [[nodiscard]] virtual absl::Status SetSharedLimit(const Context& ctx,
                                                    const SharedLimit& limit);
  // Forgets a shared limit: its members are no longer held by it (their
  // policies still name it, and are held again if it is set again).
  // Deleting a limit never set is not an error. This default is
  // Unimplemented.
  [[nodiscard]] virtual absl::Status DeleteSharedLimit(const Context& ctx,
                                                       std::string_view name);
  // Every shared limit that is set or named by a member, in name order,
  // with its members and their counts. This default is Unimplemented.
  [[nodiscard]] virtual absl::StatusOr<std::vector<SharedLimitStatus>>
  ListSharedLimits(const Context& ctx);

  // Removes every lease, queue entry and state of the repository (and the
  // states of its runs), its policy, and nothing else (rule 13). Watchers
  // get kCleaned.
  [[nodiscard]] virtual absl::Status CleanupRepository(
      const Context& ctx, std::string_view repo_key) = 0;

  // The lease TTL this driver grants.
  [[nodiscard]] virtual absl::Duration LeaseTTL() const = 0;

  // Stops background work and watches. Idempotent.
  virtual absl::Status Close() = 0;
};

// Options for the driver factories that are not part of the configuration.
struct DriverOptions {
  Clock* clock = nullptr;  // null: Clock::Real(); must outlive the driver
  std::shared_ptr<spdlog::logger> logger;  // null: logs are dropped
  // Memory driver: run the background cleanup thread (tests turn it off to
  // prove that admission alone ignores expired leases).
  bool background_cleanup = true;
};

// Creates the driver named by `config.driver`. The configuration is
// validated first (InvalidArgument naming the field); a driver that is not
// built in gives Unimplemented.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Driver>> NewDriver(
    const DriverConfig& config, const DriverOptions& options = {});

// The in-process driver.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Driver>> NewMemoryDriver(
    const MemoryConfig& config, const DriverOptions& options = {});

// The PostgreSQL driver. Connects, checks credentials and TLS, and migrates
// the schema before returning: Unavailable if the server cannot be reached
// within connection_timeout, Unauthenticated for a wrong password,
// FailedPrecondition for a TLS verification failure. Expiry is judged by
// the database clock, so DriverOptions::clock is not used.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Driver>> NewPostgreSQLDriver(
    const PostgreSQLConfig& config, const DriverOptions& options = {});

// The etcd driver. Mode "etcd" speaks gRPC to `config.endpoints` (dialled
// within dial_timeout: Unavailable if none answers, Unauthenticated for a
// wrong password). Modes "mock" and "memory" use an in-process store with
// etcd's semantics, shared by every such driver of the process that uses
// the same DriverOptions::clock, and honour that clock for lease expiry.
[[nodiscard]] absl::StatusOr<std::unique_ptr<Driver>> NewEtcdDriver(
    const EtcdConfig& config, const DriverOptions& options = {});

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_DRIVER_H_
