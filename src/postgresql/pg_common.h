// Small helpers the PostgreSQL driver's files share: request ids, array
// literals, optional text parameters, and how timestamps cross the wire.
#ifndef PAC_SRC_POSTGRESQL_PG_COMMON_H_
#define PAC_SRC_POSTGRESQL_PG_COMMON_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "src/postgresql/pg_connection.h"

// Timestamps cross the wire as Unix microseconds.
#define PAC_MICROS(col) "(extract(epoch from " col ") * 1000000)::bigint"

namespace pac::concurrency::internal {

// A new request id: 128 random bits in hex. A call sends it with every
// attempt, so that an attempt after a lost answer gets that answer
// (pac_outcomes, schema_functions.cc) rather than a second step's.
std::string NewRequestId();

// `items` as a PostgreSQL array literal (quoted elements: text, or
// numbers cast by the statement).
std::string ArrayLiteral(const std::vector<std::string>& items);

// An empty string as SQL NULL.
std::optional<std::string> OptText(std::string_view s);
// `params` whose last one, a statement's p_retry, is set to `retry`.
std::vector<PgParam> WithRetryFlag(std::vector<PgParam> params, bool retry);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_PG_COMMON_H_
