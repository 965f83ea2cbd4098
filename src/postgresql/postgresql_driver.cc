#include "src/postgresql/postgresql_driver.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <tuple>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/postgresql/pg_common.h"
#include "src/postgresql/schema.h"

namespace pac::concurrency::internal {
namespace {

constexpr const char* kChannel = "pac_concurrency";

// The last column of a select from pac_acquire or pac_release: whether the
// call left notifications for pac_flush_notify (schema_functions.cc). The
// function has run to its end before its first row is read (a PL/pgSQL function
// returns its rows all at once), so the setting is what the call left. A
// call that left none (most acquires) needs no second round trip.
#define PAC_PENDING \
  "coalesce(current_setting('pac.pending_notify', true), '') <> ''"

constexpr const char* kAcquireSql =
    "SELECT o_kind, o_run, o_lease, " PAC_MICROS("o_acquired") ", " PAC_MICROS(
        "o_expires") ", o_token, o_pos, " PAC_PENDING
                     " FROM pac_acquire($1, $2, $3::int,"
                     // Whole seconds, then microseconds: one product of a
                     // bigint and an interval goes through a double, exact only
                     // below 2^53 µs (2255).
                     " CASE WHEN $4::bigint IS NULL THEN NULL ELSE "
                     "'epoch'::timestamptz +"
                     " ($4::bigint / 1000000) * interval '1 second' +"
                     " ($4::bigint % 1000000) * interval '1 microsecond' END,"
                     " $5::boolean, $6::boolean,"
                     " $7::bigint * interval '1 microsecond', $8::boolean, $9,"
                     " $10, $11::bigint * interval '1 microsecond',"
                     " $12::int, $13::boolean, $14::boolean)";

constexpr const char* kReleaseSql =
    "SELECT o_kind, o_run, o_lease, " PAC_MICROS("o_acquired") ", " PAC_MICROS(
        "o_expires") ", o_token, o_pos, " PAC_PENDING
                     " FROM pac_release($1, $2, $3,"
                     " $4::bigint * interval '1 microsecond', $5, $6::boolean)";

constexpr const char* kRenewSql =
    "UPDATE concurrency_slots SET expires_at = clock_timestamp() + $2::bigint *"
    " interval '1 microsecond', updated_at = clock_timestamp()"
    " WHERE lease_id = $1 AND state = 'running' AND expires_at >"
    " clock_timestamp() RETURNING 'acquired', pipeline_run_key, "
    "lease_id, " PAC_MICROS("acquired_at") ", " PAC_MICROS(
        "expires_at") ", fencing_token, 0, repository_key, cancel_requested";

WatchEventType EventType(std::string_view name) {
  if (name == "released") return WatchEventType::kReleased;
  if (name == "expired") return WatchEventType::kExpired;
  if (name == "admitted") return WatchEventType::kAdmitted;
  if (name == "limit") return WatchEventType::kLimitChanged;
  if (name == "cleaned") return WatchEventType::kCleaned;
  if (name.starts_with("removed:")) return WatchEventType::kRemoved;
  if (name == "cancel") return WatchEventType::kCancelRequested;
  return WatchEventType::kResync;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Driver>> PostgreSQLDriver::Create(
    const PostgreSQLConfig& config, const DriverOptions& options) {
  DriverConfig whole;
  whole.driver = "postgresql";
  whole.postgresql = config;
  if (absl::Status s = ValidateConfig(whole); !s.ok()) return s;
  auto logger = OrNullLogger(options.logger);
  // Check reachability, credentials and TLS, and migrate, before handing out
  // a driver: a wrong setting fails here with a clear error.
  Context ctx =
      Context::WithTimeout(Context::Background(), config.connection_timeout);
  auto conn = PgConnection::Open(config, ctx);
  if (!conn.ok()) {
    logger->error("cannot connect to postgresql at {}:{}: {}", config.host,
                  config.port, conn.status().ToString());
    return conn.status();
  }
  if (absl::Status s = Migrate(**conn, ctx); !s.ok()) {
    logger->error("postgresql schema migration failed: {}", s.ToString());
    return s;
  }
  std::unique_ptr<PostgreSQLDriver> driver(
      new PostgreSQLDriver(config, options));
  const absl::Time before = absl::Now();
  auto server_now =
      (*conn)->Exec(ctx, "SELECT " PAC_MICROS("clock_timestamp()"), {});
  if (!server_now.ok()) return server_now.status();
  driver->MeasureClockOffset(before, server_now->GetMicros(0, 0), absl::Now());
  if (options.background_cleanup) {
    driver->reap_thread_ = std::thread([d = driver.get()] { d->ReapLoop(); });
  }
  logger->info("postgresql driver connected to {}:{}/{} (sslmode {}, pool {})",
               config.host, config.port, config.database, config.ssl_mode,
               config.max_connections);
  return std::unique_ptr<Driver>(std::move(driver));
}

PostgreSQLDriver::PostgreSQLDriver(const PostgreSQLConfig& config,
                                   const DriverOptions& options)
    : config_(config), logger_(OrNullLogger(options.logger)), pool_(config) {}

PostgreSQLDriver::~PostgreSQLDriver() { (void)Close(); }

absl::Status PostgreSQLDriver::Close() {
  if (closed_.exchange(true)) return absl::OkStatus();
  {
    MutexLock lock(&stop_mu_);
    stop_ = true;
  }
  stop_cv_.NotifyAll();
  {
    // The thread is started under watch_mu_; after closed_ is set no new one
    // starts, so joining outside the lock is safe.
    MutexLock lock(&watch_mu_);
  }
  if (listen_thread_.joinable()) listen_thread_.join();
  if (reap_thread_.joinable()) reap_thread_.join();
  watchers_.StopAll();
  dispatcher_.Shutdown();
  pool_.Close();
  logger_->info("postgresql driver closed");
  return absl::OkStatus();
}

std::string PostgreSQLDriver::RequestId() const {
  return NewRequestId(absl::Now() +
                      absl::Microseconds(clock_offset_us_.load()));
}

void PostgreSQLDriver::MeasureClockOffset(absl::Time before, absl::Time server,
                                          absl::Time after) {
  const absl::Time local = before + (after - before) / 2;
  clock_offset_us_.store(absl::ToInt64Microseconds(server - local));
}

std::string PostgreSQLDriver::TtlMicros() const {
  return std::to_string(absl::ToInt64Microseconds(config_.lease_ttl));
}

absl::Duration PostgreSQLDriver::ListenerPingEvery() const {
  return std::min(config_.connection_timeout, absl::Seconds(10));
}

namespace {

// Whether a row's last column (PAC_PENDING) says notifications wait, or
// there is no row to say (a call that found nothing may still have
// reclaimed an expired lease).
bool Pending(const PgResult& r) {
  if (r.rows() == 0) return true;
  for (int row = 0; row < r.rows(); ++row) {
    if (r.Get(row, r.columns() - 1) == "t") return true;
  }
  return false;
}

}  // namespace

absl::Status PostgreSQLDriver::Retrying(const Context& caller_ctx,
                                        Attempt attempt) {
  // A call without a deadline still ends: a statement on a connection
  // that died unseen would otherwise wait for TCP to give up (hours).
  const Context ctx = caller_ctx.deadline() == absl::InfiniteFuture()
                          ? Context::WithTimeout(caller_ctx, kStatementBound)
                          : caller_ctx;
  const absl::Time budget_end = caller_ctx.deadline() == absl::InfiniteFuture()
                                    ? absl::Now() + config_.connection_timeout
                                    : caller_ctx.deadline();
  absl::Duration backoff = absl::Milliseconds(50);
  int attempts = 0;  // sent to the server
  while (true) {
    if (closed_.load()) {
      return absl::FailedPreconditionError("postgresql driver is closed");
    }
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    absl::Status failure;
    auto handle = pool_.Get(ctx);
    if (handle.ok()) {
      failure = attempt(**handle, ctx, attempts++ > 0);
      if (failure.ok()) return failure;
    } else {
      failure = handle.status();
    }
    if (!IsRetryable(failure) || absl::Now() + backoff >= budget_end) {
      if (IsRetryable(failure)) {
        logger_->warn("postgresql unavailable, giving up: {}",
                      failure.ToString());
      }
      return failure;
    }
    logger_->warn("postgresql call failed, retrying in {}: {}",
                  absl::FormatDuration(backoff), failure.ToString());
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

void PostgreSQLDriver::NotifyAfter(PgConnection& conn, const PgResult& result,
                                   Notifies notifies) {
  bool send = notifies == Notifies::kYes;
  if (notifies == Notifies::kIfPending) send = Pending(result);
  if (notifies == Notifies::kAfterSettle) {
    for (int row = 0; row < result.rows() && !send; ++row) {
      send = result.Get(row, 0) == "notify";
    }
  }
  if (send) FlushNotify(conn);
}

absl::StatusOr<PgResult> PostgreSQLDriver::Query(
    const Context& ctx, std::string_view sql,
    const std::vector<PgParam>& params, Notifies notifies, Retry retry) {
  std::optional<PgResult> out;
  absl::Status s = Retrying(
      ctx,
      [&](PgConnection& conn, const Context& c, bool retrying) -> absl::Status {
        auto result = retry == Retry::kFlagLast && retrying
                          ? conn.Exec(c, sql, WithRetryFlag(params, true))
                          : conn.Exec(c, sql, params);
        if (!result.ok()) return result.status();
        NotifyAfter(conn, *result, notifies);
        out.emplace(std::move(*result));
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  return std::move(*out);
}

void PostgreSQLDriver::FlushNotify(PgConnection& conn) {
  // Its own bound, not the caller's: the statement committed, and its
  // watchers are told even when the caller's time has just run out.
  const Context ctx = Context::WithTimeout(
      Context::Background(),
      std::min(config_.connection_timeout, absl::Seconds(5)));
  auto sent = conn.Exec(ctx, "SELECT pac_send_notify()", {});
  if (!sent.ok()) {
    // Lost with the connection: watchers hear of the change at their next
    // event or poll.
    logger_->warn(
        "postgresql: could not send the notifications of a "
        "committed change: {}",
        sent.status().ToString());
  }
}

Lease PostgreSQLDriver::LeaseFromRow(const PgResult& r, int row,
                                     const std::string& repo_key) {
  Lease l;
  l.pipeline_run_key = std::string(r.Get(row, 1));
  l.lease_id = std::string(r.Get(row, 2));
  l.acquired_at = r.GetMicros(row, 3);
  l.expires_at = r.GetMicros(row, 4);
  l.fencing_token = r.GetInt(row, 5);
  l.repository_key = repo_key;
  return l;
}

Lease PostgreSQLDriver::AdmittedFromRow(const PgResult& r, int row,
                                        const std::string& repo_key) const {
  Lease l = LeaseFromRow(r, row, repo_key);
  logger_->info("admitted {} from the queue (token {})", l.pipeline_run_key,
                l.fencing_token);
  return l;
}

absl::StatusOr<AcquireResult> PostgreSQLDriver::AcquireSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key,
    const AcquireOptions& options) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ValidateAcquireOptions(options); !s.ok()) return s;
  const std::string repo_key = repo.Key();
  PgParam creation;
  if (options.creation_time.has_value()) {
    creation = std::to_string(absl::ToUnixMicros(*options.creation_time));
  }
  auto r = Query(
      ctx, kAcquireSql,
      {repo_key, std::string(run_key), std::to_string(EffectiveLimit(repo)),
       creation, options.enqueue ? "true" : "false",
       options.adopt_running ? "true" : "false", TtlMicros(),
       options.keep_recorded_limit ? "true" : "false", RequestId(),
       options.group.empty() ? PgParam() : PgParam(options.group),
       options.max_queue_time.has_value()
           ? PgParam(std::to_string(
                 absl::ToInt64Microseconds(*options.max_queue_time)))
           : PgParam(),
       std::to_string(options.priority), "false",
       options.cancel_running ? "true" : "false"},
      Notifies::kIfPending, Retry::kFlagLast);
  if (!r.ok()) return r.status();
  AcquireResult result;
  for (int i = 0; i < r->rows(); ++i) {
    std::string_view kind = r->Get(i, 0);
    if (kind == "admitted") {
      result.admitted.push_back(LeaseFromRow(*r, i, repo_key));
    } else if (kind == "acquired") {
      result.acquired = true;
      result.lease = LeaseFromRow(*r, i, repo_key);
      result.lease.cancel_requested = r->GetInt(i, 6) == 1;
    } else if (kind == "queued") {
      result.position = r->GetInt(i, 6);
    } else if (kind == "removed") {
      return RemovedRunError(repo_key, run_key, r->Get(i, 2));
    }
  }
  if (result.position > 0) {
    // Queued under the lock while a release without it (a lease's) may
    // have freed a slot unseen: pac_settle admits the queue if so.
    auto settled = Settle(ctx, {repo_key});
    if (!settled.ok()) return settled.status();
    for (Lease& l : *settled) {
      if (l.pipeline_run_key == run_key) {
        result.acquired = true;
        result.position = 0;
        result.lease = std::move(l);
      } else {
        result.admitted.push_back(std::move(l));
        // A queue head ahead of the caller's run.
        if (result.position > 0) --result.position;
      }
    }
  }
  if (result.acquired) {
    logger_->debug("slot acquired: {} in {} token {}", run_key, repo_key,
                   result.lease.fencing_token);
  } else if (result.position > 0) {
    logger_->info(
        "concurrency limit {} of {} reached; {} queued at position {}",
        EffectiveLimit(repo), repo_key, run_key, result.position);
  }
  return result;
}

absl::StatusOr<ReleaseResult> PostgreSQLDriver::ReleaseSlot(
    const Context& ctx, std::string_view lease_id, std::string_view run_key,
    std::string_view repo_key) {
  if (absl::Status s = ValidateReleaseKeys(lease_id, run_key, repo_key);
      !s.ok()) {
    return s;
  }
  if (!lease_id.empty()) {
    return ReleaseLease(ctx, lease_id, run_key, repo_key);
  }
  auto r = Query(ctx, kReleaseSql,
                 {std::nullopt, OptText(run_key), OptText(repo_key),
                  TtlMicros(), RequestId(), "false"},
                 Notifies::kIfPending, Retry::kFlagLast);
  if (!r.ok()) return r.status();
  ReleaseResult result;
  const std::string repo(repo_key);
  for (int i = 0; i < r->rows(); ++i) {
    std::string_view kind = r->Get(i, 0);
    if (kind == "released") {
      result.released = true;
      logger_->debug("slot released: {}", r->Get(i, 1));
    } else if (kind == "dequeued") {
      result.dequeued = true;
    } else if (kind == "admitted") {
      result.admitted.push_back(AdmittedFromRow(*r, i, repo));
    }
  }
  return result;
}

absl::StatusOr<Lease> PostgreSQLDriver::RenewLease(const Context& ctx,
                                                   std::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError("lease_id: must not be empty");
  }
  auto r = Query(ctx, kRenewSql, {std::string(lease_id), TtlMicros()});
  if (!r.ok()) return r.status();
  if (r->rows() == 0) {
    return LeaseLostError("lease has expired or was released");
  }
  Lease lease = LeaseFromRow(*r, 0, std::string(r->Get(0, 7)));
  lease.cancel_requested = r->Get(0, 8) == "t";
  return lease;
}

absl::StatusOr<std::vector<Lease>> PostgreSQLDriver::SetRepositoryLimit(
    const Context& ctx, const Repository& repo) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  const std::string repo_key = repo.Key();
  auto r =
      Query(ctx, kAcquireSql,
            {repo_key, std::nullopt, std::to_string(EffectiveLimit(repo)),
             std::nullopt, "false", "false", TtlMicros(), "false", RequestId(),
             std::nullopt, std::nullopt, "0", "false", "false"},
            Notifies::kYes, Retry::kFlagLast);
  if (!r.ok()) return r.status();
  std::vector<Lease> admitted;
  for (int i = 0; i < r->rows(); ++i) {
    if (r->Get(i, 0) == "admitted") {
      admitted.push_back(LeaseFromRow(*r, i, repo_key));
    }
  }
  return admitted;
}

absl::StatusOr<std::unique_ptr<WatchHandle>>
PostgreSQLDriver::WatchSlotAvailability(const Context& ctx,
                                        std::string_view repo_key,
                                        WatchCallback callback) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (!callback) return absl::InvalidArgumentError("callback: must be set");
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (closed_.load()) {
    return absl::FailedPreconditionError("postgresql driver is closed");
  }
  auto handle = watchers_.Add(ctx, std::string(repo_key), std::move(callback));
  {
    // LISTEN starts with the first watch: a driver nobody watches keeps no
    // listening connection (and the server wakes nobody on NOTIFY).
    MutexLock lock(&watch_mu_);
    if (!listen_thread_.joinable() && !closed_.load()) {
      listen_thread_ = std::thread([this] { ListenLoop(); });
    }
  }
  // Return once LISTEN is in place, so no later change is missed (bounded:
  // if the server is down, the watch starts with a kResync on reconnect).
  absl::Time wait_until = std::min(
      ctx.deadline(),
      absl::Now() + std::min(config_.connection_timeout, absl::Seconds(5)));
  while (!listening_.load() && absl::Now() < wait_until && ctx.Err().ok()) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  if (!listening_.load()) resync_pending_.store(true);
  return handle;
}

void PostgreSQLDriver::Broadcast(WatchEventType type) {
  PendingEvents events;
  watchers_.CollectAll(type, &events);
  dispatcher_.Post(std::move(events));
}

void PostgreSQLDriver::ListenLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  auto stopping = [this] {
    MutexLock lock(&stop_mu_);
    return stop_;
  };
  auto sleep = [this](absl::Duration d) {
    MutexLock lock(&stop_mu_);
    if (!stop_) stop_cv_.WaitUntil(&stop_mu_, absl::Now() + d);
  };
  bool was_connected = false;
  while (!stopping()) {
    Context ctx = Context::WithTimeout(
        Context::Background(),
        std::min(config_.connection_timeout, absl::Seconds(10)));
    auto conn = PgConnection::Open(config_, ctx);
    if (conn.ok()) {
      auto listen = (*conn)->Exec(ctx, Cat("LISTEN ", kChannel));
      if (!listen.ok()) conn = listen.status();
    }
    if (!conn.ok()) {
      if (was_connected) {
        logger_->warn("postgresql LISTEN connection lost; reconnecting: {}",
                      conn.status().ToString());
      }
      sleep(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(5));
      continue;
    }
    backoff = absl::Milliseconds(100);
    listening_.store(true);
    if (was_connected || resync_pending_.exchange(false)) {
      logger_->info("postgresql LISTEN connection (re)established");
      // Anything may have changed while we were not listening: re-read.
      Broadcast(WatchEventType::kResync);
    }
    was_connected = true;
    absl::Time last_poll = absl::Now();
    absl::Time last_ping = absl::Now();
    // A connection that went dead unseen (half-open: no reset ever comes)
    // looks idle, and notifications would be lost until TCP gives up,
    // hours later. So the listener asks the server something whenever it
    // has been quiet for ListenerPingEvery() and reconnects (telling
    // watchers to re-read) if no answer comes within it.
    const absl::Duration ping_every = ListenerPingEvery();
    PGconn* raw = (*conn)->raw();
    while (!stopping()) {
      pollfd p{PQsocket(raw), POLLIN, 0};
      ::poll(&p, 1, 100);
      if (PQconsumeInput(raw) == 0 || PQstatus(raw) != CONNECTION_OK) break;
      if (absl::Now() - last_ping >= ping_every) {
        Context ping_ctx =
            Context::WithTimeout(Context::Background(), ping_every);
        auto pong = (*conn)->Exec(ping_ctx, "SELECT 1");
        if (!pong.ok()) {
          logger_->warn(
              "postgresql LISTEN connection did not answer within {}; "
              "reconnecting: {}",
              absl::FormatDuration(ping_every), pong.status().ToString());
          resync_pending_.store(true);
          break;
        }
        last_ping = absl::Now();
      }
      PendingEvents events;
      while (PGnotify* n = PQnotifies(raw)) {
        std::string_view payload(n->extra);
        size_t t1 = payload.find('\t');
        size_t t2 =
            t1 == std::string_view::npos ? t1 : payload.find('\t', t1 + 1);
        if (t2 != std::string_view::npos) {
          std::string repo(payload.substr(0, t1));
          std::string_view name = payload.substr(t1 + 1, t2 - t1 - 1);
          WatchEventType type = EventType(name);
          std::string run(payload.substr(t2 + 1));
          std::string_view reason;  // "removed:<reason>"
          if (type == WatchEventType::kRemoved) reason = name.substr(8);
          watchers_.Collect(repo, type, run, &events, reason);
        }
        PQfreemem(n);
      }
      dispatcher_.Post(std::move(events));
      if (config_.poll_interval > absl::ZeroDuration() &&
          absl::Now() - last_poll >= config_.poll_interval) {
        last_poll = absl::Now();
        Broadcast(WatchEventType::kResync);
      }
    }
    listening_.store(false);
  }
}

