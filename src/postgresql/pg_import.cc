// ImportRuns and ImportBatch on PostgreSQL: a batch is one statement (one
// transaction) of pac_import calls, one per repository, in key order.
#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/postgresql/pg_common.h"
#include "src/postgresql/postgresql_driver.h"

namespace pac::concurrency::internal {
namespace {

// An ImportBatch of `parts` repositories: one statement (one transaction),
// pac_import per part with nine parameters each, from $1. Rows carry the
// part's index (column 7) and their order within it (column 8).
std::string ImportBatchSql(const std::vector<size_t>& order) {
  std::string sql;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t b = 9 * k;
    auto arg = [&](size_t i) { return "$" + std::to_string(b + i); };
    if (k > 0) sql += " UNION ALL ";
    sql += "SELECT o_kind, o_run, o_lease, " PAC_MICROS(
               "o_acquired") ", " PAC_MICROS("o_expires") ", o_token, o_pos, " +
           std::to_string(order[k]) + ", f.n FROM pac_import(" + arg(1) + ", " +
           arg(2) + "::int, " + arg(3) + "::boolean, " + arg(4) + "::text[], " +
           arg(5) +
           "::text[], ARRAY(SELECT 'epoch'::timestamptz + (t.m / 1000000) * "
           "interval '1 second' + (t.m % 1000000) * interval '1 microsecond' "
           "FROM unnest(" +
           arg(6) + "::bigint[]) WITH ORDINALITY AS t(m, n) ORDER BY t.n), " +
           arg(7) + "::bigint * interval '1 microsecond', " + arg(8) +
           "::text[], " + arg(9) +
           "::int[]) WITH ORDINALITY AS f(o_kind, "
           "o_run, o_lease, o_acquired, o_expires, o_token, o_pos, n)";
  }
  return sql + " ORDER BY 8, 9";
}

// `l`, admitted by pac_settle after the import: one of the request's
// waiting runs moves from `o.queued` to `o.admitted` (kept in request
// order), any other run to `o.others_admitted`; the places of the runs
// still queued move up by one (pac_settle admits queue heads).
void MoveAdmitted(Lease l, const ImportRequest& request, ImportResult& o) {
  for (QueueEntry& q : o.queued) --q.position;
  auto it =
      std::find_if(o.queued.begin(), o.queued.end(), [&](const QueueEntry& q) {
        return q.pipeline_run_key == l.pipeline_run_key;
      });
  if (it == o.queued.end()) {
    o.others_admitted.push_back(std::move(l));
    return;
  }
  o.queued.erase(it);
  o.admitted.push_back(std::move(l));
  absl::flat_hash_map<std::string_view, size_t> index;
  for (size_t i = 0; i < request.waiting.size(); ++i) {
    index.emplace(request.waiting[i].pipeline_run_key, i);
  }
  std::stable_sort(o.admitted.begin(), o.admitted.end(),
                   [&](const Lease& a, const Lease& b) {
                     return index[a.pipeline_run_key] <
                            index[b.pipeline_run_key];
                   });
}

}  // namespace

// A batch of one part (which ImportBatch checks as ImportRuns would).
absl::StatusOr<ImportResult> PostgreSQLDriver::ImportRuns(
    const Context& ctx, const Repository& repo, const ImportRequest& request) {
  auto out = ImportBatch(ctx, {RepositoryImport{repo, request}});
  if (!out.ok()) return out.status();
  return std::move(out->front());
}

