#include "src/postgresql/pg_connection.h"

#include <poll.h>

#include <algorithm>
#include <charconv>
#include <thread>

#include "src/common/strings.h"

namespace pac::concurrency::internal {
namespace {

// Waits on `fd` for `events` until the deadline or a cancellation, in slices
// short enough to notice a cancelled context.
absl::Status WaitFd(int fd, short events, const Context& ctx,
                    absl::Time deadline) {
  while (true) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("postgresql: deadline exceeded");
    }
    int ms = left >= absl::Milliseconds(50)
                 ? 50
                 : static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, ms);
    if (rc > 0) return absl::OkStatus();
    if (rc < 0 && errno != EINTR) {
      return absl::UnavailableError("postgresql: poll failed");
    }
  }
}

// The parameters as libpq takes them: pointers into `params` (which must
// outlive the send), nullptr for SQL NULL.
std::vector<const char*> ParamValues(const std::vector<PgParam>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const PgParam& p : params) {
    values.push_back(p.has_value() ? p->c_str() : nullptr);
  }
  return values;
}

}  // namespace

int64_t PgResult::GetInt(int row, int col) const {
  std::string_view v = Get(row, col);
  int64_t out = 0;
  std::from_chars(v.data(), v.data() + v.size(), out);
  return out;
}

absl::Time PgResult::GetMicros(int row, int col) const {
  if (IsNull(row, col)) return absl::InfiniteFuture();
  std::string_view v = Get(row, col);
  int64_t out = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc()) return absl::InfiniteFuture();
  return absl::FromUnixMicros(out);
}