void PostgreSQLDriver::ReapLoop() {
  absl::Time last_sweep = absl::InfinitePast();
  absl::Time last_forget = absl::InfinitePast();
  while (true) {
    absl::Duration wait = absl::Seconds(2);
    Context ctx = Context::WithTimeout(Context::Background(), absl::Seconds(5));
    // The earliest lease expiry or queue deadline (two index probes).
    const absl::Time before = absl::Now();
    auto r = Query(ctx,
                   "SELECT " PAC_MICROS("clock_timestamp()") ", " PAC_MICROS(
                       "least((SELECT min(expires_at) FROM concurrency_slots"
                       " WHERE state = 'running'),"
                       " (SELECT min(queue_deadline) FROM concurrency_slots"
                       " WHERE state = 'queued' AND queue_deadline IS NOT"
                       " NULL))"),
                   {});
    if (r.ok()) MeasureClockOffset(before, r->GetMicros(0, 0), absl::Now());
    if (r.ok() && !r->IsNull(0, 1)) {
      absl::Duration left = r->GetMicros(0, 1) - r->GetMicros(0, 0);
      if (left <= absl::ZeroDuration()) {
        auto reaped = Query(ctx,
                            "SELECT pac_reap($1::bigint * interval "
                            "'1 microsecond')",
                            {TtlMicros()}, Notifies::kYes);
        if (reaped.ok() && reaped->GetInt(0, 0) > 0) {
          logger_->info(
              "cleanup: expired leases or queue deadlines in {} "
              "repositories",
              reaped->GetInt(0, 0));
        }
        wait = absl::Milliseconds(5);
      } else {
        wait = std::min(wait, left + absl::Milliseconds(1));
      }
    }
    // Shared limits' safety net (schema_shared.cc), once a second at most.
    if (absl::Now() - last_sweep >= absl::Seconds(1)) {
      last_sweep = absl::Now();
      (void)Query(ctx,
                  "SELECT pac_shared_sweep($1::bigint * interval "
                  "'1 microsecond')",
                  {TtlMicros()}, Notifies::kYes);
      wait = std::min(wait, absl::Seconds(1));
    }
    // Kept answers older than ten minutes, every ten seconds
    // (pac_forget_outcomes, schema_operations.cc: two index ranges).
    if (absl::Now() - last_forget >= absl::Seconds(10)) {
      last_forget = absl::Now();
      (void)Query(ctx, "SELECT pac_forget_outcomes()", {});
    }
    MutexLock lock(&stop_mu_);
    if (stop_) return;
    stop_cv_.WaitUntil(&stop_mu_, absl::Now() + wait);
    if (stop_) return;
  }
}

