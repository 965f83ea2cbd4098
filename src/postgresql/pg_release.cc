// The PostgreSQL driver's release by lease id and pac_settle: a release in
// a repository without a queue commits without the repository row's lock;
// a second transaction sent with it in one round trip (pipeline mode)
// sends the notifications it collected and says whether a run queued
// meanwhile waits beside a free slot, and only then does pac_settle, in a
// third, admit it.
// Why, and why no admission is lost: schema_functions.cc,
// pac_release_lease and pac_settle.
#include "src/common/logging.h"
#include "src/postgresql/pg_common.h"
#include "src/postgresql/postgresql_driver.h"

namespace pac::concurrency::internal {
namespace {

// clang-format off
constexpr const char* kReleaseLeaseSql =
    "SELECT o_kind, o_run, o_lease, "
    PAC_MICROS("o_acquired") ", " PAC_MICROS("o_expires") ", o_token, o_pos,"
    " o_repo FROM pac_release_lease($1, $2, $3,"
    " $4::bigint * interval '1 microsecond', $5, $6::boolean)";

// One repository, named: the driver no longer sends pac_settle's NULL form
// (the repository the session's last release left), since the statement
// after a release reads that itself (kAfterReleaseSql).
constexpr const char* kSettleSql =
    "SELECT o_kind, o_run, o_lease, "
    PAC_MICROS("o_acquired") ", " PAC_MICROS("o_expires") ", o_token, o_pos"
    " FROM pac_settle($1, $2::bigint * interval '1 microsecond', $3,"
    " $4::boolean)";

// After a release, in a transaction of its own: the notifications the
// release collected (pac_notify) go, as pac_send_notify sends them but in
// plain SQL (a PL/pgSQL call and its nested statements cost more than the
// rest of this transaction), and the pac.settle_repo the release left is
// read and cleared. Answers the repository (from the setting, else, on a
// pooler's other server connection, from the release's kept answer under
// $1) and whether pac_settle would admit there: a queue and a free slot,
// as pac_settle's own look without the lock. Mostly 'f': then no
// pac_settle. The subquery v (OFFSET 0: not pulled up) reads the settings
// before the outer list clears them.
constexpr const char* kAfterReleaseSql =
    "SELECT (SELECT count(pg_notify('pac_concurrency', x))"
    " FROM unnest(string_to_array(rtrim(v.pending, E'\\n'), E'\\n')) x),"
    " set_config('pac.pending_notify', '', false),"
    " set_config('pac.settle_repo', '', false),"
    " set_config('synchronous_commit', 'off', true),"
    " v.repo,"
    " EXISTS (SELECT 1 FROM concurrency_slots q"
    " WHERE q.repository_key = v.repo AND q.state = 'queued')"
    " AND (SELECT t.concurrency_limit = 0 OR t.concurrency_limit >"
    " (SELECT count(*) FROM concurrency_slots s"
    " WHERE s.repository_key = v.repo AND s.state = 'running'"
    " AND s.expires_at > clock_timestamp())"
    " FROM pac_repositories t WHERE t.repository_key = v.repo)"
    " FROM (SELECT current_setting('pac.pending_notify', true) AS pending,"
    " coalesce(nullif(current_setting('pac.settle_repo', true), ''),"
    " (SELECT o.result -> 0 ->> 'repo' FROM pac_outcomes o"
    " WHERE o.request_id = $1)) AS repo OFFSET 0) v";

// Several repositories (in key order, the order their rows are locked in),
// each row with its repository (column 7).
constexpr const char* kSettleManySql =
    "SELECT s.o_kind, s.o_run, s.o_lease, "
    PAC_MICROS("s.o_acquired") ", " PAC_MICROS("s.o_expires") ","
    " s.o_token, s.o_pos, u.repo"
    " FROM unnest($1::text[]) WITH ORDINALITY AS u(repo, n),"
    " LATERAL pac_settle(u.repo, $2::bigint * interval '1 microsecond', NULL)"
    " WITH ORDINALITY AS s(o_kind, o_run, o_lease, o_acquired, o_expires,"
    " o_token, o_pos, m)"
    " ORDER BY u.n, s.m";
// clang-format on

}  // namespace

absl::StatusOr<ReleaseResult> PostgreSQLDriver::ReleaseLease(
    const Context& ctx, std::string_view lease_id, std::string_view run_key,
    std::string_view repo_key) {
  const std::string request = RequestId();
  // The last parameter is p_retry.
  const std::vector<PgParam> release = {
      std::string(lease_id), OptText(run_key), OptText(repo_key),
      TtlMicros(),           request,          "false"};
  const std::vector<PgParam> after = {request};
  std::vector<PgResult> results;
  absl::Status s = Retrying(
      ctx,
      [&](PgConnection& conn, const Context& c, bool retrying) -> absl::Status {
        const std::vector<PgParam> release_params =
            WithRetryFlag(release, retrying);
        auto r = conn.ExecPipeline(c, {{kReleaseLeaseSql, &release_params},
                                       {kAfterReleaseSql, &after}});
        if (!r.ok()) return r.status();
        results = std::move(*r);
        return absl::OkStatus();
      });
  if (!s.ok()) return s;
  ReleaseResult result;
  std::string repo(repo_key);
  const PgResult& released = results[0];
  for (int i = 0; i < released.rows(); ++i) {
    repo = std::string(released.Get(i, 7));
    if (released.Get(i, 0) == "released") {
      result.released = true;
      logger_->debug("slot released: {}", released.Get(i, 1));
    } else if (released.Get(i, 0) == "admitted") {
      // Admitted with the release: its repository had a queue.
      result.admitted.push_back(AdmittedFromRow(released, i, repo));
    }
  }
  // A run queued meanwhile, unseen by the release, beside the slot it
  // freed (rare): pac_settle admits it.
  const PgResult& after_release = results[1];
  if (after_release.rows() == 1 && after_release.Get(0, 5) == "t") {
    auto settled = Settle(ctx, {std::string(after_release.Get(0, 4))});
    if (settled.ok()) {
      for (Lease& l : *settled) result.admitted.push_back(std::move(l));
    } else {
      // The release committed: it is answered. The run waits for the
      // next change of its repository (a release or an acquire there).
      logger_->warn(
          "postgresql: released, but could not admit the queue of "
          "{}: {}",
          after_release.Get(0, 4), settled.status().ToString());
    }
  }
  return result;
}

absl::StatusOr<std::vector<Lease>> PostgreSQLDriver::Settle(
    const Context& ctx, const std::vector<std::string>& repo_keys) {
  std::vector<Lease> admitted;
  if (repo_keys.empty()) return admitted;
  std::optional<PgResult> r;
  if (repo_keys.size() == 1) {
    auto one = Query(ctx, kSettleSql,
                     {repo_keys[0], TtlMicros(), RequestId(), "false"},
                     Notifies::kAfterSettle, Retry::kFlagLast);
    if (!one.ok()) return one.status();
    r.emplace(std::move(*one));
  } else {
    auto many =
        Query(ctx, kSettleManySql, {ArrayLiteral(repo_keys), TtlMicros()},
              Notifies::kAfterSettle);
    if (!many.ok()) return many.status();
    r.emplace(std::move(*many));
  }
  for (int i = 0; i < r->rows(); ++i) {
    if (r->Get(i, 0) != "admitted") continue;
    const std::string repo =
        repo_keys.size() == 1 ? repo_keys[0] : std::string(r->Get(i, 7));
    admitted.push_back(AdmittedFromRow(*r, i, repo));
  }
  return admitted;
}

}  // namespace pac::concurrency::internal
