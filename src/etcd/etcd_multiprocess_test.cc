// Several processes share one etcd: the hammer with an independent
// limit/FIFO checker, and a holder killed with SIGKILL. A binary of its own,
// and the hammer first: gRPC must not be initialised in a process before it
// forks.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "tests/conformance/etcd_test_env.h"
#include "tests/conformance/multiprocess.h"
#include "tests/conformance/unique_ns.h"

namespace pac::concurrency {
namespace {

using conformance::TestEtcdConfig;

absl::StatusOr<std::unique_ptr<Driver>> MakeDriver() {
  auto c = TestEtcdConfig();
  if (!c.ok()) return c.status();
  c->lease_ttl = absl::Seconds(30);
  return NewEtcdDriver(*c);
}

TEST(EtcdMultiProcessTest, FourProcessesNeverOverAdmitAndKeepFifo) {
  ASSERT_TRUE(TestEtcdConfig().ok());
  auto report =
      conformance::RunMultiProcessHammer(MakeDriver, UniqueNs("mp"), 4, 100, 2);
  EXPECT_EQ(conformance::OrderProblem(report, 4, 400, 2, 50), "");
  conformance::PrintHammerReport(report);
}

// A fifth process clears the queue every 15 ms while four submit, wait and
// release: no cleared run is ever granted, every run ends granted or
// removed, and the limit and FIFO (among the others) hold.
TEST(EtcdMultiProcessTest, AClearerInAnotherProcessNeverLetsAClearedRunIn) {
  ASSERT_TRUE(TestEtcdConfig().ok());
  auto report = conformance::RunMultiProcessHammer(
      MakeDriver, UniqueNs("mpc"), 4, 100, 2,
      {.clear_every = absl::Milliseconds(15)});
  EXPECT_EQ(conformance::RemovalProblem(report, 4, 400, 2, 3, true), "");
  EXPECT_GT(report.grants, 20);
  conformance::PrintHammerReport(report);
}

// Run j of each of four processes is of supersede group "g<j % 4>": they
// supersede each other across processes. No superseded run is granted or
// admitted, every run ends granted or removed, and the limit and FIFO
// (among the others) hold.
TEST(EtcdMultiProcessTest, GroupsAcrossProcessesNeverLetASupersededRunIn) {
  ASSERT_TRUE(TestEtcdConfig().ok());
  auto report = conformance::RunMultiProcessHammer(MakeDriver, UniqueNs("mpg"),
                                                   4, 100, 2, {.groups = true});
  EXPECT_EQ(conformance::RemovalProblem(report, 4, 400, 2, 3, false), "");
  conformance::PrintHammerReport(report);
}

// Every run may wait 3 ms: runs of four processes time out while others
// are admitted; a timed-out run is never granted or admitted by a release.
TEST(EtcdMultiProcessTest, TimeLimitsAcrossProcessesNeverLetATimedOutRunIn) {
  ASSERT_TRUE(TestEtcdConfig().ok());
  auto report =
      conformance::RunMultiProcessHammer(MakeDriver, UniqueNs("mpt"), 4, 100, 2,
                                         {.max_queue = absl::Milliseconds(3)});
  EXPECT_EQ(conformance::RemovalProblem(report, 4, 400, 2, 3, false), "");
  conformance::PrintHammerReport(report);
}

// Under the priority mode, runs of priorities 0-2 from four processes:
// each admission takes the highest priority queued, then the oldest (no
// join at the end of the queue, and admissions check that nobody joined
// unseen).
TEST(EtcdMultiProcessTest, PriorityOrderHoldsAcrossProcesses) {
  ASSERT_TRUE(TestEtcdConfig().ok());
  auto report = conformance::RunMultiProcessHammer(
      MakeDriver, UniqueNs("mpp"), 4, 100, 2, {.priorities = true});
  EXPECT_EQ(conformance::OrderProblem(report, 4, 400, 2, 50), "");
  conformance::PrintHammerReport(report);
}

// A holder process dies (SIGKILL); its slot is freed when its etcd lease's
// TTL runs out, and the head of the queue is admitted.
TEST(EtcdDriverTest, HolderKilledFreesSlotAfterTtl) {
  auto c = TestEtcdConfig();
  ASSERT_TRUE(c.ok()) << c.status();
  Repository repo{UniqueNs("sigkill"), "repo", 1};
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    auto d = NewEtcdDriver(*c);
    if (!d.ok()) _exit(2);
    ManagerOptions mo;
    auto m = Manager::FromDriver(std::move(*d), nullptr, mo);
    auto r = m->AcquireSlot(Context(), repo, repo.ns + "/holder");
    char ok = r.ok() && r->acquired ? 1 : 0;
    (void)!write(fds[1], &ok, 1);
    pause();  // keep renewing until killed
    _exit(0);
  }
  close(fds[1]);
  char ok = 0;
  ASSERT_EQ(read(fds[0], &ok, 1), 1);
  ASSERT_EQ(ok, 1);
  auto d = NewEtcdDriver(*c);
  ASSERT_TRUE(d.ok());
  Context ctx;
  auto waiter = (*d)->AcquireSlot(ctx, repo, repo.ns + "/next");
  ASSERT_TRUE(waiter.ok());
  ASSERT_FALSE(waiter->acquired);
  // Alive and renewing: still held after more than a TTL.
  absl::SleepFor(c->lease_ttl + absl::Seconds(1));
  EXPECT_EQ(*(*d)->GetCurrentSlots(ctx, repo.Key()), 1);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  waitpid(pid, nullptr, 0);
  absl::Time give_up = absl::Now() + c->lease_ttl + absl::Seconds(10);
  bool admitted = false;
  while (absl::Now() < give_up && !admitted) {
    auto running = (*d)->GetRunningPipelineRuns(ctx, repo.Key());
    admitted = running.ok() && running->size() == 1 &&
               (*running)[0].pipeline_run_key == repo.ns + "/next";
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(admitted);
}

}  // namespace
}  // namespace pac::concurrency
