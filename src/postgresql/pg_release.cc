// The PostgreSQL driver's release by lease id and pac_settle: a release in
// a repository without a queue commits without the repository row's lock,
// and pac_settle, a second transaction sent with it in one round trip
// (pipeline mode), admits a run queued meanwhile.
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

// $1 NULL: the repository the release before it on the connection left.
constexpr const char* kSettleSql =
    "SELECT o_kind, o_run, o_lease, "
    PAC_MICROS("o_acquired") ", " PAC_MICROS("o_expires") ", o_token, o_pos"
    " FROM pac_settle($1, $2::bigint * interval '1 microsecond', $3,"
    " $4::boolean)";

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
  const std::vector<PgParam> settle = {std::nullopt, TtlMicros(), request,
                                       "false"};
  std::vector<PgResult> results;
  absl::Status s = Retrying(
      ctx,
      [&](PgConnection& conn, const Context& c, bool retrying) -> absl::Status {
        const std::vector<PgParam> release_params =
            WithRetryFlag(release, retrying);
        const std::vector<PgParam> settle_params =
            WithRetryFlag(settle, retrying);
        auto r = conn.ExecPipeline(c, {{kReleaseLeaseSql, &release_params},
                                       {kSettleSql, &settle_params}});
        if (!r.ok()) return r.status();
        NotifyAfter(conn, (*r)[1], Notifies::kAfterSettle);
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
    }
  }
  // Admitted with the release (its repository had a queue), then by the
  // settle after it.
  const PgResult* const parts[] = {&released, &results[1]};
  for (const PgResult* r : parts) {
    for (int i = 0; i < r->rows(); ++i) {
      if (r->Get(i, 0) != "admitted") continue;
      result.admitted.push_back(AdmittedFromRow(*r, i, repo));
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
