// The PostgreSQL driver's shared limits (docs/policies.md, "Shared
// limits"): setting, forgetting and listing them. Admission across the
// members is server-side (schema_shared.cc).
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/postgresql/pg_common.h"
#include "src/postgresql/postgresql_driver.h"

namespace pac::concurrency::internal {

absl::Status PostgreSQLDriver::SetSharedLimit(const Context& ctx,
                                              const SharedLimit& limit) {
  if (absl::Status s = ValidateSharedLimit(limit); !s.ok()) return s;
  // Idempotent: a retry sets the same limit again.
  auto r = Query(ctx,
                 "SELECT pac_set_shared_limit($1, $2::int, $3::bigint * "
                 "interval '1 microsecond')",
                 {limit.name, std::to_string(limit.limit), TtlMicros()},
                 Notifies::kYes);
  if (!r.ok()) return r.status();
  logger_->info("shared limit {} set to {}", limit.name, limit.limit);
  return absl::OkStatus();
}

absl::Status PostgreSQLDriver::DeleteSharedLimit(const Context& ctx,
                                                 std::string_view name) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  auto r = Query(ctx,
                 "SELECT pac_set_shared_limit($1, NULL, $2::bigint * "
                 "interval '1 microsecond')",
                 {std::string(name), TtlMicros()}, Notifies::kYes);
  if (!r.ok()) return r.status();
  logger_->info("shared limit {} deleted", name);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SharedLimitStatus>>
PostgreSQLDriver::ListSharedLimits(const Context& ctx) {
  // One statement: each limit's row with its members' counts.
  auto r = Query(
      ctx,
      "SELECT l.name, l.concurrency_limit,"
      " (SELECT count(*) FROM pac_shared_members m JOIN concurrency_slots s"
      "   ON s.repository_key = m.repository_key WHERE m.name = l.name"
      "   AND s.state = 'running' AND s.expires_at > clock_timestamp()),"
      " (SELECT count(*) FROM pac_shared_members m JOIN concurrency_slots s"
      "   ON s.repository_key = m.repository_key WHERE m.name = l.name"
      "   AND s.state = 'queued'),"
      " array_to_string(ARRAY(SELECT m.repository_key::text"
      "   FROM pac_shared_members m WHERE m.name = l.name"
      "   ORDER BY m.repository_key COLLATE \"C\"), ' ')"
      " FROM pac_shared_limits l ORDER BY l.name COLLATE \"C\"",
      {});
  if (!r.ok()) return r.status();
  std::vector<SharedLimitStatus> out;
  out.reserve(r->rows());
  for (int i = 0; i < r->rows(); ++i) {
    SharedLimitStatus st;
    st.name = std::string(r->Get(i, 0));
    if (!r->IsNull(i, 1)) st.limit = static_cast<int32_t>(r->GetInt(i, 1));
    st.running = r->GetInt(i, 2);
    st.queued = r->GetInt(i, 3);
    // Repository keys have no spaces.
    for (absl::string_view key :
         absl::StrSplit(AV(r->Get(i, 4)), ' ', absl::SkipEmpty())) {
      st.members.emplace_back(key);
    }
    out.push_back(std::move(st));
  }
  return out;
}

}  // namespace pac::concurrency::internal
