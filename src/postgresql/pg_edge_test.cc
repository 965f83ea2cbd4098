// The PostgreSQL driver's edge cases on a real server: interleavings forced
// by holding a repository's row lock from a connection of the test's own
// (admissions then stop at their FOR UPDATE, and the test decides what
// commits before they go on), a role whose default isolation is not READ
// COMMITTED, keys of the longest valid length, and cleanup beside another
// repository that uses the same run key, a LISTEN connection whose path
// goes dead unseen, an answer lost after its commit, notifications sent
// after the commit, a run queued while a lease is released without the
// lock, and prepared statements the server lost.
#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/postgresql/pg_connection.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/tcp_forwarder.h"
#include "tests/conformance/unique_ns.h"

namespace pac::concurrency {
namespace {

using conformance::TestPostgreSQLConfig;
using internal::PgConnection;
using ::testing::HasSubstr;

std::unique_ptr<PgConnection> Connect() {
  auto config = TestPostgreSQLConfig();
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto c = PgConnection::Open(*config, ctx);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

std::unique_ptr<Driver> NewDriver() {
  auto config = TestPostgreSQLConfig();
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  DriverOptions o;
  o.background_cleanup = false;
  auto d = NewPostgreSQLDriver(*config, o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *std::move(d) : nullptr;
}

absl::Status Exec(PgConnection& c, const std::string& sql,
                  const std::vector<internal::PgParam>& params = {}) {
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto r = c.Exec(ctx, sql, params);
  return r.ok() ? absl::OkStatus() : r.status();
}

// Waits until `n` backends wait for a lock inside `function`.
bool AwaitLockWaiters(PgConnection& c, int n,
                      const std::string& function = "pac_acquire") {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up) {
    Context ctx = Context::WithTimeout(Context(), absl::Seconds(5));
    auto r = c.Exec(ctx,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%' || $1 || '%'",
                    {function});
    if (r.ok() && r->GetInt(0, 0) >= n) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

// Two drivers (two connection pools, as two replicas) acquire a slot of
// `repo` (limit 1) while `holder` holds the repository's row locked; once
// both wait for the lock, `between` runs on `holder`, which then commits.
// Returns how many of the two acquired.
int TwoAcquiresAcross(Driver& d1, Driver& d2, const Repository& repo,
                      PgConnection& holder, const std::string& between) {
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  EXPECT_TRUE(Exec(holder, "BEGIN").ok());
  EXPECT_TRUE(Exec(holder,
                   "SELECT 1 FROM pac_repositories "
                   "WHERE repository_key = $1 FOR UPDATE",
                   {repo.Key()})
                  .ok());
  absl::StatusOr<AcquireResult> r1, r2;
  std::thread t1([&] { r1 = d1.AcquireSlot(ctx, repo, repo.ns + "/r1"); });
  std::thread t2([&] { r2 = d2.AcquireSlot(ctx, repo, repo.ns + "/r2"); });
  auto watcher = Connect();
  EXPECT_TRUE(watcher != nullptr && AwaitLockWaiters(*watcher, 2))
      << "the acquires never waited for the row lock";
  if (!between.empty()) {
    EXPECT_TRUE(Exec(holder, between, {repo.Key()}).ok());
  }
  EXPECT_TRUE(Exec(holder, "COMMIT").ok());
  t1.join();
  t2.join();
  EXPECT_TRUE(r1.ok()) << r1.status();
  EXPECT_TRUE(r2.ok()) << r2.status();
  return (r1.ok() && r1->acquired ? 1 : 0) + (r2.ok() && r2->acquired ? 1 : 0);
}

// Issue 20 (12): the cleanup deletes the repository's row between an
// acquire's insert (which found the row) and its lock (which then finds
// none). Before: the acquire granted without holding any lock, and its
// slot had no repository row: the limit was gone and a release by key
// freed nothing (pac_release found no row to lock).
TEST(PostgreSQLEdgeTest, AcquiresRacingACleanupNeverOverAdmit) {
  auto d1 = NewDriver(), d2 = NewDriver();
  auto holder = Connect();
  ASSERT_TRUE(d1 && d2 && holder);
  Repository repo{UniqueNs("clean-race"), "repo", 1};
  ASSERT_TRUE(d1->SetRepositoryLimit(Context(), repo).ok());
  EXPECT_EQ(TwoAcquiresAcross(*d1, *d2, repo, *holder,
                              "SELECT pac_cleanup($1, interval '30 seconds')"),
            1);
  EXPECT_EQ(*d1->GetCurrentSlots(Context(), repo.Key()), 1);
  EXPECT_EQ(*d1->GetRepositoryLimit(Context(), repo.Key()), 1);
  // The slot has its repository: a release by key finds and frees it,
  // and admits the other run.
  auto running = d1->GetRunningPipelineRuns(Context(), repo.Key());
  ASSERT_TRUE(running.ok() && running->size() == 1u);
  auto rel = d1->ReleaseSlot(Context(), "", (*running)[0].pipeline_run_key,
                             repo.Key());
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(rel->released);
  EXPECT_EQ(rel->admitted.size(), 1u);
}

// Issue 20 (13): a role whose sessions default to REPEATABLE READ. A waiter
// that counted from a snapshot taken before it waited would grant beside
// the grant it waited for. Before: both acquires granted over a limit of 1.
// A queue time limit set while an import that creates the repository (and
// queues runs beyond its limit) is not yet committed: the policy waits for
// the import, and its runs get their deadlines. (With no repository row to
// lock, pac_set_policy used to finish at once and miss them.)
TEST(PostgreSQLEdgeTest, APolicySetDuringTheFirstImportTimesItsRunsOut) {
  auto driver = NewDriver();  // migrates: this build's functions
  ASSERT_TRUE(driver != nullptr);
  auto importer = Connect();
  auto setter = Connect();
  ASSERT_TRUE(importer != nullptr && setter != nullptr);
  Repository repo{UniqueNs("policyrace"), "repo", 1};
  const std::string k = repo.Key(), ns = repo.ns;
  ASSERT_TRUE(Exec(*importer, "BEGIN").ok());
  ASSERT_TRUE(Exec(*importer, absl::StrCat("SELECT count(*) FROM pac_import('",
                                           k, "', 1, true, ARRAY['", ns,
                                           "/run'], ARRAY['", ns, "/w1', '", ns,
                                           "/w2'], ARRAY[now(), now()],"
                                           " interval '1 hour')"))
                  .ok());
  std::atomic<bool> set{false};
  absl::Status set_status;
  std::thread policy([&] {
    set_status = Exec(*setter, absl::StrCat("SELECT pac_set_policy('", k,
                                            "', interval '1 hour',"
                                            " 'oldest-first',"
                                            " interval '1 hour')"));
    set = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(set.load()) << "the policy did not wait for the import";
  ASSERT_TRUE(Exec(*importer, "COMMIT").ok());
  policy.join();
  ASSERT_TRUE(set_status.ok()) << set_status;
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto r = importer->Exec(
      ctx,
      "SELECT count(*) FILTER (WHERE queue_deadline IS NULL), count(*)"
      " FROM concurrency_slots WHERE repository_key = $1 AND state = 'queued'",
      {k});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->GetInt(0, 1), 2);
  EXPECT_EQ(r->GetInt(0, 0), 0) << "queued runs without a deadline";
  // The policy alone lists nothing, and a policy set on a repository that
  // does not exist leaves no row behind.
  Repository none{UniqueNs("policyonly"), "repo", 1};
  ASSERT_TRUE(Exec(*setter, absl::StrCat("SELECT pac_set_policy('", none.Key(),
                                         "', interval '1 hour',"
                                         " 'oldest-first', interval '1 hour')"))
                  .ok());
  auto rows = importer->Exec(
      ctx, "SELECT count(*) FROM pac_repositories WHERE repository_key = $1",
      {none.Key()});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->GetInt(0, 0), 0);
}

TEST(PostgreSQLEdgeTest, ARoleDefaultOfRepeatableReadDoesNotOverAdmit) {
  auto admin = Connect();
  ASSERT_TRUE(admin != nullptr);
  ASSERT_TRUE(Exec(*admin,
                   "ALTER ROLE CURRENT_USER SET default_transaction_isolation "
                   "= 'repeatable read'")
                  .ok());
  absl::Cleanup reset = [&] {
    EXPECT_TRUE(Exec(*admin,
                     "ALTER ROLE CURRENT_USER RESET "
                     "default_transaction_isolation")
                    .ok());
  };
  auto d1 = NewDriver(), d2 = NewDriver();
  auto holder = Connect();
  ASSERT_TRUE(d1 && d2 && holder);
  Repository repo{UniqueNs("rr"), "repo", 1};
  ASSERT_TRUE(d1->SetRepositoryLimit(Context(), repo).ok());
  EXPECT_EQ(TwoAcquiresAcross(*d1, *d2, repo, *holder, ""), 1);
  EXPECT_EQ(*d1->GetCurrentSlots(Context(), repo.Key()), 1);
  // A session that is not READ COMMITTED is refused by name, whoever
  // calls the functions.
  ASSERT_TRUE(
      Exec(*holder, "SET default_transaction_isolation = 'repeatable read'")
          .ok());
  absl::Status s = Exec(*holder,
                        "SELECT * FROM pac_acquire($1, 'x/y', 1, NULL, true, "
                        "false, '30 seconds', false, NULL)",
                        {repo.Key()});
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("READ COMMITTED"));
}

// Issue 20 (16): keys of the longest length the contract allows (a
// 63-character namespace and a 253-character name) work on PostgreSQL as
// on every driver. Before: "value too long for type character
// varying(255)", naming no field.
TEST(PostgreSQLEdgeTest, KeysOfTheLongestValidLengthWork) {
  auto d = NewDriver();
  ASSERT_TRUE(d != nullptr);
  std::string ns = UniqueNs("long");
  ns += std::string(63 - ns.size(), 'n');
  const std::string label(63, 'a');
  const std::string name =
      absl::StrCat(label, ".", label, ".", label, ".", std::string(61, 'b'));
  ASSERT_EQ(name.size(), 253u);
  Repository repo{ns, name, 1};
  const std::string run = absl::StrCat(ns, "/", name);
  Context ctx;
  auto a = d->AcquireSlot(ctx, repo, run);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->acquired);
  ASSERT_TRUE(d->SetRepositoryState(ctx, repo, "active").ok());
  ASSERT_TRUE(d->SetPipelineRunState(ctx, run, "started").ok());
  EXPECT_EQ(*d->GetPipelineRunState(ctx, run), "started");
  auto rel = d->ReleaseSlot(ctx, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok() && rel->released);
  EXPECT_TRUE(d->CleanupRepository(ctx, repo.Key()).ok());
}

// Issue 20 (16): run states are keyed by run alone. Cleaning up ns/a must
// keep the state of a run key that ns/ab still uses. Before: it was
// deleted.
TEST(PostgreSQLEdgeTest, CleanupKeepsTheStateOfARunAnotherRepositoryUses) {
  auto d = NewDriver();
  ASSERT_TRUE(d != nullptr);
  Context ctx;
  const std::string ns = UniqueNs("shared");
  Repository a{ns, "a", 1}, ab{ns, "ab", 1};
  const std::string run = ns + "/run";
  ASSERT_TRUE(d->AcquireSlot(ctx, a, run)->acquired);
  ASSERT_TRUE(d->AcquireSlot(ctx, ab, run)->acquired);
  ASSERT_TRUE(d->SetPipelineRunState(ctx, run, "started").ok());
  ASSERT_TRUE(d->AcquireSlot(ctx, a, ns + "/only-a")->position > 0);
  ASSERT_TRUE(d->SetPipelineRunState(ctx, ns + "/only-a", "queued").ok());
  ASSERT_TRUE(d->CleanupRepository(ctx, a.Key()).ok());
  EXPECT_EQ(*d->GetPipelineRunState(ctx, run), "started");
  EXPECT_TRUE(
      absl::IsNotFound(d->GetPipelineRunState(ctx, ns + "/only-a").status()));
  EXPECT_EQ(*d->GetCurrentSlots(ctx, ab.Key()), 1);
}

// Issue 20 (15): the LISTEN connection's path goes dead without either end
// being told (a black hole: bytes vanish, nothing is reset). Notifications
// sent meanwhile are lost; the listener must notice by itself, reconnect
// once the path is back, and tell watchers to re-read (kResync). Before:
// it looked healthy forever, and nobody was told.
TEST(PostgreSQLEdgeTest, AListenConnectionThatWentDeadUnseenIsReplaced) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  auto fwd = conformance::TcpForwarder::Start(
      absl::StrCat(config->host, ":", config->port));
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  PostgreSQLConfig through = *config;
  through.port = std::stoi((*fwd)->endpoint().substr(10));
  through.connection_timeout = absl::Seconds(2);
  DriverOptions o;
  o.background_cleanup = false;
  auto watched = NewPostgreSQLDriver(through, o);
  ASSERT_TRUE(watched.ok()) << watched.status();
  auto direct = NewDriver();
  ASSERT_TRUE(direct != nullptr);
  Repository repo{UniqueNs("half-open"), "repo", 1};
  std::atomic<int> resyncs{0}, releases{0};
  auto w = (*watched)->WatchSlotAvailability(
      Context(), repo.Key(), [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kResync) ++resyncs;
        if (e.type == WatchEventType::kReleased) ++releases;
      });
  ASSERT_TRUE(w.ok()) << w.status();
  (*fwd)->BlackHole(true);
  auto a = direct->AcquireSlot(Context(), repo, repo.ns + "/a");
  ASSERT_TRUE(a.ok() && a->acquired);
  ASSERT_TRUE(
      direct->ReleaseSlot(Context(), a->lease.lease_id, "", "")->released);
  absl::SleepFor(absl::Seconds(5));  // the ping (every 2 s) goes unanswered
  (*fwd)->BlackHole(false);
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (resyncs.load() == 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_GT(resyncs.load(), 0) << "watchers were never told to re-read";
  EXPECT_EQ(releases.load(), 0);  // the notification itself was lost
  (*w)->Stop();
  EXPECT_TRUE((*watched)->Close().ok());
}

// Issue 20 (14): a release commits, and its answer is lost when the
// connection drops. The driver sends it again with the same request id
// and must get the first answer: released, and the queue head it admitted.
// Before: the second send found nothing to release, answered "not
// released" with no admissions, and nobody learnt that w was admitted.
// By lease id (pac_release_lease, pipelined with pac_settle) and by key
// (pac_release through Query): each retry says it is one (p_retry), and
// only a retry looks for the kept answer.
void ReleaseWithTheAnswerLost(bool by_lease) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  auto fwd = conformance::TcpForwarder::Start(
      absl::StrCat(config->host, ":", config->port));
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  PostgreSQLConfig through = *config;
  through.port = std::stoi((*fwd)->endpoint().substr(10));
  through.max_connections = 1;
  DriverOptions o;
  o.background_cleanup = false;
  auto d = NewPostgreSQLDriver(through, o);
  ASSERT_TRUE(d.ok()) << d.status();
  auto direct = NewDriver();
  ASSERT_TRUE(direct != nullptr);
  Repository repo{UniqueNs("lost"), "repo", 1};
  auto x = (*d)->AcquireSlot(Context(), repo, repo.ns + "/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  // The release's statements prepared on the connection first (at their
  // second use): the reply cut below is then the release's answer, not
  // its statement's prepare.
  for (int use = 0; use < 2; ++use) {
    auto none = by_lease ? (*d)->ReleaseSlot(Context(), "no-such-lease", "", "")
                         : (*d)->ReleaseSlot(Context(), "", repo.ns + "/none",
                                             repo.Key());
    ASSERT_TRUE(none.ok() && !none->released) << none.status();
  }
  auto w = direct->AcquireSlot(Context(), repo, repo.ns + "/w");
  ASSERT_TRUE(w.ok() && !w->acquired);
  (*fwd)->CutOnNextReply();
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(20));
  auto rel = by_lease ? (*d)->ReleaseSlot(ctx, x->lease.lease_id, "", "")
                      : (*d)->ReleaseSlot(ctx, "", repo.ns + "/x", repo.Key());
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(rel->released);
  ASSERT_EQ(rel->admitted.size(), 1u);
  EXPECT_EQ(rel->admitted[0].pipeline_run_key, repo.ns + "/w");
  auto running = direct->GetRunningPipelineRuns(Context(), repo.Key());
  ASSERT_TRUE(running.ok() && running->size() == 1u);
  EXPECT_EQ((*running)[0].lease_id, rel->admitted[0].lease_id);
  EXPECT_TRUE((*d)->Close().ok());
}

TEST(PostgreSQLEdgeTest, AReleaseWhoseAnswerWasLostGetsItOnTheRetry) {
  ReleaseWithTheAnswerLost(/*by_lease=*/true);
}

TEST(PostgreSQLEdgeTest, AReleaseByKeyWhoseAnswerWasLostGetsItOnTheRetry) {
  ReleaseWithTheAnswerLost(/*by_lease=*/false);
}

// A NOTIFY serializes commits (its database-wide lock is held through the
// commit's WAL flush), so the driver's sessions collect notifications and
// send them after the commit (pac_flush_notify). Checked on a connection of
// the test's own: nothing is heard before the flush; a rolled-back change
// leaves nothing to send; a session without pac.defer_notify (a driver of
// an earlier version) still notifies at its commit.
TEST(PostgreSQLEdgeTest, NotificationsGoAfterTheCommitAndOnlyForCommits) {
  auto watcher = NewDriver();
  ASSERT_TRUE(watcher != nullptr);
  auto c = Connect();
  ASSERT_TRUE(c != nullptr);
  Repository repo{UniqueNs("deferred"), "repo", 1};
  std::atomic<int> releases{0};
  auto w = watcher->WatchSlotAvailability(
      Context(), repo.Key(), [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kReleased) ++releases;
      });
  ASSERT_TRUE(w.ok()) << w.status();
  auto await = [&](int n) {
    const absl::Time until = absl::Now() + absl::Seconds(10);
    while (releases.load() < n && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    return releases.load();
  };
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  // Acquire and release `run` on `c`; returns the release's statement.
  auto cycle = [&](const std::string& run) {
    auto a = c->Exec(ctx,
                     "SELECT o_lease FROM pac_acquire($1, $2, 1, NULL, true,"
                     " false, interval '1 hour', false, NULL)"
                     " WHERE o_kind = 'acquired'",
                     {repo.Key(), repo.ns + "/" + run});
    EXPECT_TRUE(a.ok() && a->rows() == 1)
        << (a.ok() ? "" : a.status().ToString());
    return absl::StrCat(
        "SELECT count(*) FROM pac_release('",
        a.ok() && a->rows() == 1 ? std::string(a->Get(0, 0)) : std::string(),
        "', NULL, NULL, interval '1 hour', NULL)");
  };
  auto flush = [&] {
    auto f = c->Exec(ctx, "SELECT pac_flush_notify()");
    EXPECT_TRUE(f.ok()) << f.status();
    return f.ok() ? f->GetInt(0, 0) : -1;
  };

  ASSERT_TRUE(Exec(*c, cycle("a")).ok());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(releases.load(), 0) << "notified before the flush";
  EXPECT_EQ(flush(), 1);
  EXPECT_EQ(await(1), 1);

  const std::string release_b = cycle("b");
  ASSERT_TRUE(Exec(*c, "BEGIN").ok());
  ASSERT_TRUE(Exec(*c, release_b).ok());
  ASSERT_TRUE(Exec(*c, "ROLLBACK").ok());
  EXPECT_EQ(flush(), 0) << "a rolled-back release left a notification";

  // A change that notifies more than the setting keeps (an import that
  // admits thousands): every notification still arrives, in one piece
  // with the commit and the rest after the flush.
  ASSERT_TRUE(Exec(*c, absl::StrCat("SELECT count(pac_notify('", repo.Key(),
                                    "', 'released', 'r' || g)) FROM "
                                    "generate_series(1, 500) g"))
                  .ok());
  EXPECT_GT(flush(), 0);
  EXPECT_EQ(await(501), 501);

  ASSERT_TRUE(Exec(*c, "SET pac.defer_notify = off").ok());
  ASSERT_TRUE(Exec(*c, release_b).ok());
  EXPECT_EQ(await(502), 502) << "a session that does not defer was not heard";
  EXPECT_EQ(flush(), 0);
  (*w)->Stop();
}

}  // namespace
}  // namespace pac::concurrency

