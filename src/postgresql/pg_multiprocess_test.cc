// Several processes (not threads) share one PostgreSQL database and hammer
// one repository with limit 2; an independent checker reads what they
// observed (tests/conformance/multiprocess.h). Also: a watcher in one
// process is woken by a release in another.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "tests/conformance/multiprocess.h"
#include "tests/conformance/pg_test_env.h"

namespace pac::concurrency {
namespace {

using conformance::TestPostgreSQLConfig;

absl::StatusOr<std::unique_ptr<Driver>> MakeDriver() {
  auto config = TestPostgreSQLConfig();
  if (!config.ok()) return config.status();
  config->max_connections = 2;
  return NewPostgreSQLDriver(*config);
}

TEST(PostgreSQLMultiProcessTest, FourProcessesNeverOverAdmitAndKeepFifo) {
  ASSERT_TRUE(TestPostgreSQLConfig().ok()) << TestPostgreSQLConfig().status();
  std::string ns = absl::StrCat("mp-", getpid());
  auto report = conformance::RunMultiProcessHammer(MakeDriver, ns,
                                                   /*processes=*/4,
                                                   /*runs_per_process=*/250,
                                                   /*limit=*/2);
  EXPECT_EQ(conformance::OrderProblem(report, 4, 1000, 2, 100), "");
  EXPECT_GT(report.max_overlap, 0);
  conformance::PrintHammerReport(report);
}

// A fifth process clears the queue every 15 ms while four submit, wait and
// release: no cleared run is ever granted, every run ends granted or
// removed, and the limit and FIFO (among the others) hold.
TEST(PostgreSQLMultiProcessTest,
     AClearerInAnotherProcessNeverLetsAClearedRunIn) {
  ASSERT_TRUE(TestPostgreSQLConfig().ok()) << TestPostgreSQLConfig().status();
  std::string ns = absl::StrCat("mpc-", getpid());
  auto report = conformance::RunMultiProcessHammer(
      MakeDriver, ns, /*processes=*/4, /*runs_per_process=*/150, /*limit=*/2,
      {.clear_every = absl::Milliseconds(15)});
  EXPECT_EQ(conformance::RemovalProblem(report, 4, 600, 2, 3, true), "");
  EXPECT_GT(report.grants, 20);
  conformance::PrintHammerReport(report);
}

// Run j of each of four processes is of supersede group "g<j % 4>": they
// supersede each other across processes. No superseded run is granted or
// admitted, every run ends granted or removed, and the limit and FIFO
// (among the others) hold.
TEST(PostgreSQLMultiProcessTest,
     GroupsAcrossProcessesNeverLetASupersededRunIn) {
  ASSERT_TRUE(TestPostgreSQLConfig().ok()) << TestPostgreSQLConfig().status();
  std::string ns = absl::StrCat("mpg-", getpid());
  auto report = conformance::RunMultiProcessHammer(
      MakeDriver, ns, /*processes=*/4, /*runs_per_process=*/150, /*limit=*/2,
      {.groups = true});
  EXPECT_EQ(conformance::RemovalProblem(report, 4, 600, 2, 3, false), "");
  conformance::PrintHammerReport(report);
}

// Every run may wait 3 ms: runs of four processes time out while others
// are admitted; a timed-out run is never granted or admitted by a release.
TEST(PostgreSQLMultiProcessTest,
     TimeLimitsAcrossProcessesNeverLetATimedOutRunIn) {
  ASSERT_TRUE(TestPostgreSQLConfig().ok()) << TestPostgreSQLConfig().status();
  std::string ns = absl::StrCat("mpt-", getpid());
  auto report = conformance::RunMultiProcessHammer(
      MakeDriver, ns, /*processes=*/4, /*runs_per_process=*/150, /*limit=*/2,
      {.max_queue = absl::Milliseconds(3)});
  EXPECT_EQ(conformance::RemovalProblem(report, 4, 600, 2, 3, false), "");
  conformance::PrintHammerReport(report);
}

// Under the priority mode, runs of priorities 0-2 from four processes:
// each admission takes the highest priority queued, then the oldest.
TEST(PostgreSQLMultiProcessTest, PriorityOrderHoldsAcrossProcesses) {
  ASSERT_TRUE(TestPostgreSQLConfig().ok()) << TestPostgreSQLConfig().status();
  std::string ns = absl::StrCat("mpp-", getpid());
  auto report = conformance::RunMultiProcessHammer(
      MakeDriver, ns, /*processes=*/4, /*runs_per_process=*/150, /*limit=*/2,
      {.priorities = true});
  EXPECT_EQ(conformance::OrderProblem(report, 4, 600, 2, 50), "");
  conformance::PrintHammerReport(report);
}

TEST(PostgreSQLMultiProcessTest, WatcherWokenByAReleaseInAnotherProcess) {
  auto driver = MakeDriver();
  ASSERT_TRUE(driver.ok()) << driver.status();
  Context ctx;
  Repository repo{absl::StrCat("mpw-", getpid()), "watched", 1};
  auto held = (*driver)->AcquireSlot(ctx, repo, repo.ns + "/holder");
  ASSERT_TRUE(held.ok() && held->acquired);
  std::atomic<bool> released{false};
  auto watch = (*driver)->WatchSlotAvailability(
      ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type == WatchEventType::kReleased &&
            e.pipeline_run_key == repo.ns + "/holder") {
          released = true;
        }
      });
  ASSERT_TRUE(watch.ok());
  std::string lease_id = held->lease.lease_id;
  pid_t pid = fork();
  if (pid == 0) {
    // Another process, with its own connections, releases the slot.
    auto other = MakeDriver();
    if (!other.ok()) _exit(2);
    auto r = (*other)->ReleaseSlot(Context(), lease_id, "", "");
    _exit(r.ok() && r->released ? 0 : 3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!released.load() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE(released.load());
}

}  // namespace
}  // namespace pac::concurrency
