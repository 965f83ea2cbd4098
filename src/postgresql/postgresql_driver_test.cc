// The PostgreSQL driver against a real PostgreSQL 15 server (started by
// scripts/pg-test-server.sh): the conformance suite, plus what only a shared,
// durable backend promises.
#include <atomic>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "pac/concurrency/driver.h"
#include "tests/conformance/driver_conformance.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/unique_ns.h"

namespace pac::concurrency {
namespace {

using conformance::EnvOr;
using conformance::TestPostgreSQLConfig;
using ::testing::HasSubstr;
using ::testing::Not;

conformance::DriverFactory PostgreSQLFactory() {
  conformance::DriverFactory f;
  f.name = "postgresql";
  f.manual_clock = false;
  f.real_ttl = absl::Seconds(2);
  f.make = [](const conformance::ConformanceEnv& env)
      -> absl::StatusOr<std::unique_ptr<Driver>> {
    auto config = TestPostgreSQLConfig();
    if (!config.ok()) return config.status();
    config->lease_ttl = env.lease_ttl;
    DriverOptions options;
    options.background_cleanup = env.background_cleanup;
    return NewPostgreSQLDriver(*config, options);
  };
  return f;
}

using conformance::DriverConformanceTest;
INSTANTIATE_TEST_SUITE_P(PostgreSQL, DriverConformanceTest,
                         ::testing::Values(PostgreSQLFactory()),
                         [](const auto& info) { return info.param.name; });

TEST(PostgreSQLDriverTest, PasswordWithSpecialCharactersWorks) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  // The test role's password has a space, quotes, a backslash and '='.
  for (char c : std::string(" '\"\\=")) {
    EXPECT_NE(config->password.find(c), std::string::npos) << c;
  }
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_TRUE(driver.ok()) << driver.status();
}

TEST(PostgreSQLDriverTest, WrongPasswordIsUnauthenticatedAndNotEchoed) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  config->password = "wrong 'secret' \\ value=42";
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_FALSE(driver.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(driver.status())) << driver.status();
  EXPECT_THAT(std::string(driver.status().message()), Not(HasSubstr("secret")));
}

TEST(PostgreSQLDriverTest, VerifyFullWithTheRightCa) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  config->ssl_mode = "verify-full";
  config->ssl_root_cert = EnvOr("PAC_TEST_PG_CA");
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_TRUE(driver.ok()) << driver.status();
  Context ctx;
  auto r = (*driver)->AcquireSlot(ctx, Repository{UniqueNs("pgt"), "tls", 1},
                                  absl::StrCat(UniqueNs("pgt"), "/run"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->acquired);
}

TEST(PostgreSQLDriverTest, VerifyFullWithAWrongCaFails) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  config->ssl_mode = "verify-full";
  config->ssl_root_cert = EnvOr("PAC_TEST_PG_OTHER_CA");
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_FALSE(driver.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(driver.status())) << driver.status();
  EXPECT_THAT(std::string(driver.status().message()), HasSubstr("TLS"));
}

TEST(PostgreSQLDriverTest, UnreachableServerIsUnavailableWithinTimeout) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  config->port = 1;  // nothing listens there
  config->connection_timeout = absl::Seconds(2);
  absl::Time start = absl::Now();
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_FALSE(driver.ok());
  EXPECT_TRUE(absl::IsUnavailable(driver.status())) << driver.status();
  EXPECT_TRUE(IsRetryable(driver.status()));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(PostgreSQLDriverTest, StateSurvivesADriverRestart) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  Context ctx;
  Repository repo{UniqueNs("pgt"), "durable", 1};
  std::string lease_id;
  {
    auto d = NewPostgreSQLDriver(*config);
    ASSERT_TRUE(d.ok()) << d.status();
    auto a = (*d)->AcquireSlot(ctx, repo, repo.ns + "/a");
    ASSERT_TRUE(a->acquired);
    lease_id = a->lease.lease_id;
    ASSERT_EQ((*d)->AcquireSlot(ctx, repo, repo.ns + "/b")->position, 1);
  }
  auto d = NewPostgreSQLDriver(*config);
  ASSERT_TRUE(d.ok());
  auto running = (*d)->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].lease_id, lease_id);
  EXPECT_EQ((*d)->GetQueuedPipelineRuns(ctx, repo.Key())->size(), 1u);
}

