// The PostgreSQL driver's kept answers (pac_outcomes) on a real server:
// request ids ordered by time, and answers forgotten after ten minutes
// whether or not a lease ever expires.
#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/postgresql/pg_common.h"
#include "src/postgresql/pg_connection.h"
#include "tests/conformance/pg_test_env.h"

namespace pac::concurrency {
namespace {

using conformance::TestPostgreSQLConfig;
using internal::NewRequestId;
using internal::PgConnection;

int64_t PrefixMicros(const std::string& id) {
  uint64_t v = 0;
  EXPECT_TRUE(absl::SimpleHexAtoi(id.substr(0, 16), &v)) << id;
  return static_cast<int64_t>(v);
}

// An id starts with its time in Unix microseconds (16 hex digits), then 64
// random bits: ids made later sort after, so the kept answers' index grows
// at its end and the old ones go as one range of it.
TEST(PostgreSQLOutcomesTest, RequestIdsStartWithTheirTime) {
  const absl::Time at = absl::FromUnixMicros(1'780'000'000'123'456);
  const std::string id = NewRequestId(at);
  ASSERT_EQ(id.size(), 32u);
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(PrefixMicros(id), absl::ToUnixMicros(at));
  std::set<std::string> seen;
  std::string last;
  for (int i = 0; i < 1000; ++i) {
    const std::string next = NewRequestId(at + absl::Microseconds(i));
    EXPECT_GT(next, last);
    EXPECT_TRUE(seen.insert(next).second) << next;
    last = next;
  }
  // Within one microsecond the random half keeps them apart.
  EXPECT_NE(NewRequestId(at), NewRequestId(at));
}

std::string Hex16(int64_t micros) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx",
                static_cast<unsigned long long>(micros));
  return buf;
}

int64_t Count(PgConnection& c, const std::string& sql,
              const std::vector<internal::PgParam>& params) {
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto r = c.Exec(ctx, sql, params);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->GetInt(0, 0) : -1;
}

// Kept answers are forgotten after ten minutes by a driver's background
// cleanup even when no lease expires: before, only pac_reap deleted them,
// and it runs only for an expired lease or queue deadline, so a healthy
// installation kept every answer it ever gave. Seen failing before the
// change: the three old rows were still there after the wait.
TEST(PostgreSQLOutcomesTest, OldAnswersGoWithoutAnyExpiry) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  // A driver first: it migrates the schema the rows below go into.
  auto first = NewPostgreSQLDriver(*config, DriverOptions{});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*first)->Close().ok());
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto conn = PgConnection::Open(*config, ctx);
  ASSERT_TRUE(conn.ok()) << conn.status();
  const int64_t now = absl::ToUnixMicros(absl::Now());
  const int64_t old = now - absl::ToInt64Microseconds(absl::Minutes(11));
  // Old by its id; old by its row's time only (an id of an earlier
  // version: random, here one that sorts after any time); a settle's
  // answer under an old id; and a fresh one, which stays.
  const std::string tag = Hex16(now % 0xffffff);
  const std::string old_id = Hex16(old) + "0" + tag.substr(1);
  const std::string legacy_id = "ffff" + tag + "000000000000";
  const std::string old_settle = old_id + "/settle";
  const std::string fresh_id = Hex16(now) + "1" + tag.substr(1);
  for (const auto& [id, age] :
       {std::pair{old_id, 11}, std::pair{legacy_id, 11},
        std::pair{old_settle, 11}, std::pair{fresh_id, 0}}) {
    auto r = (*conn)->Exec(ctx,
                           "INSERT INTO pac_outcomes (request_id, result,"
                           " created_at) VALUES ($1, '[]',"
                           " clock_timestamp() - $2::int * interval"
                           " '1 minute')",
                           {id, std::to_string(age)});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  const std::string count_sql =
      "SELECT count(*) FROM pac_outcomes WHERE request_id = ANY($1::text[])";
  const std::string old_ids =
      internal::ArrayLiteral({old_id, legacy_id, old_settle});
  ASSERT_EQ(Count(**conn, count_sql, {old_ids}), 3);
  DriverOptions with_cleanup;
  with_cleanup.background_cleanup = true;
  auto d = NewPostgreSQLDriver(*config, with_cleanup);
  ASSERT_TRUE(d.ok()) << d.status();
  const absl::Time give_up = absl::Now() + absl::Seconds(15);
  while (Count(**conn, count_sql, {old_ids}) > 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(Count(**conn, count_sql, {old_ids}), 0);
  EXPECT_EQ(Count(**conn, count_sql, {internal::ArrayLiteral({fresh_id})}), 1);
  EXPECT_TRUE((*d)->Close().ok());
  (void)(*conn)->Exec(ctx, "DELETE FROM pac_outcomes WHERE request_id = $1",
                      {fresh_id});
}

}  // namespace
}  // namespace pac::concurrency
