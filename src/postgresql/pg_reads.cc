// The PostgreSQL driver's reads that change nothing: a repository's
// limit, snapshot, running and queued runs, the listing of repositories
// (whole, counted, or in pages with their snapshots). The writes, watches
// and background work are in postgresql_driver.cc.
#include <algorithm>
#include <map>
#include <tuple>

#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/postgresql/pg_common.h"
#include "src/postgresql/postgresql_driver.h"

namespace pac::concurrency::internal {
namespace {

// The repository in one statement, so one snapshot: the limit row, the
// unexpired running rows and the queued rows (GetRepositorySnapshot orders
// them; the running and queued listings are read from it too).
constexpr const char* kSnapshotSql =
    "SELECT 'limit', '', '', 0::bigint, 0::bigint, concurrency_limit::bigint,"
    " 0::bigint FROM pac_repositories WHERE repository_key = $1"
    " UNION ALL SELECT 'running', pipeline_run_key, lease_id, "
    PAC_MICROS("acquired_at") ", " PAC_MICROS("expires_at") ", fencing_token,"
    " cancel_requested::int FROM concurrency_slots WHERE repository_key = $1"
    " AND state = 'running' AND expires_at > clock_timestamp()"
    " UNION ALL SELECT 'queued', pipeline_run_key, '', "
    PAC_MICROS("creation_time") ", " PAC_MICROS("created_at") ", queue_seq,"
    " queue_priority FROM concurrency_slots WHERE repository_key = $1 AND"
    " state = 'queued'"
    " UNION ALL SELECT 'mode', queue_mode, '', 0, 0, 0, 0"
    " FROM pac_repository_policies WHERE repository_key = $1";

}  // namespace

absl::StatusOr<std::optional<int32_t>> PostgreSQLDriver::GetRepositoryLimit(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = Query(ctx,
                 "SELECT concurrency_limit FROM pac_repositories WHERE "
                 "repository_key = $1",
                 {std::string(repo_key)});
  if (!r.ok()) return r.status();
  if (r->rows() == 0) return std::optional<int32_t>();
  return std::optional<int32_t>(static_cast<int32_t>(r->GetInt(0, 0)));
}

absl::StatusOr<std::vector<std::string>> PostgreSQLDriver::ListRepositories(
    const Context& ctx, std::string_view namespace_name) {
  if (absl::Status s = ValidateNamespaceFilter(namespace_name); !s.ok()) {
    return s;
  }
  // Rows written by the original Go code may have slots but no
  // pac_repositories row, so both tables are asked: the slots only for
  // repositories without a row (an anti-join, which leaves a handful of
  // rows to sort where a UNION sorted every slot).
  auto r =
      Query(ctx,
            "SELECT repository_key FROM pac_repositories"
            " WHERE $1::text = '' OR"
            " left(repository_key, length($1::text) + 1) = $1::text || '/'"
            " UNION ALL SELECT DISTINCT s.repository_key FROM"
            " concurrency_slots s WHERE (s.state = 'queued' OR"
            " (s.state = 'running' AND s.expires_at > clock_timestamp())) AND"
            " ($1::text = '' OR left(s.repository_key, length($1::text) + 1)"
            " = $1::text || '/') AND NOT EXISTS (SELECT 1 FROM"
            " pac_repositories r WHERE r.repository_key = s.repository_key)",
            {std::string(namespace_name)});
  if (!r.ok()) return r.status();
  std::vector<std::string> out;
  out.reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) out.emplace_back(r->Get(i, 0));
  std::sort(out.begin(), out.end());  // byte order, whatever the collation
  return out;
}