// PostgreSQL is restarted while threads acquire and release. Calls in flight
// fail with a retryable error or succeed after the driver reconnects; no
// acknowledged grant is lost and the limit holds throughout.
TEST(PostgreSQLDriverTest, ServerRestartDuringOperations) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  std::string restart = EnvOr("PAC_TEST_PG_CTL");
  ASSERT_FALSE(restart.empty()) << "PAC_TEST_PG_CTL is not set";
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_TRUE(driver.ok()) << driver.status();
  Context bg;
  Repository held{UniqueNs("pgt"), "held", 5};
  auto before = (*driver)->AcquireSlot(bg, held, held.ns + "/kept");
  ASSERT_TRUE(before.ok() && before->acquired);

  Repository repo{UniqueNs("pgt"), "restart", 2};
  // A watcher learns that it must re-read state once LISTEN is back.
  std::atomic<int> resyncs{0};
  auto watch = (*driver)->WatchSlotAvailability(
      bg, repo.Key(), [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kResync) ++resyncs;
      });
  ASSERT_TRUE(watch.ok()) << watch.status();
  std::atomic<bool> stop{false};
  std::atomic<int> ok_ops{0}, retryable{0}, other{0};
  std::atomic<int> inflight{0}, max_inflight{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        Context ctx = Context::WithTimeout(bg, absl::Seconds(3));
        std::string run = absl::StrCat(repo.ns, "/t", t, "-", i);
        auto a = (*driver)->AcquireSlot(ctx, repo, run, {.enqueue = false});
        if (!a.ok()) {
          (IsRetryable(a.status()) || absl::IsDeadlineExceeded(a.status())
               ? retryable
               : other)++;
          continue;
        }
        if (!a->acquired) continue;
        int now = ++inflight;
        int prev = max_inflight.load();
        while (now > prev && !max_inflight.compare_exchange_weak(prev, now)) {
        }
        // Held for a while: an over-admission would overlap here.
        absl::SleepFor(absl::Milliseconds(5));
        --inflight;
        // Release until it sticks: a grant must not leak.
        for (int attempt = 0; attempt < 20; ++attempt) {
          Context rctx = Context::WithTimeout(bg, absl::Seconds(3));
          auto r = (*driver)->ReleaseSlot(rctx, a->lease.lease_id, "", "");
          if (r.ok()) break;
          absl::SleepFor(absl::Milliseconds(200));
        }
        ++ok_ops;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  int before_restart = ok_ops.load();
  ASSERT_EQ(std::system(restart.c_str()), 0) << restart;
  absl::SleepFor(absl::Seconds(2));
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_GT(before_restart, 0);
  EXPECT_GT(ok_ops.load(), before_restart) << "no progress after the restart";
  EXPECT_EQ(other.load(), 0) << "errors other than retryable ones";
  EXPECT_LE(max_inflight.load(), 2);
  EXPECT_EQ(*(*driver)->GetCurrentSlots(bg, repo.Key()), 0);
  // The grant acknowledged before the restart survived it.
  auto running = (*driver)->GetRunningPipelineRuns(bg, held.Key());
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].lease_id, before->lease.lease_id);
  EXPECT_TRUE((*driver)->RenewLease(bg, before->lease.lease_id).ok());
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (resyncs.load() == 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GE(resyncs.load(), 1)
      << "no kResync after the LISTEN connection came back";
}

TEST(PostgreSQLDriverTest, PollingFallbackSendsResync) {
  auto config = TestPostgreSQLConfig();
  ASSERT_TRUE(config.ok()) << config.status();
  config->poll_interval = absl::Milliseconds(100);
  auto driver = NewPostgreSQLDriver(*config);
  ASSERT_TRUE(driver.ok()) << driver.status();
  std::atomic<int> resyncs{0};
  Context ctx;
  auto watch = (*driver)->WatchSlotAvailability(
      ctx, UniqueNs("pgt") + "/polled", [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kResync) ++resyncs;
      });
  ASSERT_TRUE(watch.ok()) << watch.status();
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (resyncs.load() < 3 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_GE(resyncs.load(), 3);
  // Without the fallback nothing is sent when nothing happens.
  config->poll_interval = absl::ZeroDuration();
  auto quiet = NewPostgreSQLDriver(*config);
  ASSERT_TRUE(quiet.ok());
  std::atomic<int> quiet_events{0};
  auto w2 = (*quiet)->WatchSlotAvailability(
      ctx, UniqueNs("pgt") + "/quiet",
      [&](const WatchEvent&) { ++quiet_events; });
  ASSERT_TRUE(w2.ok());
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(quiet_events.load(), 0);
}

}  // namespace
}  // namespace pac::concurrency