absl::StatusOr<std::vector<ImportResult>> PostgreSQLDriver::ImportBatch(
    const Context& ctx, const std::vector<RepositoryImport>& parts) {
  if (absl::Status s = ValidateImportBatch(parts, GetImportCapacity());
      !s.ok()) {
    return s;
  }
  if (parts.empty()) return std::vector<ImportResult>{};
  // The parts in repository order: each pac_import locks its repository's
  // row, and two batches (or a batch and an acquire, which locks one row)
  // then take their locks in one order and cannot deadlock.
  std::vector<size_t> order(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return parts[a].repository.Key() < parts[b].repository.Key();
  });
  std::vector<PgParam> params;
  params.reserve(9 * parts.size());
  for (size_t i : order) {
    const Repository& repo = parts[i].repository;
    const ImportRequest& request = parts[i].request;
    std::vector<std::string> waiting, micros, groups, priorities;
    waiting.reserve(request.waiting.size());
    micros.reserve(request.waiting.size());
    for (const ImportRequest::Waiting& w : request.waiting) {
      waiting.push_back(w.pipeline_run_key);
      micros.push_back(std::to_string(absl::ToUnixMicros(w.creation_time)));
      groups.push_back(w.group);  // '' for none (pac_import: NULL)
      priorities.push_back(std::to_string(w.priority));
    }
    params.push_back(repo.Key());
    params.push_back(std::to_string(EffectiveLimit(repo)));
    params.push_back(request.set_limit ? "true" : "false");
    params.push_back(ArrayLiteral(request.running));
    params.push_back(ArrayLiteral(waiting));
    params.push_back(ArrayLiteral(micros));
    params.push_back(TtlMicros());
    params.push_back(ArrayLiteral(groups));
    params.push_back(ArrayLiteral(priorities));
  }
  auto r = Query(ctx, ImportBatchSql(order), params, Notifies::kYes);
  if (!r.ok()) return r.status();
  std::vector<ImportResult> out(parts.size());
  std::vector<absl::flat_hash_set<std::string_view>> mine(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    for (const std::string& run : parts[i].request.running) {
      mine[i].insert(run);
    }
    for (const ImportRequest::Waiting& w : parts[i].request.waiting) {
      mine[i].insert(w.pipeline_run_key);
    }
  }
  for (int i = 0; i < r->rows(); ++i) {
    const int64_t part = r->GetInt(i, 7);
    if (part < 0 || part >= static_cast<int64_t>(parts.size())) continue;
    const std::string repo_key = parts[part].repository.Key();
    ImportResult& o = out[part];
    std::string_view kind = r->Get(i, 0);
    if (kind == "admitted") {
      if (!mine[part].contains(r->Get(i, 1))) {
        o.others_admitted.push_back(LeaseFromRow(*r, i, repo_key));
      }
    } else if (kind == "running") {
      o.running.push_back(LeaseFromRow(*r, i, repo_key));
    } else if (kind == "held") {
      o.admitted.push_back(LeaseFromRow(*r, i, repo_key));
    } else if (kind == "queued") {
      QueueEntry q;
      q.pipeline_run_key = std::string(r->Get(i, 1));
      q.creation_time = r->GetMicros(i, 3);
      q.enqueued_at = r->GetMicros(i, 4);
      q.sequence = r->GetInt(i, 5);
      q.position = r->GetInt(i, 6);
      o.queued.push_back(std::move(q));
    }
  }
  // Runs queued here under the lock while a release without it (a
  // lease's, pg_release.cc) freed a slot: pac_settle admits them.
  std::vector<std::string> queued_repos;
  absl::flat_hash_map<std::string, size_t> part_of;
  for (size_t i : order) {
    if (out[i].queued.empty()) continue;
    queued_repos.push_back(parts[i].repository.Key());
    part_of[queued_repos.back()] = i;
  }
  if (!queued_repos.empty()) {
    auto settled = Settle(ctx, queued_repos);
    if (!settled.ok()) return settled.status();
    for (Lease& l : *settled) {
      const size_t i = part_of[l.repository_key];
      MoveAdmitted(std::move(l), parts[i].request, out[i]);
    }
  }
  for (const RepositoryImport& p : parts) {
    logger_->info("imported {} running and {} waiting runs into {}",
                  p.request.running.size(), p.request.waiting.size(),
                  p.repository.Key());
  }
  return out;
}

}  // namespace pac::concurrency::internal
