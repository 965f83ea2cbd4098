// The PostgreSQL driver through outages of a real server (issue 21, point
// 7): the shared test server killed with SIGKILL (every process, as on a
// machine crash) and started again on its data directory under load, and a
// path that goes dead without either end being told (a TCP forwarder that
// drops every byte). Holders whose TTL outlasts the outage keep their
// slots, the first grant comes within 2 s of the server being back, and
// no call waits past its deadline on a dead path.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/tcp_forwarder.h"
#include "tests/conformance/unique_ns.h"

namespace pac::concurrency {
namespace {

using conformance::EnvOr;
using conformance::TestPostgreSQLConfig;

// Keeps leases alive as a holder does (`run` renews at a third of the
// TTL; here every 500 ms, each renewal with a 1 s deadline) and counts the
// renewals that found the lease gone.
class Renewer {
 public:
  Renewer(Driver& d, std::vector<std::string> leases)
      : thread_([this, &d, leases] {
          while (!stop_.load()) {
            for (const std::string& id : leases) {
              Context ctx = Context::WithTimeout(Context(), absl::Seconds(1));
              auto r = d.RenewLease(ctx, id);
              if (!r.ok() && IsLeaseLost(r.status())) ++lost_;
            }
            absl::SleepFor(absl::Milliseconds(500));
          }
        }) {}
  ~Renewer() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int lost() const { return lost_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> lost_{0};
  std::thread thread_;
};

// The server is killed for 4 s while two holders (TTL 10 s) renew and two
// threads acquire and release with 1 s deadlines, then started again. The
// first grant to that load, and an acquire sent the moment the server
// accepts connections again, come within 2 s; both holders keep their
// leases and the queued run stays queued.
TEST(PostgreSQLOutageTest, KilledAndRestartedUnderLoadKeepsHoldersAndGrants) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string kill_cmd = EnvOr("PAC_TEST_PG_KILL");
  const std::string start_cmd = EnvOr("PAC_TEST_PG_START");
  ASSERT_FALSE(kill_cmd.empty() || start_cmd.empty())
      << "PAC_TEST_PG_KILL / PAC_TEST_PG_START are not set: run through "
         "`make test`";
  PostgreSQLConfig c = *config;
  c.lease_ttl = absl::Seconds(10);
  c.connection_timeout = absl::Seconds(3);
  auto d = NewPostgreSQLDriver(c);
  ASSERT_TRUE(d.ok()) << d.status();
  Driver& driver = **d;

  Repository held{UniqueNs("outage"), "held", 2};
  auto a = driver.AcquireSlot(Context(), held, held.ns + "/a");
  auto b = driver.AcquireSlot(Context(), held, held.ns + "/b");
  auto w = driver.AcquireSlot(Context(), held, held.ns + "/w");
  ASSERT_TRUE(a.ok() && a->acquired && b.ok() && b->acquired);
  ASSERT_TRUE(w.ok() && !w->acquired);
  ASSERT_EQ(w->position, 1);
  Renewer renewer(driver, {a->lease.lease_id, b->lease.lease_id});

  Repository load{UniqueNs("outage"), "load", 1};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<absl::Time> grants;  // guarded by mu
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        Context ctx = Context::WithTimeout(Context(), absl::Seconds(1));
        auto r = driver.AcquireSlot(ctx, load, absl::StrCat(load.ns, "/t", t),
                                    {.enqueue = false});
        if (!r.ok() || !r->acquired) {
          absl::SleepFor(absl::Milliseconds(10));
          continue;
        }
        {
          std::lock_guard<std::mutex> lock(mu);
          grants.push_back(absl::Now());
        }
        while (!stop.load()) {
          Context rctx = Context::WithTimeout(Context(), absl::Seconds(1));
          if (driver.ReleaseSlot(rctx, r->lease.lease_id, "", "").ok()) break;
        }
      }
    });
  }
  absl::SleepFor(absl::Seconds(1));
  ASSERT_EQ(std::system(kill_cmd.c_str()), 0) << kill_cmd;
  const absl::Time killed = absl::Now();
  absl::SleepFor(absl::Seconds(4));
  ASSERT_EQ(std::system(start_cmd.c_str()), 0) << start_cmd;
  const absl::Time back = absl::Now();  // accepting connections again
  std::printf("[ timing ] PostgreSQL down for %s\n",
              absl::FormatDuration(back - killed).c_str());

  Repository fresh{UniqueNs("outage"), "fresh", 1};
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(20));
  auto f = driver.AcquireSlot(ctx, fresh, fresh.ns + "/f");
  const absl::Duration fresh_took = absl::Now() - back;
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->acquired);
  std::printf("[ timing ] an acquire sent when PostgreSQL was back: %s\n",
              absl::FormatDuration(fresh_took).c_str());
  EXPECT_LT(fresh_took, absl::Seconds(2));

  absl::SleepFor(absl::Seconds(3));  // renewals and load after the restart
  stop = true;
  for (auto& th : threads) th.join();
  renewer.Stop();
  absl::Time first_grant = absl::InfiniteFuture();
  {
    std::lock_guard<std::mutex> lock(mu);
    for (absl::Time g : grants) {
      if (g > back) first_grant = std::min(first_grant, g);
    }
  }
  ASSERT_NE(first_grant, absl::InfiniteFuture()) << "no grant after restart";
  std::printf(
      "[ timing ] first grant to the load %s after PostgreSQL was "
      "back\n",
      absl::FormatDuration(first_grant - back).c_str());
  EXPECT_LT(first_grant - back, absl::Seconds(2));

  EXPECT_EQ(renewer.lost(), 0) << "a holder lost its slot in the outage";
  Context check = Context::WithTimeout(Context(), absl::Seconds(10));
  auto running = driver.GetRunningPipelineRuns(check, held.Key());
  ASSERT_TRUE(running.ok()) << running.status();
  std::vector<std::string> ids;
  for (const Lease& l : *running) ids.push_back(l.lease_id);
  std::sort(ids.begin(), ids.end());
  std::vector<std::string> want = {a->lease.lease_id, b->lease.lease_id};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(ids, want);
  auto queued = driver.GetQueuedPipelineRuns(check, held.Key());
  ASSERT_TRUE(queued.ok()) << queued.status();
  ASSERT_EQ(queued->size(), 1u);
  EXPECT_EQ((*queued)[0].pipeline_run_key, held.ns + "/w");
  EXPECT_TRUE(driver.Close().ok());
}

