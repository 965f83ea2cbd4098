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
inline constexpr int kSchemaVersion = 18;

// The server-side functions of this build, created by Migrate in this
// order: the queue policies' helpers (schema_policies.cc), the shared
// limits' (schema_shared.cc), admission and release
// (schema_functions.cc), then import, reaper, cleanup and clearing
// (schema_operations.cc).
extern const char* const kPoliciesSql;
extern const char* const kSharedSql;
extern const char* const kFunctionsSql;
extern const char* const kOperationsSql;

// Brings the database to kSchemaVersion. Idempotent and safe to run from
// several processes at the same time.
absl::Status Migrate(PgConnection& conn, const Context& ctx);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_SCHEMA_H_
