// The one place where libpq failures become Status codes.
//
// clang-format off
//   connection lost/refused, 08xxx, 57P01-57P03, 53xxx   Unavailable
//   40001 serialization failure, 40P01 deadlock          Aborted
//   28xxx, "password authentication failed"              Unauthenticated
//   TLS verification failures                            FailedPrecondition
//   25xxx invalid transaction state (pac_check_isolation) FailedPrecondition
//   42501 insufficient privilege                         PermissionDenied
//   22xxx data exception                                 InvalidArgument
//   57014 query cancelled (statement timeout)            DeadlineExceeded
//   anything else                                        Internal
// clang-format on
//
// Messages come from the server or libpq; neither includes the password.
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "src/common/strings.h"
#include "src/postgresql/pg_connection.h"

namespace pac::concurrency::internal {
namespace {

std::string Trimmed(const char* msg) {
  std::string s = msg == nullptr ? "" : msg;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

absl::Status FromText(std::string_view what, const std::string& msg) {
  std::string text = Cat("postgresql: ", what, ": ", msg);
  absl::string_view m = AV(msg);
  if (absl::StrContains(m, "password authentication failed") ||
      absl::StrContains(m, "no password supplied")) {
    return absl::UnauthenticatedError(text);
  }
  if (absl::StrContains(m, "certificate verify failed") ||
      absl::StrContains(m, "server certificate for") ||
      absl::StrContains(m, "root certificate file") ||
      absl::StrContains(m, "does not support SSL") ||
      absl::StrContains(m, "SSL is not enabled")) {
    return absl::FailedPreconditionError(Cat(text, " (TLS settings)"));
  }
  return absl::UnavailableError(text);
}

}  // namespace

absl::Status PgConnectionError(PGconn* conn, std::string_view what) {
  return FromText(
      what, Trimmed(conn == nullptr ? "out of memory" : PQerrorMessage(conn)));
}

absl::Status PgResultError(const PGresult* result, PGconn* conn,
                           std::string_view what) {
  if (result == nullptr || conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    return PgConnectionError(conn, what);
  }
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  std::string sqlstate = state == nullptr ? "" : state;
  std::string msg = Trimmed(PQresultErrorMessage(result));
  std::string text =
      Cat("postgresql: ", what, ": ", msg,
          sqlstate.empty() ? "" : Cat(" (SQLSTATE ", sqlstate, ")"));
  auto cls = sqlstate.substr(0, 2);
  if (cls == "08" || cls == "53" || sqlstate == "57P01" ||
      sqlstate == "57P02" || sqlstate == "57P03") {
    return absl::UnavailableError(text);
  }
  if (sqlstate == "40001" || sqlstate == "40P01") {
    return absl::AbortedError(text);
  }
  if (cls == "28") return absl::UnauthenticatedError(text);
  if (cls == "25") return absl::FailedPreconditionError(text);
  if (sqlstate == "42501") return absl::PermissionDeniedError(text);
  if (cls == "22") return absl::InvalidArgumentError(text);
  if (sqlstate == "57014") return absl::DeadlineExceededError(text);
  if (sqlstate.empty()) return FromText(what, msg);
  return absl::InternalError(text);
}

}  // namespace pac::concurrency::internal