absl::StatusOr<std::vector<RepositoryCounts>>
PostgreSQLDriver::GetRepositoryCounts(const Context& ctx) {
  // One pass over the slots, grouped, beside the recorded limits: the
  // repositories ListRepositories lists (a row, or a live run).
  auto r = Query(
      ctx,
      "WITH c AS (SELECT repository_key,"
      " count(*) FILTER (WHERE state = 'running' AND"
      " expires_at > clock_timestamp()) AS running,"
      " count(*) FILTER (WHERE state = 'queued') AS queued"
      " FROM concurrency_slots GROUP BY repository_key)"
      " SELECT coalesce(r.repository_key, c.repository_key),"
      " r.concurrency_limit, coalesce(c.running, 0), coalesce(c.queued, 0)"
      " FROM pac_repositories r FULL JOIN c"
      " ON c.repository_key = r.repository_key"
      " WHERE r.repository_key IS NOT NULL OR c.running > 0 OR c.queued > 0",
      {});
  if (!r.ok()) return r.status();
  std::vector<RepositoryCounts> out;
  out.reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) {
    RepositoryCounts c;
    c.repository_key = std::string(r->Get(i, 0));
    if (!r->IsNull(i, 1)) c.limit = static_cast<int32_t>(r->GetInt(i, 1));
    c.running = r->GetInt(i, 2);
    c.queued = r->GetInt(i, 3);
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.repository_key < b.repository_key;  // byte order
  });
  return out;
}

absl::StatusOr<int> PostgreSQLDriver::GetCurrentSlots(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = Query(ctx,
                 "SELECT count(*) FROM concurrency_slots WHERE repository_key ="
                 " $1 AND state = 'running' AND expires_at > clock_timestamp()",
                 {std::string(repo_key)});
  if (!r.ok()) return r.status();
  return static_cast<int>(r->GetInt(0, 0));
}

absl::StatusOr<std::vector<Lease>> PostgreSQLDriver::GetRunningPipelineRuns(
    const Context& ctx, std::string_view repo_key) {
  auto s = GetRepositorySnapshot(ctx, repo_key);
  if (!s.ok()) return s.status();
  return std::move(s->running);
}

absl::StatusOr<std::vector<QueueEntry>> PostgreSQLDriver::GetQueuedPipelineRuns(
    const Context& ctx, std::string_view repo_key) {
  auto s = GetRepositorySnapshot(ctx, repo_key);
  if (!s.ok()) return s.status();
  return std::move(s->queued);
}

void PostgreSQLDriver::AddSnapshotRow(const PgResult& r, int row,
                                      const std::string& repo_key,
                                      RepositorySnapshot* out) {
  const std::string_view kind = r.Get(row, 0);
  if (kind == "limit") {
    out->limit = static_cast<int32_t>(r.GetInt(row, 5));
  } else if (kind == "running") {
    out->running.push_back(LeaseFromRow(r, row, repo_key));
    out->running.back().cancel_requested = r.GetInt(row, 6) == 1;
  } else if (kind == "queued") {
    out->queued.push_back(QueueEntry{
        std::string(r.Get(row, 1)), r.GetMicros(row, 3), r.GetInt(row, 5),
        r.GetMicros(row, 4), 0, static_cast<int32_t>(r.GetInt(row, 6))});
  } else if (kind == "mode") {
    // A name this build does not know orders as the default.
    out->mode = ParseQueueMode(r.Get(row, 1), "queue_mode").value_or(out->mode);
  }
}

