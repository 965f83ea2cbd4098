// Small helpers the PostgreSQL driver's files share: request ids, array
// literals, optional text parameters, and how timestamps cross the wire.
#ifndef PAC_SRC_POSTGRESQL_PG_COMMON_H_
#define PAC_SRC_POSTGRESQL_PG_COMMON_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "src/postgresql/pg_connection.h"

// Timestamps cross the wire as Unix microseconds.
#define PAC_MICROS(col) "(extract(epoch from " col ") * 1000000)::bigint"

namespace pac::concurrency::internal {

// A new request id: the time `at` (the database's clock, as the driver
// reckons it) in Unix microseconds, then 64 random bits, 32 hex digits in
// all. A call sends it with every attempt, so that an attempt after a lost
// answer gets that answer (pac_outcomes, schema_functions.cc) rather than
// a second step's. Ids sort by time: kept answers are added at the end of
// their index, and the old ones go as one range of it
// (pac_forget_outcomes, schema_operations.cc).
std::string NewRequestId(absl::Time at);

// `items` as a PostgreSQL array literal (quoted elements: text, or
// numbers cast by the statement).
std::string ArrayLiteral(const std::vector<std::string>& items);

// An empty string as SQL NULL.
std::optional<std::string> OptText(std::string_view s);
// `params` whose last one, a statement's p_retry, is set to `retry`.
std::vector<PgParam> WithRetryFlag(std::vector<PgParam> params, bool retry);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_PG_COMMON_H_