namespace pac::concurrency {
namespace {

// A release by lease commits without the repository row's lock
// (pac_release_lease), and pac_settle then admits the queue. Forced here:
// an acquire counts the slot taken and goes to queue its run, but waits
// (its INSERT meets an uncommitted row of the same key, which the test's
// own connection holds); meanwhile the holder releases, and its settle
// sees no queue; then the acquire commits its queue entry beside a free
// slot. The driver's settle after queueing must admit it. Seen failing
// without that settle: the run stayed queued at place 1 beside a free slot.
TEST(PostgreSQLEdgeTest,
     ARunQueuedWhileALeaseIsReleasedWithoutTheLockIsAdmitted) {
  auto d = NewDriver();
  auto d2 = NewDriver();
  auto blocker = Connect();
  auto watcher = Connect();
  ASSERT_TRUE(d && d2 && blocker && watcher);
  Repository repo{UniqueNs("settle"), "repo", 1};
  auto x = d->AcquireSlot(Context(), repo, repo.ns + "/x");
  ASSERT_TRUE(x.ok() && x->acquired) << x.status();
  const std::string q = repo.ns + "/q";
  ASSERT_TRUE(Exec(*blocker, "BEGIN").ok());
  ASSERT_TRUE(Exec(*blocker,
                   "INSERT INTO concurrency_slots (repository_key, "
                   "pipeline_run_key, state, expires_at) "
                   "VALUES ($1, $2, 'queued', 'infinity')",
                   {repo.Key(), q})
                  .ok());
  absl::StatusOr<AcquireResult> a;
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  std::thread t([&] { a = d->AcquireSlot(ctx, repo, q); });
  ASSERT_TRUE(AwaitLockWaiters(*watcher, 1))
      << "the acquire never waited for the blocking row";
  auto rel = d2->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(rel->released);
  EXPECT_TRUE(rel->admitted.empty()) << "the release saw an uncommitted queue";
  ASSERT_TRUE(Exec(*blocker, "ROLLBACK").ok());
  t.join();
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->acquired) << "queued at place " << a->position
                           << " beside a free slot";
  auto running = d2->GetRunningPipelineRuns(Context(), repo.Key());
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].pipeline_run_key, q);
  EXPECT_TRUE(d->Close().ok());
  EXPECT_TRUE(d2->Close().ok());
}