absl::StatusOr<std::unique_ptr<PgConnection>> PgConnection::Open(
    const PostgreSQLConfig& config, const Context& ctx) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  absl::Time deadline =
      std::min(ctx.deadline(), absl::Now() + config.connection_timeout);
  std::string port = std::to_string(config.port);
  std::string timeout = std::to_string(
      std::max<int64_t>(2, absl::ToInt64Seconds(config.connection_timeout)));
  std::vector<const char*> keys = {"host",
                                   "port",
                                   "dbname",
                                   "user",
                                   "sslmode",
                                   "connect_timeout",
                                   "application_name"};
  std::vector<const char*> values = {
      config.host.c_str(),     port.c_str(),
      config.database.c_str(), config.username.c_str(),
      config.ssl_mode.c_str(), timeout.c_str(),
      "pac-concurrency"};
  // Admission counts under a row lock and needs each statement to see what
  // committed while it waited (schema_functions.cc, pac_check_isolation): READ
  // COMMITTED whatever the server's or role's default.
  // TCP keepalives: an idle connection whose peer vanished is noticed in
  // about a minute, not the kernel's two hours.
  for (const auto& [k, v] :
       {std::pair{"keepalives", "1"}, std::pair{"keepalives_idle", "30"},
        std::pair{"keepalives_interval", "10"},
        std::pair{"keepalives_count", "3"}}) {
    keys.push_back(k);
    values.push_back(v);
  }
  keys.push_back("options");
  // pac.defer_notify: the functions collect their notifications for
  // pac_flush_notify, which the driver runs after the commit
  // (schema_functions.cc).
  values.push_back(
      "-c default_transaction_isolation=read\\ committed -c "
      "pac.defer_notify=on");
  if (!config.password.empty()) {
    keys.push_back("password");
    values.push_back(config.password.c_str());
  }
  if (!config.ssl_root_cert.empty()) {
    keys.push_back("sslrootcert");
    values.push_back(config.ssl_root_cert.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  PGconn* conn = PQconnectStartParams(keys.data(), values.data(), 0);
  if (conn == nullptr)
    return absl::UnavailableError("postgresql: out of memory");
  std::unique_ptr<PgConnection> out(
      new PgConnection(conn, config.prepared_statements));
  if (PQstatus(conn) == CONNECTION_BAD) {
    return PgConnectionError(conn, "connect");
  }
  PostgresPollingStatusType poll_status = PGRES_POLLING_WRITING;
  while (poll_status != PGRES_POLLING_OK) {
    if (poll_status == PGRES_POLLING_FAILED) {
      return PgConnectionError(conn, "connect");
    }
    short events = poll_status == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    absl::Status s = WaitFd(PQsocket(conn), events, ctx, deadline);
    if (!s.ok()) {
      if (absl::IsDeadlineExceeded(s)) {
        return absl::UnavailableError(Cat("postgresql: connect to ",
                                          config.host, ":", config.port,
                                          " timed out"));
      }
      return s;
    }
    poll_status = PQconnectPoll(conn);
  }
  // Server notices (e.g. "relation already exists, skipping") are not errors.
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  if (PQsetnonblocking(conn, 1) != 0) {
    return PgConnectionError(conn, "set non-blocking");
  }
  return out;
}

PgConnection::~PgConnection() {
  if (conn_ != nullptr) PQfinish(conn_);
}

bool PgConnection::healthy() const {
  return !broken_ && PQstatus(conn_) == CONNECTION_OK;
}

absl::Status PgConnection::WaitReadable(const Context& ctx) {
  return WaitFd(PQsocket(conn_), POLLIN, ctx, ctx.deadline());
}

absl::Status PgConnection::WaitWritable(const Context& ctx) {
  return WaitFd(PQsocket(conn_), POLLOUT, ctx, ctx.deadline());
}

absl::StatusOr<std::string> PgConnection::Prepared(const Context& ctx,
                                                   std::string_view sql,
                                                   int params) {
  if (!prepare_ || params == 0) return std::string();
  std::string query(sql);
  if (auto it = prepared_.find(query); it != prepared_.end()) {
    return it->second;
  }
  if (prepared_.size() >= kMaxPrepared) return std::string();
  // Prepared at its second use: a text built for one call (an import's
  // statement for its batch) stays unnamed and takes no place.
  if (seen_once_.insert(query).second) {
    if (seen_once_.size() > kMaxSeenOnce) seen_once_.clear();
    return std::string();
  }
  seen_once_.erase(query);
  std::string name = Cat("pac_", ++prepare_seq_);
  if (PQsendPrepare(conn_, name.c_str(), query.c_str(), params, nullptr) == 0) {
    broken_ = true;
    return PgConnectionError(conn_, "send");
  }
  if (absl::Status s = FlushOut(ctx); !s.ok()) return s;
  if (absl::Status s = AwaitResult(ctx); !s.ok()) return s;
  absl::Status error = absl::OkStatus();
  while (PGresult* r = PQgetResult(conn_)) {
    if (PQresultStatus(r) != PGRES_COMMAND_OK && error.ok()) {
      error = PgResultError(r, conn_, "prepare");
    }
    PQclear(r);
    if (PQisBusy(conn_)) {
      if (absl::Status s = AwaitResult(ctx); !s.ok()) return s;
    }
  }
  if (PQstatus(conn_) != CONNECTION_OK) broken_ = true;
  if (!error.ok()) return error;
  prepared_.emplace(std::move(query), name);
  return name;
}

absl::Status PgConnection::StatementError(const PGresult* r) {
  const char* state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const std::string_view code = state != nullptr ? state : "";
  // The server lost a prepared statement (a pooler's DISCARD ALL, or
  // another server connection behind it), or a migration changed what a
  // prepared statement returns: the statement did not run. Prepared
  // again on the retry.
  // (0A000 is "cached plan must not change result type" here: the
  // driver's statements use no feature a server may lack; the message
  // itself may be in the server's language.)
  const char* message = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  if (!prepared_.empty() && (code == "26000" || code == "0A000")) {
    prepared_.clear();  // new names next time: the old ones may remain
    return absl::UnavailableError(
        Cat("postgresql: a prepared statement is gone or stale (",
            message != nullptr ? message : "",
            "); set postgresql-prepared-statements to false behind a "
            "transaction pooler"));
  }
  return PgResultError(r, conn_, "query");
}

int PgConnection::Send(const std::string& name, std::string_view sql,
                       const std::vector<PgParam>& params) {
  std::vector<const char*> values = ParamValues(params);
  const int n = static_cast<int>(values.size());
  if (!name.empty()) {
    return PQsendQueryPrepared(conn_, name.c_str(), n, values.data(), nullptr,
                               nullptr, 0);
  }
  std::string query(sql);
  if (params.empty() && PQpipelineStatus(conn_) == PQ_PIPELINE_OFF) {
    return PQsendQuery(conn_, query.c_str());  // may hold several statements
  }
  return PQsendQueryParams(conn_, query.c_str(), n, nullptr, values.data(),
                           nullptr, nullptr, 0);
}

absl::StatusOr<PgResult> PgConnection::Exec(
    const Context& ctx, std::string_view sql,
    const std::vector<PgParam>& params) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  auto name = Prepared(ctx, sql, static_cast<int>(params.size()));
  if (!name.ok()) return name.status();
  if (Send(*name, sql, params) == 0) {
    broken_ = true;
    return PgConnectionError(conn_, "send");
  }
  if (absl::Status s = FlushOut(ctx); !s.ok()) return s;
  if (absl::Status s = AwaitResult(ctx); !s.ok()) return s;
  std::optional<PgResult> last;
  absl::Status error = absl::OkStatus();
  while (PGresult* r = PQgetResult(conn_)) {
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && error.ok()) {
      error = StatementError(r);
    }
    last.emplace(r);
    // Later results may still be in flight for multi-statement strings.
    while (PQisBusy(conn_)) {
      if (PQconsumeInput(conn_) == 0) {
        broken_ = true;
        return PgConnectionError(conn_, "receive");
      }
      if (!PQisBusy(conn_)) break;
      if (absl::Status s = WaitReadable(ctx); !s.ok()) {
        broken_ = true;
        return s;
      }
    }
  }
  if (PQstatus(conn_) != CONNECTION_OK) broken_ = true;
  if (!error.ok()) return error;
  if (!last.has_value()) return absl::InternalError("postgresql: no result");
  return std::move(*last);
}