namespace {

// Running runs by grant, the queue in admission order with its places.
void OrderSnapshot(RepositorySnapshot* s) {
  std::sort(s->running.begin(), s->running.end(),
            [](const Lease& a, const Lease& b) {
              return a.fencing_token < b.fencing_token;
            });
  // The admission order of the repository's mode (as pac_head, pac_place).
  const QueueMode mode = s->mode;
  std::sort(s->queued.begin(), s->queued.end(),
            [mode](const QueueEntry& a, const QueueEntry& b) {
              if (mode == QueueMode::kPriority && a.priority != b.priority) {
                return a.priority > b.priority;
              }
              if (mode == QueueMode::kNewestFirst &&
                  a.creation_time != b.creation_time) {
                return a.creation_time > b.creation_time;
              }
              return std::tie(a.creation_time, a.sequence) <
                     std::tie(b.creation_time, b.sequence);
            });
  for (size_t i = 0; i < s->queued.size(); ++i) s->queued[i].position = i + 1;
}

// A page of the listing in one statement: the page's keys (those
// ListRepositories lists, after $2 in byte order, at most $3 of them, 0:
// all; $1 a namespace or ''), then each one's rows as kSnapshotSql reads
// them, its key last.
#define PAC_IN_NAMESPACE(col) \
  "($1::text = '' OR left(" col ", length($1::text) + 1) = $1::text || '/')"
constexpr const char* kListingPageSql =
    "WITH k AS MATERIALIZED (SELECT key FROM ("
    " SELECT repository_key AS key FROM pac_repositories"
    " WHERE repository_key COLLATE \"C\" > $2::text AND "
    PAC_IN_NAMESPACE("repository_key")
    // Slots only of repositories without a row (as ListRepositories).
    " UNION ALL SELECT DISTINCT s.repository_key FROM concurrency_slots s"
    " WHERE s.repository_key COLLATE \"C\" > $2::text AND"
    " (s.state = 'queued' OR"
    " (s.state = 'running' AND s.expires_at > clock_timestamp())) AND "
    PAC_IN_NAMESPACE("s.repository_key")
    " AND NOT EXISTS (SELECT 1 FROM pac_repositories r"
    " WHERE r.repository_key = s.repository_key)"
    ") u ORDER BY key COLLATE \"C\" LIMIT nullif($3::bigint, 0))"
    " SELECT 'key'::text, ''::text, ''::text, 0::bigint, 0::bigint, 0::bigint,"
    " 0::bigint, k.key::text FROM k"
    " UNION ALL SELECT 'limit', '', '', 0, 0, r.concurrency_limit::bigint, 0,"
    " r.repository_key FROM pac_repositories r JOIN k"
    " ON r.repository_key = k.key"
    " UNION ALL SELECT 'running', s.pipeline_run_key, s.lease_id, "
    PAC_MICROS("s.acquired_at") ", " PAC_MICROS("s.expires_at") ","
    " s.fencing_token, s.cancel_requested::int, s.repository_key"
    " FROM concurrency_slots s JOIN k"
    " ON s.repository_key = k.key WHERE s.state = 'running' AND"
    " s.expires_at > clock_timestamp()"
    " UNION ALL SELECT 'queued', s.pipeline_run_key, '', "
    PAC_MICROS("s.creation_time") ", " PAC_MICROS("s.created_at") ","
    " s.queue_seq, s.queue_priority, s.repository_key FROM concurrency_slots s"
    " JOIN k ON s.repository_key = k.key WHERE s.state = 'queued'"
    " UNION ALL SELECT 'mode', p.queue_mode, '', 0, 0, 0, 0, p.repository_key"
    " FROM pac_repository_policies p JOIN k ON p.repository_key = k.key";
#undef PAC_IN_NAMESPACE

}  // namespace

absl::StatusOr<RepositorySnapshot> PostgreSQLDriver::GetRepositorySnapshot(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto r = Query(ctx, kSnapshotSql, {std::string(repo_key)});
  if (!r.ok()) return r.status();
  RepositorySnapshot out;
  const std::string repo(repo_key);
  for (int i = 0; i < r->rows(); ++i) AddSnapshotRow(*r, i, repo, &out);
  OrderSnapshot(&out);
  return out;
}

absl::StatusOr<std::vector<RepositoryListing>>
PostgreSQLDriver::ListRepositorySnapshots(const Context& ctx,
                                          std::string_view namespace_name,
                                          std::string_view after,
                                          size_t limit) {
  if (absl::Status s = ValidateNamespaceFilter(namespace_name); !s.ok()) {
    return s;
  }
  auto r = Query(
      ctx, kListingPageSql,
      {std::string(namespace_name), std::string(after), std::to_string(limit)});
  if (!r.ok()) return r.status();
  // The page's keys come first (a CTE's rows, before the others of the
  // UNION ALL is not promised: so keyed, then ordered here).
  std::map<std::string, RepositorySnapshot> page;
  for (int i = 0; i < r->rows(); ++i) {
    std::string key(r->Get(i, 7));
    AddSnapshotRow(*r, i, key, &page[key]);
  }
  std::vector<RepositoryListing> out;
  out.reserve(page.size());
  for (auto& [key, snap] : page) {  // std::map: byte order
    OrderSnapshot(&snap);
    out.push_back(RepositoryListing{key, std::move(snap)});
  }
  return out;
}

}  // namespace pac::concurrency::internal