absl::Status PostgreSQLDriver::SetRepositoryState(const Context& ctx,
                                                  const Repository& repo,
                                                  std::string_view state) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ValidateState(state); !s.ok()) return s;
  auto r = Query(ctx,
                 "INSERT INTO repository_states (repository_key, state) VALUES"
                 " ($1, $2) ON CONFLICT (repository_key) DO UPDATE SET state ="
                 " EXCLUDED.state, updated_at = now()",
                 {repo.Key(), std::string(state)});
  return r.ok() ? absl::OkStatus() : r.status();
}

absl::StatusOr<std::string> PostgreSQLDriver::GetRepositoryState(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = Query(
      ctx, "SELECT state FROM repository_states WHERE repository_key = $1",
      {std::string(repo_key)});
  if (!r.ok()) return r.status();
  if (r->rows() == 0) {
    return absl::NotFoundError(Cat("repository ", repo_key, " has no state"));
  }
  return std::string(r->Get(0, 0));
}

absl::Status PostgreSQLDriver::SetPipelineRunState(const Context& ctx,
                                                   std::string_view run_key,
                                                   std::string_view state) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ValidateState(state); !s.ok()) return s;
  auto r = Query(ctx,
                 "INSERT INTO pipeline_run_states (pipeline_run_key, state)"
                 " VALUES ($1, $2) ON CONFLICT (pipeline_run_key) DO UPDATE SET"
                 " state = EXCLUDED.state, updated_at = now()",
                 {std::string(run_key), std::string(state)});
  return r.ok() ? absl::OkStatus() : r.status();
}