absl::Status PgConnection::FlushOut(const Context& ctx) {
  while (true) {
    int f = PQflush(conn_);
    if (f == 0) return absl::OkStatus();
    if (f < 0) {
      broken_ = true;
      return PgConnectionError(conn_, "send");
    }
    if (absl::Status s = WaitWritable(ctx); !s.ok()) {
      broken_ = true;
      return s;
    }
  }
}

absl::Status PgConnection::AwaitResult(const Context& ctx) {
  while (true) {
    if (PQconsumeInput(conn_) == 0) {
      broken_ = true;
      return PgConnectionError(conn_, "receive");
    }
    if (!PQisBusy(conn_)) return absl::OkStatus();
    absl::Status s = WaitReadable(ctx);
    if (!s.ok()) {
      // Ask the server to stop; the connection's state is unknown now.
      // PQcancel opens a connection of its own and blocks with no bound
      // (on a dead path, until TCP gives up): it runs on a thread of its
      // own, best effort, and this call returns at its deadline.
      if (PGcancel* cancel = PQgetCancel(conn_)) {
        std::thread([cancel] {
          char err[256];
          PQcancel(cancel, err, sizeof(err));
          PQfreeCancel(cancel);
        }).detach();
      }
      broken_ = true;
      return s;
    }
  }
}

absl::StatusOr<std::vector<PgResult>> PgConnection::ExecPipeline(
    const Context& ctx, const std::vector<Statement>& statements) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  static const std::vector<PgParam> kNone;
  std::vector<std::string> names;
  for (const Statement& st : statements) {
    const auto& params = st.params != nullptr ? *st.params : kNone;
    auto name = Prepared(ctx, st.sql, static_cast<int>(params.size()));
    if (!name.ok()) return name.status();
    names.push_back(std::move(*name));
  }
  if (PQenterPipelineMode(conn_) == 0) {
    broken_ = true;
    return PgConnectionError(conn_, "enter pipeline mode");
  }
  for (size_t i = 0; i < statements.size(); ++i) {
    const Statement& st = statements[i];
    if (Send(names[i], st.sql, st.params != nullptr ? *st.params : kNone) ==
            0 ||
        PQpipelineSync(conn_) == 0) {
      broken_ = true;
      return PgConnectionError(conn_, "send");
    }
  }
  if (absl::Status s = FlushOut(ctx); !s.ok()) return s;
  // Each statement answers with its results, a null, then its Sync's
  // PGRES_PIPELINE_SYNC; a statement after a failed one in the same
  // transaction would answer PGRES_PIPELINE_ABORTED (here none is: each
  // has its own Sync).
  std::vector<std::optional<PgResult>> last(statements.size());
  absl::Status error = absl::OkStatus();
  size_t index = 0;
  while (index < statements.size()) {
    if (absl::Status s = AwaitResult(ctx); !s.ok()) return s;
    PGresult* r = PQgetResult(conn_);
    if (r == nullptr) continue;  // the end of one statement's results
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      ++index;
      continue;
    }
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && error.ok()) {
      error = StatementError(r);
    }
    last[index].emplace(r);
  }
  if (PQexitPipelineMode(conn_) == 0) broken_ = true;
  if (PQstatus(conn_) != CONNECTION_OK) broken_ = true;
  if (!error.ok()) return error;
  std::vector<PgResult> out;
  out.reserve(statements.size());
  for (auto& r : last) {
    if (!r.has_value()) return absl::InternalError("postgresql: no result");
    out.push_back(std::move(*r));
  }
  return out;
}

}  // namespace pac::concurrency::internal
