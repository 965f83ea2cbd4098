// The PostgreSQL schema: the specification's three tables, the columns and
// tables the driver adds, and the server-side functions that make admission
// and release one round trip. Versioned migrations, applied under an
// advisory lock so that several processes may start at once.
#ifndef PAC_SRC_POSTGRESQL_SCHEMA_H_
#define PAC_SRC_POSTGRESQL_SCHEMA_H_

#include "absl/status/status.h"
#include "pac/concurrency/context.h"
#include "src/postgresql/pg_connection.h"

namespace pac::concurrency::internal {

// The newest schema version this build knows.
inline constexpr int kSchemaVersion = 7;

// The server-side functions of this build (schema_functions.cc), created
// by Migrate.
extern const char* const kFunctionsSql;

// Brings the database to kSchemaVersion. Idempotent and safe to run from
// several processes at the same time.
absl::Status Migrate(PgConnection& conn, const Context& ctx);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_SCHEMA_H_