// The other order: the release's DELETE waits (here for a row lock the
// test holds on the lease) after its statement looked and saw no queue;
// meanwhile a run is queued and committed, whose settle still counts the
// lease; then the release commits beside it. The statement pipelined
// after the release sees the queue and the free slot, and pac_settle
// admits the run within the release's call.
TEST(PostgreSQLEdgeTest, ARunQueuedWhileAReleaseWaitsIsAdmittedByIt) {
  auto d = NewDriver();
  auto locker = Connect();
  auto other = Connect();
  auto watcher = Connect();
  ASSERT_TRUE(d && locker && other && watcher);
  Repository repo{UniqueNs("after"), "repo", 1};
  auto x = d->AcquireSlot(Context(), repo, repo.ns + "/x");
  ASSERT_TRUE(x.ok() && x->acquired) << x.status();
  ASSERT_TRUE(Exec(*locker, "BEGIN").ok());
  ASSERT_TRUE(Exec(*locker,
                   "SELECT 1 FROM concurrency_slots WHERE lease_id = $1 "
                   "FOR UPDATE",
                   {x->lease.lease_id})
                  .ok());
  absl::StatusOr<ReleaseResult> rel;
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  std::thread t([&] { rel = d->ReleaseSlot(ctx, x->lease.lease_id, "", ""); });
  const bool waited = AwaitLockWaiters(*watcher, 1, "pac_release_lease");
  if (!waited) {
    (void)Exec(*locker, "ROLLBACK");
    t.join();
  }
  ASSERT_TRUE(waited) << "the release never waited for the locked lease";
  const std::string q = repo.ns + "/q";
  ASSERT_TRUE(Exec(*other,
                   "INSERT INTO concurrency_slots (repository_key, "
                   "pipeline_run_key, state, expires_at, creation_time, "
                   "queue_seq) VALUES ($1, $2, 'queued', 'infinity', now(), "
                   "nextval('pac_queue_seq'))",
                   {repo.Key(), q})
                  .ok());
  // The queuer's own settle: the lease still counts.
  auto early = other->Exec(
      ctx, "SELECT o_kind FROM pac_settle($1, interval '1 hour', NULL)",
      {repo.Key()});
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_EQ(early->rows(), 0);
  ASSERT_TRUE(Exec(*locker, "COMMIT").ok());
  t.join();
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(rel->released);
  ASSERT_EQ(rel->admitted.size(), 1u) << "left queued beside a free slot";
  EXPECT_EQ(rel->admitted[0].pipeline_run_key, q);
  auto running = d->GetRunningPipelineRuns(Context(), repo.Key());
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].pipeline_run_key, q);
  EXPECT_TRUE(d->Close().ok());
}

