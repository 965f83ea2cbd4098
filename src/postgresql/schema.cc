#include "src/postgresql/schema.h"

#include <iterator>
#include <string>

#include "src/common/strings.h"

namespace pac::concurrency::internal {
namespace {

// Migration 1: the specification's tables plus what the driver needs.
constexpr const char* kMigration1 = R"SQL(
CREATE TABLE IF NOT EXISTS concurrency_slots (
    id SERIAL PRIMARY KEY,
    repository_key VARCHAR(255) NOT NULL,
    pipeline_run_key VARCHAR(255) NOT NULL,
    state VARCHAR(50) NOT NULL DEFAULT 'running',
    acquired_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    UNIQUE(repository_key, pipeline_run_key)
);
-- Added by pac-concurrency: the lease, its fencing token, and the queue order.
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS lease_id TEXT UNIQUE;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS fencing_token BIGINT;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS creation_time TIMESTAMP WITH TIME ZONE;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS queue_seq BIGINT;
CREATE INDEX IF NOT EXISTS concurrency_slots_queue_idx
    ON concurrency_slots (repository_key, creation_time, queue_seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS concurrency_slots_expiry_idx
    ON concurrency_slots (expires_at) WHERE state = 'running';

CREATE TABLE IF NOT EXISTS repository_states (
    id SERIAL PRIMARY KEY,
    repository_key VARCHAR(255) NOT NULL UNIQUE,
    state VARCHAR(50) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE TABLE IF NOT EXISTS pipeline_run_states (
    id SERIAL PRIMARY KEY,
    pipeline_run_key VARCHAR(255) NOT NULL UNIQUE,
    state VARCHAR(50) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

-- One row per repository: its limit, and the row every admission and
-- release of the repository locks (FOR UPDATE), which makes count-and-grant
-- one atomic step.
CREATE TABLE IF NOT EXISTS pac_repositories (
    repository_key VARCHAR(255) PRIMARY KEY,
    concurrency_limit INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

CREATE SEQUENCE IF NOT EXISTS pac_fencing_seq;
CREATE SEQUENCE IF NOT EXISTS pac_queue_seq;
)SQL";

// Migration 2: keys as long as the contract allows (63 + 1 + 253
// characters: a namespace and a name), beyond the specification's 255.
// Widening a VARCHAR rewrites no row. pac_acquire and pac_release take a
// request id (and pac_acquire p_keep): their previous signatures go (a
// call would be ambiguous beside the new ones). pac_outcomes keeps answers.
constexpr const char* kMigration2 = R"SQL(
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL);
DROP FUNCTION IF EXISTS pac_release(TEXT, TEXT, TEXT, INTERVAL);
-- Answers kept by request id (pac_kept). Unlogged: no WAL per release;
-- a crash empties it, and a retry then answers as before this table.
CREATE UNLOGGED TABLE IF NOT EXISTS pac_outcomes (
    request_id TEXT PRIMARY KEY,
    result JSONB NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL
);
ALTER TABLE concurrency_slots ALTER COLUMN repository_key TYPE VARCHAR(320),
                              ALTER COLUMN pipeline_run_key TYPE VARCHAR(320);
ALTER TABLE repository_states ALTER COLUMN repository_key TYPE VARCHAR(320);
ALTER TABLE pipeline_run_states ALTER COLUMN pipeline_run_key TYPE VARCHAR(320);
ALTER TABLE pac_repositories ALTER COLUMN repository_key TYPE VARCHAR(320);
)SQL";

// Migration 3: no table changes; pac_import is among the functions.
constexpr const char* kMigration3 = R"SQL(
SELECT 1;
)SQL";

// Migration 4: no table changes; pac_notify defers its notifications to
// pac_flush_notify for sessions that ask (pac.defer_notify).
constexpr const char* kMigration4 = R"SQL(
SELECT 1;
)SQL";

// Migration 5: no table changes; pac_import numbers the queue once per call.
constexpr const char* kMigration5 = R"SQL(
SELECT 1;
)SQL";

// Migration 6: pac_acquire and pac_release do their work themselves,
// without the step functions and pac_kept, and pac_row_json takes the
// fields of a row. Two indexes: a repository's running rows (pac_look
// reads them without the queue: a 10k queue made every admission scan 10k
// rows, and churned rows made a bitmap scan visit every dead version), and
// the age of kept answers (pac_reap deleted old ones with a scan of the
// whole table every cycle).
constexpr const char* kMigration6 = R"SQL(
CREATE INDEX IF NOT EXISTS concurrency_slots_running_idx
    ON concurrency_slots (repository_key, expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS pac_outcomes_created_idx
    ON pac_outcomes (created_at);
DROP FUNCTION IF EXISTS pac_acquire_step(TEXT, TEXT, INTEGER, TIMESTAMPTZ,
                                         BOOLEAN, BOOLEAN, INTERVAL, BOOLEAN);
DROP FUNCTION IF EXISTS pac_release_step(TEXT, TEXT, TEXT, INTERVAL);
DROP FUNCTION IF EXISTS pac_kept(TEXT);
DROP FUNCTION IF EXISTS pac_row_json(RECORD, BIGINT);
DROP FUNCTION IF EXISTS pac_look(TEXT, TEXT, TIMESTAMPTZ);
DROP FUNCTION IF EXISTS pac_release_lease(TEXT, TEXT, TEXT, TEXT);
)SQL";

