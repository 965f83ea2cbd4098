// The PostgreSQL driver: state in the database, so every process that shares
// it sees one set of leases and one queue per repository.
//
// * Admission is a single call of a server-side function
//   (schema_functions.cc): one round trip, one transaction that locks the
//   repository's row (a refusal of a run that would not queue reads
//   without it), judged by the database clock. A release by lease id
//   commits without the lock; a second transaction of the same round trip
//   (pipeline mode, pg_release.cc) sends its notifications and looks for a
//   run queued meanwhile beside the freed slot, which pac_settle then
//   admits; a call that queued runs settles too.
// * Watches: one LISTEN connection per driver on channel pac_concurrency;
//   after a reconnect every watcher gets kResync (re-read state). An
//   optional poll interval sends kResync periodically for poolers that
//   break LISTEN.
// * A cleanup thread sleeps until the earliest lease expiry (re-checked at
//   least every 2 s for leases of other processes) and calls pac_reap().
// * Calls that fail with a retryable error are retried on a new connection
//   until the context's deadline (or connection_timeout without one): every
//   operation is idempotent.
#ifndef PAC_SRC_POSTGRESQL_POSTGRESQL_DRIVER_H_
#define PAC_SRC_POSTGRESQL_POSTGRESQL_DRIVER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "pac/concurrency/driver.h"
#include "src/common/mutex.h"
#include "src/common/watch_dispatcher.h"
#include "src/postgresql/pg_pool.h"

namespace pac::concurrency::internal {

class PostgreSQLDriver final : public Driver {
 public:
  static absl::StatusOr<std::unique_ptr<Driver>> Create(
      const PostgreSQLConfig& config, const DriverOptions& options);
  ~PostgreSQLDriver() override;

  std::string_view Type() const override { return "postgresql"; }
  absl::StatusOr<AcquireResult> AcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key,
      const AcquireOptions& options) override;
  using Driver::AcquireSlot;
  absl::StatusOr<ImportResult> ImportRuns(
      const Context& ctx, const Repository& repo,
      const ImportRequest& request) override;
  absl::StatusOr<std::vector<ImportResult>> ImportBatch(
      const Context& ctx, const std::vector<RepositoryImport>& parts) override;
  absl::StatusOr<std::vector<RepositoryCounts>> GetRepositoryCounts(
      const Context& ctx) override;
  absl::StatusOr<std::vector<RepositoryListing>> ListRepositorySnapshots(
      const Context& ctx, std::string_view namespace_name,
      std::string_view after, size_t limit) override;
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
  absl::Status SetSharedLimit(const Context& ctx,
                              const SharedLimit& limit) override;
  absl::Status DeleteSharedLimit(const Context& ctx,
                                 std::string_view name) override;
  absl::StatusOr<std::vector<SharedLimitStatus>> ListSharedLimits(
      const Context& ctx) override;
  absl::Status SetRepositoryPolicy(const Context& ctx,
                                   std::string_view repo_key,
                                   const RepositoryPolicy& policy) override;
  absl::StatusOr<RepositoryPolicy> GetRepositoryPolicy(
      const Context& ctx, std::string_view repo_key) override;
  absl::Status CleanupRepository(const Context& ctx,
                                 std::string_view repo_key) override;
  absl::Duration LeaseTTL() const override { return config_.lease_ttl; }
  absl::Status Close() override;

 private:
  PostgreSQLDriver(const PostgreSQLConfig& config,
                   const DriverOptions& options);