// A pooler in transaction mode may run the release and its settle on two
// server connections: the settle then finds the repository in the
// release's kept answer, not in its own session. Seen failing without
// that: the settle found no repository and admitted nobody.
TEST(PostgreSQLEdgeTest, ASettleOnAnotherConnectionFindsTheRelease) {
  auto d = NewDriver();
  auto a = Connect();
  auto b = Connect();
  ASSERT_TRUE(d && a && b);
  Repository repo{UniqueNs("pooled"), "repo", 1};
  auto x = d->AcquireSlot(Context(), repo, repo.ns + "/x");
  ASSERT_TRUE(x.ok() && x->acquired) << x.status();
  const std::string request = "pooled-" + repo.ns;
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto released = a->Exec(ctx,
                          "SELECT o_kind FROM pac_release_lease($1, NULL, "
                          "NULL, interval '1 hour', $2)",
                          {x->lease.lease_id, request});
  ASSERT_TRUE(released.ok()) << released.status();
  ASSERT_EQ(released->rows(), 1);
  // A run queued after the release looked (written directly: what an
  // acquire that counted the lease as taken would have queued).
  ASSERT_TRUE(Exec(*a,
                   "INSERT INTO concurrency_slots (repository_key, "
                   "pipeline_run_key, state, expires_at, creation_time, "
                   "queue_seq) VALUES ($1, $2, 'queued', 'infinity', now(), "
                   "nextval('pac_queue_seq'))",
                   {repo.Key(), repo.ns + "/w"})
                  .ok());
  auto settled = b->Exec(ctx,
                         "SELECT o_kind, o_run FROM pac_settle(NULL, "
                         "interval '1 hour', $1)",
                         {request});
  ASSERT_TRUE(settled.ok()) << settled.status();
  ASSERT_GE(settled->rows(), 1);
  EXPECT_EQ(settled->Get(0, 0), "admitted");
  EXPECT_EQ(settled->Get(0, 1), repo.ns + "/w");
  EXPECT_TRUE(d->Close().ok());
}