// Migration 7: no table changes; pac_acquire, pac_release,
// pac_release_lease and pac_settle take p_retry (only a retry looks for a
// kept answer), so their previous signatures go (a call would be
// ambiguous beside the new ones, whose p_retry has a default).
constexpr const char* kMigration7 = R"SQL(
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL, BOOLEAN, TEXT);
DROP FUNCTION IF EXISTS pac_release(TEXT, TEXT, TEXT, INTERVAL, TEXT);
DROP FUNCTION IF EXISTS pac_release_lease(TEXT, TEXT, TEXT, INTERVAL, TEXT);
DROP FUNCTION IF EXISTS pac_settle(TEXT, INTERVAL, TEXT);
)SQL";

// Migration 8: no table changes; a queued row may become a record of a run
// removed from the queue (state 'cleared', pac_clear_queue), which
// pac_acquire refuses and pac_import leaves out.
constexpr const char* kMigration8 = R"SQL(
SELECT 1;
)SQL";

// Migration 9: supersede groups. A queued row keeps its run's group
// (AcquireOptions::group), indexed among a repository's queued rows that
// have one; pac_acquire takes p_group, so its previous signature goes.
constexpr const char* kMigration9 = R"SQL(
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS group_key TEXT;
CREATE INDEX IF NOT EXISTS concurrency_slots_group_idx
    ON concurrency_slots (repository_key, group_key)
    WHERE state = 'queued' AND group_key IS NOT NULL;
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL, BOOLEAN, TEXT, BOOLEAN);
)SQL";

// Migration 10: no table changes; pac_reap reclaims the expired leases of
// a repository without a pac_repositories row too.
constexpr const char* kMigration10 = R"SQL(
SELECT 1;
)SQL";

// Migration 11: queue time limits. A queued row keeps its run's own limit
// (queue_max) and its deadline (queue_deadline: enqueued + its own limit,
// else the repository's), indexed among queued rows that have one, per
// repository (pac_acquire, pac_promote) and overall (the reaper's next
// wake). pac_repository_policies holds each repository's policy.
// pac_acquire takes p_max_queue, so its previous signature goes.
constexpr const char* kMigration11 = R"SQL(
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS queue_max INTERVAL;
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS queue_deadline TIMESTAMP WITH TIME ZONE;
CREATE INDEX IF NOT EXISTS concurrency_slots_deadline_idx
    ON concurrency_slots (repository_key, queue_deadline)
    WHERE state = 'queued' AND queue_deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS concurrency_slots_next_deadline_idx
    ON concurrency_slots (queue_deadline)
    WHERE state = 'queued' AND queue_deadline IS NOT NULL;
CREATE TABLE IF NOT EXISTS pac_repository_policies (
    repository_key VARCHAR(320) PRIMARY KEY,
    max_queue INTERVAL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL, BOOLEAN, TEXT, TEXT,
                                    BOOLEAN);
)SQL";

// Migration 12: queue order. A queued row keeps its run's priority; a
// repository's policy its mode ('oldest-first', 'newest-first',
// 'priority'). pac_acquire takes p_priority and pac_set_policy p_mode, so
// their previous signatures go.
constexpr const char* kMigration12 = R"SQL(
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS queue_priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pac_repository_policies ADD COLUMN IF NOT EXISTS queue_mode TEXT NOT NULL DEFAULT 'oldest-first';
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL, BOOLEAN, TEXT, TEXT,
                                    INTERVAL, BOOLEAN);
DROP FUNCTION IF EXISTS pac_set_policy(TEXT, INTERVAL, INTERVAL);
)SQL";

// Migration 13: no table changes; pac_import takes each waiting run's
// group and priority, so its previous signature goes.
constexpr const char* kMigration13 = R"SQL(
DROP FUNCTION IF EXISTS pac_import(TEXT, INTEGER, BOOLEAN, TEXT[], TEXT[],
                                   TIMESTAMPTZ[], INTERVAL);
)SQL";

// Migration 14: cancelling running runs. A running row keeps its run's
// supersede group (group_key) and whether a newer run of the group asked
// it to stop; pac_acquire takes p_cancel, so its previous signature goes.
constexpr const char* kMigration14 = R"SQL(
ALTER TABLE concurrency_slots ADD COLUMN IF NOT EXISTS cancel_requested BOOLEAN NOT NULL DEFAULT false;
DROP FUNCTION IF EXISTS pac_acquire(TEXT, TEXT, INTEGER, TIMESTAMPTZ, BOOLEAN,
                                    BOOLEAN, INTERVAL, BOOLEAN, TEXT, TEXT,
                                    INTERVAL, INTEGER, BOOLEAN);
)SQL";