absl::StatusOr<std::string> PostgreSQLDriver::GetPipelineRunState(
    const Context& ctx, std::string_view run_key) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  auto r = Query(
      ctx, "SELECT state FROM pipeline_run_states WHERE pipeline_run_key = $1",
      {std::string(run_key)});
  if (!r.ok()) return r.status();
  if (r->rows() == 0) {
    return absl::NotFoundError(Cat("pipeline run ", run_key, " has no state"));
  }
  return std::string(r->Get(0, 0));
}

absl::StatusOr<ClearQueueResult> PostgreSQLDriver::ClearQueue(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  // Idempotent: a retry after a lost answer clears what is queued then,
  // and the runs the first attempt removed are answered no more.
  auto r = Query(ctx, "SELECT o_run FROM pac_clear_queue($1)",
                 {std::string(repo_key)}, Notifies::kYes);
  if (!r.ok()) return r.status();
  ClearQueueResult out;
  out.removed.reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) out.removed.emplace_back(r->Get(i, 0));
  logger_->info("cleared the queue of {} ({} runs removed)", repo_key,
                out.removed.size());
  return out;
}

absl::Status PostgreSQLDriver::SetRepositoryPolicy(
    const Context& ctx, std::string_view repo_key,
    const RepositoryPolicy& policy) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  // Idempotent: a retry records the same policy again.
  auto r =
      Query(ctx,
            "SELECT pac_set_policy($1, $2::bigint * interval '1 microsecond',"
            " $3, $4::bigint * interval '1 microsecond', $5::text[])",
            {std::string(repo_key),
             policy.max_queue_time.has_value()
                 ? PgParam(std::to_string(
                       absl::ToInt64Microseconds(*policy.max_queue_time)))
                 : PgParam(),
             std::string(QueueModeName(policy.mode)), TtlMicros(),
             ArrayLiteral(policy.shared_limits)},
            Notifies::kYes);
  if (!r.ok()) return r.status();
  logger_->info("policy of {} recorded", repo_key);
  return absl::OkStatus();
}