// Every byte between the driver and the server is dropped for 4 s, with
// no connection cut (a half-open path). Calls end by their deadline
// instead of waiting for TCP to give up; once the path works again the
// holder renews the same lease within 2 s, and a watcher hears the next
// release.
TEST(PostgreSQLOutageTest, AHalfOpenPathEndsCallsByTheirDeadlineAndRecovers) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  auto fwd = conformance::TcpForwarder::Start(
      absl::StrCat(config->host, ":", config->port));
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  PostgreSQLConfig c = *config;
  c.port = std::stoi((*fwd)->endpoint().substr(10));
  c.ssl_mode = "disable";
  c.lease_ttl = absl::Seconds(30);
  c.connection_timeout = absl::Seconds(2);
  auto d = NewPostgreSQLDriver(c);
  ASSERT_TRUE(d.ok()) << d.status();
  Driver& driver = **d;
  Repository repo{UniqueNs("halfopen"), "repo", 1};
  auto a = driver.AcquireSlot(Context(), repo, repo.ns + "/a");
  ASSERT_TRUE(a.ok() && a->acquired) << a.status();
  std::atomic<int> releases{0}, resyncs{0};
  auto watch = driver.WatchSlotAvailability(
      Context(), repo.Key(), [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kReleased) ++releases;
        if (e.type == WatchEventType::kResync) ++resyncs;
      });
  ASSERT_TRUE(watch.ok()) << watch.status();

  (*fwd)->BlackHole(true);
  for (int i = 0; i < 3; ++i) {
    const absl::Time sent = absl::Now();
    Context ctx = Context::WithTimeout(Context(), absl::Seconds(1));
    auto r = driver.RenewLease(ctx, a->lease.lease_id);
    const absl::Duration took = absl::Now() - sent;
    EXPECT_FALSE(r.ok());
    EXPECT_FALSE(IsLeaseLost(r.status())) << r.status();
    EXPECT_LT(took, absl::Milliseconds(1500)) << r.status();
  }
  absl::SleepFor(absl::Seconds(1));
  (*fwd)->BlackHole(false);
  const absl::Time restored = absl::Now();
  absl::StatusOr<Lease> renewed = absl::UnavailableError("not yet");
  while (!renewed.ok() && absl::Now() - restored < absl::Seconds(10)) {
    Context ctx = Context::WithTimeout(Context(), absl::Seconds(1));
    renewed = driver.RenewLease(ctx, a->lease.lease_id);
  }
  const absl::Duration took = absl::Now() - restored;
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_EQ(renewed->lease_id, a->lease.lease_id);
  std::printf("[ timing ] renewed %s after the path worked again\n",
              absl::FormatDuration(took).c_str());
  EXPECT_LT(took, absl::Seconds(2));

  // The watcher's LISTEN connection was on the dead path too: once it has
  // been replaced (a resync), it hears a release again.
  const absl::Time until = absl::Now() + absl::Seconds(15);
  while (resyncs.load() == 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GT(resyncs.load(), 0);
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto rel = driver.ReleaseSlot(ctx, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok() && rel->released) << rel.status();
  const absl::Time heard_by = absl::Now() + absl::Seconds(5);
  while (releases.load() == 0 && absl::Now() < heard_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(releases.load(), 1);
  (*watch)->Stop();
  EXPECT_TRUE(driver.Close().ok());
}

}  // namespace
}  // namespace pac::concurrency