// Statements with parameters are prepared once per connection; without
// prepared_statements none is. When the server loses them (a pooler's
// DISCARD ALL, or a pooler that hands the next transaction to another
// server connection), the statement did not run: Unavailable (the driver
// retries), and the next attempt prepares it again.
TEST(PostgreSQLEdgeTest, PreparedStatementsAndAServerThatLostThem) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  const std::string kCount =
      "SELECT count(*) FROM pg_prepared_statements WHERE $1::int = 1";
  for (bool prepare : {true, false}) {
    PostgreSQLConfig c = *config;
    c.prepared_statements = prepare;
    auto conn = PgConnection::Open(c, ctx);
    ASSERT_TRUE(conn.ok()) << conn.status();
    // Prepared at its second use: a text used once stays unnamed.
    for (int use = 1; use <= 3; ++use) {
      auto n = (*conn)->Exec(ctx, kCount, {"1"});
      ASSERT_TRUE(n.ok()) << n.status();
      EXPECT_EQ(n->GetInt(0, 0), prepare && use > 1 ? 1 : 0)
          << "prepare " << prepare << ", use " << use;
    }
  }
  auto conn = PgConnection::Open(*config, ctx);
  ASSERT_TRUE(conn.ok()) << conn.status();
  PgConnection& c = **conn;
  const std::string kEcho = "SELECT $1::text";
  for (int use = 0; use < 2; ++use) {
    auto first = c.Exec(ctx, kEcho, {"a"});
    ASSERT_TRUE(first.ok()) << first.status();
  }
  ASSERT_TRUE(Exec(c, "DEALLOCATE ALL").ok());
  auto lost = c.Exec(ctx, kEcho, {"b"});
  ASSERT_FALSE(lost.ok());
  EXPECT_TRUE(absl::IsUnavailable(lost.status())) << lost.status();
  EXPECT_THAT(lost.status().message(),
              HasSubstr("postgresql-prepared-statements"));
  EXPECT_TRUE(c.healthy());
  auto again = c.Exec(ctx, kEcho, {"c"});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Get(0, 0), "c");
  // The same through a pipeline (the text is used twice before).
  const std::vector<internal::PgParam> d = {"d"};
  ASSERT_TRUE(c.ExecPipeline(ctx, {{kEcho, &d}, {kEcho, &d}}).ok());
  ASSERT_TRUE(Exec(c, "DEALLOCATE ALL").ok());
  auto piped = c.ExecPipeline(ctx, {{kEcho, &d}, {kEcho, &d}});
  ASSERT_FALSE(piped.ok());
  EXPECT_TRUE(absl::IsUnavailable(piped.status())) << piped.status();
  piped = c.ExecPipeline(ctx, {{kEcho, &d}, {kEcho, &d}});
  ASSERT_TRUE(piped.ok()) << piped.status();
  EXPECT_EQ((*piped)[1].Get(0, 0), "d");
}