// Migration 15: no table changes; pac_set_policy waits for a transaction
// that is creating the repository's row (a first import queueing runs).
constexpr const char* kMigration15 = R"SQL(
SELECT 1;
)SQL";

// Migration 16: shared limits. pac_shared_limits holds each limit (NULL:
// named by a member, never set; the row is the lock grants in members
// take), pac_shared_members which repositories draw from which.
// pac_set_policy takes p_shared and pac_cleanup p_ttl, so their previous
// signatures go.
constexpr const char* kMigration16 = R"SQL(
CREATE TABLE IF NOT EXISTS pac_shared_limits (
    name TEXT PRIMARY KEY,
    concurrency_limit INTEGER,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);
CREATE TABLE IF NOT EXISTS pac_shared_members (
    repository_key VARCHAR(320) NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (repository_key, name)
);
CREATE INDEX IF NOT EXISTS pac_shared_members_name_idx
    ON pac_shared_members (name, repository_key);
DROP FUNCTION IF EXISTS pac_set_policy(TEXT, INTERVAL, TEXT, INTERVAL);
DROP FUNCTION IF EXISTS pac_cleanup(TEXT);
)SQL";

// Migration 17: kept answers by time. Request ids begin with their time
// (pg_common.h), so the index of pac_outcomes grows at its end and
// pac_forget_outcomes deletes old answers as one range of it; the index
// of their age goes (one index write less per kept answer). Ids compare
// byte by byte ("C"), as they sort.
constexpr const char* kMigration17 = R"SQL(
DROP INDEX IF EXISTS pac_outcomes_created_idx;
ALTER TABLE pac_outcomes ALTER COLUMN request_id TYPE TEXT COLLATE "C";
)SQL";

// Migration 18: no table changes. The functions are created again: their
// hot paths call set_config, pg_notify and pac_notify as expressions, not
// as PERFORM statements (each one an executor start and a snapshot).
constexpr const char* kMigration18 = R"SQL(
SELECT 18;
)SQL";

}  // namespace

absl::Status Migrate(PgConnection& conn, const Context& ctx) {
  // One transaction under a transaction-scoped advisory lock: concurrent
  // starters wait for the first one and then find nothing to do.
  std::string sql =
      Cat("BEGIN;\n"
          "SELECT pg_advisory_xact_lock(hashtext('pac_concurrency_schema'));\n"
          "CREATE TABLE IF NOT EXISTS pac_schema_version (\n"
          "  version INTEGER PRIMARY KEY,\n"
          "  applied_at TIMESTAMP WITH TIME ZONE DEFAULT NOW());\n");
  auto begin = conn.Exec(ctx, sql);
  if (!begin.ok()) {
    (void)conn.Exec(ctx, "ROLLBACK");
    return begin.status();
  }
  auto version = conn.Exec(
      ctx, "SELECT coalesce(max(version), 0) FROM pac_schema_version");
  if (!version.ok()) {
    (void)conn.Exec(ctx, "ROLLBACK");
    return version.status();
  }
  int64_t have = version->GetInt(0, 0);
  if (have > kSchemaVersion) {
    (void)conn.Exec(ctx, "ROLLBACK");
    return absl::FailedPreconditionError(
        Cat("postgresql: the database has schema version ", have,
            ", newer than this build's ", kSchemaVersion));
  }
  const char* const migrations[] = {
      kMigration1,  kMigration2,  kMigration3,  kMigration4,  kMigration5,
      kMigration6,  kMigration7,  kMigration8,  kMigration9,  kMigration10,
      kMigration11, kMigration12, kMigration13, kMigration14, kMigration15,
      kMigration16, kMigration17, kMigration18};
  static_assert(std::size(migrations) == kSchemaVersion);
  for (int64_t v = have + 1; v <= kSchemaVersion; ++v) {
    auto m = conn.Exec(ctx, Cat(migrations[v - 1],
                                "\nINSERT INTO pac_schema_version (version) "
                                "VALUES (",
                                v, ");"));
    if (!m.ok()) {
      (void)conn.Exec(ctx, "ROLLBACK");
      return m.status();
    }
  }
  if (have < kSchemaVersion) {
    for (const char* sql :
         {kPoliciesSql, kSharedSql, kFunctionsSql, kOperationsSql}) {
      if (auto f = conn.Exec(ctx, sql); !f.ok()) {
        (void)conn.Exec(ctx, "ROLLBACK");
        return f.status();
      }
    }
  }
  auto commit = conn.Exec(ctx, "COMMIT");
  return commit.ok() ? absl::OkStatus() : commit.status();
}

}  // namespace pac::concurrency::internal
