// libpq, owned: a Connection closes itself, a Result clears itself, and every
// query runs asynchronously so the caller's Context deadline and
// cancellation apply. libpq types never leave src/postgresql/.
#ifndef PAC_SRC_POSTGRESQL_PG_CONNECTION_H_
#define PAC_SRC_POSTGRESQL_PG_CONNECTION_H_

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/config.h"
#include "pac/concurrency/context.h"

namespace pac::concurrency::internal {

// A query result. Rows and columns by index; values are text.
class PgResult {
 public:
  explicit PgResult(PGresult* r) : r_(r, &PQclear) {}
  int rows() const { return PQntuples(r_.get()); }
  int columns() const { return PQnfields(r_.get()); }
  bool IsNull(int row, int col) const {
    return PQgetisnull(r_.get(), row, col) != 0;
  }
  std::string_view Get(int row, int col) const {
    return std::string_view(PQgetvalue(r_.get(), row, col),
                            PQgetlength(r_.get(), row, col));
  }
  int64_t GetInt(int row, int col) const;
  // A bigint column of Unix microseconds; NULL or infinity -> InfiniteFuture.
  absl::Time GetMicros(int row, int col) const;

 private:
  std::unique_ptr<PGresult, void (*)(PGresult*)> r_;
};

// One parameter: a value or SQL NULL.
using PgParam = std::optional<std::string>;

class PgConnection {
 public:
  // Opens a connection with the configuration's parameters passed as
  // keyword/value pairs (never glued into a conninfo string), within
  // min(ctx deadline, connection_timeout).
  static absl::StatusOr<std::unique_ptr<PgConnection>> Open(
      const PostgreSQLConfig& config, const Context& ctx);

  // Statements with parameters are prepared on the connection at their
  // second use (up to kMaxPrepared distinct texts; later ones stay
  // unnamed) and then only bound and run: the server neither parses nor
  // plans them again. A text used once (built for one call) is not. With
  // config.prepared_statements false (a pooler that hands transactions to other
  // server connections) every statement is unnamed.
  static constexpr size_t kMaxPrepared = 64;
  static constexpr size_t kMaxSeenOnce = 256;

  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Runs one statement (or several without parameters) and waits for the
  // result until the context ends; then the query is cancelled and the
  // connection marked broken. Errors are translated by pg_errors.cc.
  absl::StatusOr<PgResult> Exec(const Context& ctx, std::string_view sql,
                                const std::vector<PgParam>& params = {});

  // Runs `statements` in pipeline mode: all are sent at once, each in a
  // transaction of its own (a Sync after each), in order, and the answers
  // read in one round trip. A failed statement does not stop the next
  // ones; the first failure is returned, else every result in order.
  struct Statement {
    std::string_view sql;
    const std::vector<PgParam>* params;
  };
  absl::StatusOr<std::vector<PgResult>> ExecPipeline(
      const Context& ctx, const std::vector<Statement>& statements);

  // False once the connection failed; the pool drops it.
  bool healthy() const;
  PGconn* raw() { return conn_; }

 private:
  PgConnection(PGconn* conn, bool prepare) : conn_(conn), prepare_(prepare) {}
  absl::Status WaitReadable(const Context& ctx);
  absl::Status WaitWritable(const Context& ctx);
  // Sends what libpq holds, waiting for the socket as needed.
  absl::Status FlushOut(const Context& ctx);
  // Waits until libpq can hand out a result without blocking; on a
  // deadline or cancellation asks the server to stop the query.
  absl::Status AwaitResult(const Context& ctx);
  // The name `sql` is prepared under on this connection, preparing it (one
  // round trip, outside pipeline mode) at its second use; "" to send it
  // unnamed (preparing off, no parameters, its first use, or kMaxPrepared
  // reached).
  absl::StatusOr<std::string> Prepared(const Context& ctx, std::string_view sql,
                                       int params);
  // A failed statement's error; clears the prepared statements when the
  // server lost or invalidated them.
  absl::Status StatementError(const PGresult* r);
  // Sends `sql` with `params` as Prepared named it.
  int Send(const std::string& name, std::string_view sql,
           const std::vector<PgParam>& params);

  PGconn* conn_;
  const bool prepare_;
  bool broken_ = false;
  std::unordered_map<std::string, std::string> prepared_;  // sql -> name
  int64_t prepare_seq_ = 0;  // names are pac_<n>, never reused
  std::unordered_set<std::string> seen_once_;  // texts used once so far
};

// Translates a failed result or connection state into a Status
// (pg_errors.cc: the one place where SQLSTATEs become codes).
absl::Status PgResultError(const PGresult* result, PGconn* conn,
                           std::string_view what);
absl::Status PgConnectionError(PGconn* conn, std::string_view what);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_PG_CONNECTION_H_