  // Runs `sql` with retries on retryable failures until the budget ends.
  // `notifies`: `sql` calls a function that may notify watchers; once it
  // has committed, the connection sends what it collected
  // (pac_send_notify, schema_functions.cc): always (kYes), or when the result's
  // last column says something waits (kIfPending, PAC_PENDING). kAfterSettle:
  // when a row says 'notify' (pac_settle).
  // `retry`: kFlagLast, `sql`'s last parameter is p_retry (false in
  // `params`), true from the second attempt on: only a retry looks for the
  // answer its first attempt kept (schema_functions.cc, "Answers kept").
  enum class Notifies { kNo, kYes, kIfPending, kAfterSettle };
  enum class Retry { kNoFlag, kFlagLast };
  absl::StatusOr<PgResult> Query(const Context& ctx, std::string_view sql,
                                 const std::vector<PgParam>& params,
                                 Notifies notifies = Notifies::kNo,
                                 Retry retry = Retry::kNoFlag);
  // Runs `attempt` on a pooled connection, again on a fresh one with
  // backoff after a retryable failure, until the call's budget ends. Its
  // last argument is false for the first attempt, true for the others.
  using Attempt =
      absl::FunctionRef<absl::Status(PgConnection&, const Context&, bool)>;
  absl::Status Retrying(const Context& ctx, Attempt attempt);
  // Sends the connection's collected notifications as `notifies` says.
  void NotifyAfter(PgConnection& conn, const PgResult& result,
                   Notifies notifies);
  // A release by lease id: pac_release_lease and the statement after it,
  // pipelined, then pac_settle if that found a queue (pg_release.cc).
  absl::StatusOr<ReleaseResult> ReleaseLease(const Context& ctx,
                                             std::string_view lease_id,
                                             std::string_view run_key,
                                             std::string_view repo_key);
  // pac_settle for `repo_keys` (in key order) after calls that queued runs
  // under the lock; its admissions, each with its repository (pg_release.cc).
  absl::StatusOr<std::vector<Lease>> Settle(
      const Context& ctx, const std::vector<std::string>& repo_keys);
  // Sends the notifications the connection's last statement collected.
  void FlushNotify(PgConnection& conn);
  std::string TtlMicros() const;
  // A request id (NewRequestId) at the database's time: the local clock
  // plus the offset last measured, so that a host whose clock is behind
  // does not make ids the cleanup takes for old ones.
  std::string RequestId() const;
  // Records the database's clock, read at `server` between the local
  // times `before` and `after`.
  void MeasureClockOffset(absl::Time before, absl::Time server,
                          absl::Time after);
  static Lease LeaseFromRow(const PgResult& r, int row,
                            const std::string& repo_key);
  // An 'admitted' row's lease, logged as a queue admission.
  Lease AdmittedFromRow(const PgResult& r, int row,
                        const std::string& repo_key) const;
  // Adds one row of kSnapshotSql's shape (pg_reads.cc) to `out`.
  static void AddSnapshotRow(const PgResult& r, int row,
                             const std::string& repo_key,
                             RepositorySnapshot* out);

  void ListenLoop();
  // How long the LISTEN connection may stay quiet before it is pinged, and
  // how long the ping may take: min(connection timeout, 10 s).
  absl::Duration ListenerPingEvery() const;
  // The bound of a statement whose caller set no deadline.
  static constexpr absl::Duration kStatementBound = absl::Seconds(60);
  void ReapLoop();
  void Broadcast(WatchEventType type);

  const PostgreSQLConfig config_;
  const std::shared_ptr<spdlog::logger> logger_;
  PgPool pool_;
  std::atomic<bool> closed_{false};
  // The database's clock minus the local one, in microseconds.
  std::atomic<int64_t> clock_offset_us_{0};

  WatchDispatcher dispatcher_;
  WatcherRegistry watchers_;
  Mutex watch_mu_;  // serialises starting the LISTEN thread
  std::atomic<bool> listening_{false};
  // A watch began while LISTEN was down: send kResync once it is up.
  std::atomic<bool> resync_pending_{false};

  Mutex stop_mu_;
  CondVar stop_cv_;
  bool stop_ PAC_GUARDED_BY(stop_mu_) = false;
  std::thread listen_thread_;  // started (under watch_mu_) by the first watch
  std::thread reap_thread_;
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_POSTGRESQL_DRIVER_H_