absl::StatusOr<RepositoryPolicy> PostgreSQLDriver::GetRepositoryPolicy(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = Query(
      ctx,
      "SELECT " PAC_MICROS("p.max_queue") ", p.queue_mode,"
      " array_to_string(ARRAY(SELECT m.name FROM pac_shared_members m"
      " WHERE m.repository_key = k.key ORDER BY m.name), ' ')"
      " FROM (SELECT $1::text AS key) k"
      " LEFT JOIN pac_repository_policies p ON p.repository_key = k.key",
      {std::string(repo_key)});
  if (!r.ok()) return r.status();
  RepositoryPolicy out;
  // Shared limit names have no spaces.
  for (absl::string_view name :
       absl::StrSplit(AV(r->Get(0, 2)), ' ', absl::SkipEmpty())) {
    out.shared_limits.emplace_back(name);
  }
  if (r->IsNull(0, 1)) return out;
  if (!r->IsNull(0, 0)) {
    out.max_queue_time = absl::Microseconds(r->GetInt(0, 0));
  }
  auto mode = ParseQueueMode(r->Get(0, 1), "queue_mode");
  if (!mode.ok()) return absl::DataLossError(mode.status().message());
  out.mode = *mode;
  return out;
}

absl::Status PostgreSQLDriver::CleanupRepository(const Context& ctx,
                                                 std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = Query(
      ctx, "SELECT pac_cleanup($1, $2::bigint * interval '1 microsecond')",
      {std::string(repo_key), TtlMicros()}, Notifies::kYes);
  if (!r.ok()) return r.status();
  logger_->info("cleaned up repository {}", repo_key);
  return absl::OkStatus();
}

}  // namespace pac::concurrency::internal