// Rows the original Go code wrote: slots without a pac_repositories row.
// Listings find their repositories from the slots (only for repositories
// without a row, an anti-join): a queued run or an unexpired lease lists
// one, an expired lease alone does not.
TEST(PostgreSQLEdgeTest, RepositoriesWithSlotsButNoRowAreListed) {
  auto d = NewDriver();
  auto c = Connect();
  ASSERT_TRUE(d && c);
  const std::string ns = UniqueNs("legacy");
  ASSERT_TRUE(d->SetRepositoryLimit(Context(), Repository{ns, "b", 2}).ok());
  const char* kSlot =
      "INSERT INTO concurrency_slots (repository_key, pipeline_run_key, "
      "state, expires_at) VALUES ($1, $2, $3, now() + $4::interval)";
  ASSERT_TRUE(Exec(*c, kSlot, {ns + "/a", ns + "/q", "queued", "1 hour"}).ok());
  ASSERT_TRUE(
      Exec(*c, kSlot, {ns + "/c", ns + "/r", "running", "1 hour"}).ok());
  ASSERT_TRUE(
      Exec(*c, kSlot, {ns + "/d", ns + "/x", "running", "-1 hour"}).ok());
  const std::vector<std::string> want = {ns + "/a", ns + "/b", ns + "/c"};
  auto keys = d->ListRepositories(Context(), ns);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(*keys, want);
  for (size_t limit : {0, 1, 2}) {
    std::vector<std::string> listed;
    std::string after;
    for (int page = 0; page < 5; ++page) {
      auto p = d->ListRepositorySnapshots(Context(), ns, after, limit);
      ASSERT_TRUE(p.ok()) << p.status();
      for (const RepositoryListing& r : *p) listed.push_back(r.repository_key);
      if (limit == 0 || p->size() < limit) break;
      after = p->back().repository_key;
    }
    EXPECT_EQ(listed, want) << "pages of " << limit;
  }
  auto page = d->ListRepositorySnapshots(Context(), ns, "", 0);
  ASSERT_TRUE(page.ok() && page->size() == 3u);
  EXPECT_EQ((*page)[0].snapshot.queued.size(), 1u);
  EXPECT_EQ((*page)[2].snapshot.running.size(), 1u);
  EXPECT_TRUE(d->Close().ok());
  // Gone, so that no later test shares a database with them.
  EXPECT_TRUE(Exec(*c,
                   "DELETE FROM concurrency_slots WHERE "
                   "left(repository_key, length($1) + 1) = $1 || '/'",
                   {ns})
                  .ok());
}

// An expired lease of a repository without a pac_repositories row (the
// original Go code wrote none) is reclaimed by the reaper, and told to its
// watchers, like any other. pac_reap skipped such a repository, so its
// expired row stayed, and every driver's reaper, which finds the earliest
// expiry past, called pac_reap again every 5 ms, forever (16 bench clients
// on one database made a sixth of their pairs).
TEST(PostgreSQLEdgeTest, AnExpiredLeaseOfARepositoryWithoutARowIsReclaimed) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  auto d = NewPostgreSQLDriver(*config);  // with its reaper
  ASSERT_TRUE(d.ok()) << d.status();
  auto c = Connect();
  ASSERT_TRUE(c);
  const std::string ns = UniqueNs("rowless");
  std::atomic<bool> expired{false};
  auto watch = (*d)->WatchSlotAvailability(
      Context(), ns + "/a", [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kExpired) expired = true;
      });
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(Exec(*c,
                   "INSERT INTO concurrency_slots (repository_key, "
                   "pipeline_run_key, state, expires_at) VALUES ($1, $2, "
                   "'running', now() - interval '1 hour')",
                   {ns + "/a", ns + "/x"})
                  .ok());
  auto count = [&]() -> int64_t {
    Context ctx = Context::WithTimeout(Context(), absl::Seconds(5));
    auto r = c->Exec(ctx,
                     "SELECT count(*) FROM concurrency_slots WHERE "
                     "repository_key = $1",
                     {ns + "/a"});
    return r.ok() ? r->GetInt(0, 0) : -1;
  };
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (count() != 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(count(), 0) << "the expired row of a row-less repository stayed";
  while (!expired.load() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(expired.load());
  EXPECT_TRUE((*d)->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency
