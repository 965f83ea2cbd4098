// The conformance suite, queue time limits (docs/policies.md, "Queue time
// limit"): a run queued longer than its own limit or its repository's
// leaves the queue with reason "timed-out" without any client call, and is
// never admitted afterwards, in any process, until its record is
// forgotten; a repository's limit is live.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

AcquireOptions Within(absl::Duration d) {
  AcquireOptions o;
  o.max_queue_time = d;
  return o;
}

TEST_P(DriverConformanceTest,
       QueueTime_ARunPastItsLimitLeavesTheQueueWithoutACall) {
  Repository repo = Repo("timeout", 1);
  RemovedLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  auto b = driver_->AcquireSlot(ctx_, repo, Run("b"), Within(QueueLimit()));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->position, 1);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("c"))->position, 2);
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAre(Run("b"), Run("c")));

  PassQueueLimit();
  ASSERT_TRUE(driver_->RenewLease(ctx_, a->lease.lease_id).ok());
  // Nobody calls: the driver's background work removes it, with an event.
  EXPECT_TRUE(Eventually([&] { return log.runs().size() == 1; }));
  EXPECT_THAT(log.runs(), ElementsAre(Run("b") + " timed-out"));
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAre(Run("c")));
  // Its holder's re-submits are refused with the reason, in any process.
  auto other = MakeDriver();
  for (Driver* d : {driver_.get(), other.get()}) {
    auto again = d->AcquireSlot(ctx_, repo, Run("b"), Within(QueueLimit()));
    EXPECT_TRUE(IsRunRemoved(again.status())) << again.status();
    EXPECT_EQ(RunRemovedReason(again.status()), "timed-out");
  }
  // The slot goes to the next run, and c, which has no limit, stays.
  ASSERT_TRUE(driver_->RenewLease(ctx_, a->lease.lease_id).ok());
  PassQueueLimit();
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAre(Run("c")));
  auto rel = driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("c")));
  // A release by key ends the record, as for a cleared run.
  auto forget = driver_->ReleaseSlot(ctx_, "", Run("b"), repo.Key());
  ASSERT_TRUE(forget.ok()) << forget.status();
  EXPECT_TRUE(forget->dequeued);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"))->position, 1);
  ASSERT_TRUE(other->Close().ok());
}

// Past the deadline, before any background pass: a release admits the next
// run, not the timed-out one, and the timed-out run is refused.
TEST_P(DriverConformanceTest, QueueTime_ATimedOutRunIsNeverAdmittedAfterwards) {
  Repository repo = Repo("never", 1);
  auto quiet = MakeDriver(/*background_cleanup=*/false);
  auto a = quiet->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  ASSERT_EQ(
      quiet->AcquireSlot(ctx_, repo, Run("b"), Within(QueueLimit()))->position,
      1);
  AcquireOptions later;
  later.creation_time = absl::Now() + absl::Hours(1);  // after b
  ASSERT_EQ(quiet->AcquireSlot(ctx_, repo, Run("c"), later)->position, 2);
  PassQueueLimit();
  auto rel = quiet->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("c")));
  auto b = quiet->AcquireSlot(ctx_, repo, Run("b"));
  EXPECT_TRUE(IsRunRemoved(b.status())) << b.status();
  EXPECT_EQ(RunRemovedReason(b.status()), "timed-out");
  auto snap = quiet->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_THAT(RunKeys(snap->running), ElementsAre(Run("c")));
  EXPECT_THAT(snap->queued, IsEmpty());
  ASSERT_TRUE(quiet->Close().ok());
}

// The repository's limit applies to runs without their own, from when they
// were queued, and a change applies to the runs queued already.
TEST_P(DriverConformanceTest, QueueTime_TheRepositoryLimitIsLive) {
  Repository repo = Repo("policy", 1);
  auto none = driver_->GetRepositoryPolicy(ctx_, repo.Key());
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, RepositoryPolicy{});
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  // Each wait below is shorter than the lease TTL: a keeps its slot.
  auto renew = [&] {
    ASSERT_TRUE(driver_->RenewLease(ctx_, a->lease.lease_id).ok());
  };
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"))->position, 1);
  ASSERT_EQ(
      driver_->AcquireSlot(ctx_, repo, Run("c"), Within(20 * QueueLimit()))
          ->position,
      2);
  PassQueueLimit(2);  // no limit yet: both stay
  renew();
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAre(Run("b"), Run("c")));

  // b has waited twice the new limit: it leaves now. c keeps its own.
  RepositoryPolicy policy;
  policy.max_queue_time = QueueLimit();
  ASSERT_TRUE(driver_->SetRepositoryPolicy(ctx_, repo.Key(), policy).ok());
  EXPECT_TRUE(Eventually([&] {
    return QueuedRuns(driver_.get(), repo) == std::vector{Run("c")};
  }));
  auto other = MakeDriver();
  EXPECT_EQ(*other->GetRepositoryPolicy(ctx_, repo.Key()), policy);
  auto b = other->AcquireSlot(ctx_, repo, Run("b"));
  EXPECT_EQ(RunRemovedReason(b.status()), "timed-out") << b.status();

  // A run queued now has the repository's limit.
  ASSERT_EQ(other->AcquireSlot(ctx_, repo, Run("d"))->position, 2);
  PassQueueLimit();
  renew();
  EXPECT_TRUE(Eventually(
      [&] { return QueuedRuns(other.get(), repo) == std::vector{Run("c")}; }));

  // The default policy forgets it: e stays however long it waits.
  ASSERT_TRUE(
      other->SetRepositoryPolicy(ctx_, repo.Key(), RepositoryPolicy{}).ok());
  EXPECT_EQ(*driver_->GetRepositoryPolicy(ctx_, repo.Key()),
            RepositoryPolicy{});
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("e"))->position, 2);
  PassQueueLimit(2);
  renew();
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAre(Run("c"), Run("e")));

  // A policy alone lists no repository; a cleanup forgets it.
  Repository bare = Repo("bare", 1);
  ASSERT_TRUE(driver_->SetRepositoryPolicy(ctx_, bare.Key(), policy).ok());
  auto listed = driver_->ListRepositories(ctx_, ns_);
  ASSERT_TRUE(listed.ok());
  EXPECT_THAT(*listed, ElementsAre(repo.Key()));
  ASSERT_TRUE(driver_->CleanupRepository(ctx_, bare.Key()).ok());
  EXPECT_EQ(*driver_->GetRepositoryPolicy(ctx_, bare.Key()),
            RepositoryPolicy{});
  ASSERT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, QueueTime_BadLimitsAreRefusedAndWriteNothing) {
  Repository repo = Repo("bad", 1);
  for (absl::Duration d :
       {absl::ZeroDuration(), absl::Seconds(-1), absl::Microseconds(999),
        kMaxQueueTimeLimit + absl::Seconds(1),
        absl::Milliseconds(5) + absl::Nanoseconds(1)}) {
    auto r = driver_->AcquireSlot(ctx_, repo, Run("a"), Within(d));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << d;
    EXPECT_THAT(r.status().message(), HasSubstr("max_queue_time"));
    RepositoryPolicy p;
    p.max_queue_time = d;
    absl::Status s = driver_->SetRepositoryPolicy(ctx_, repo.Key(), p);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << d;
    EXPECT_THAT(s.message(), HasSubstr("max_queue_time"));
  }
  EXPECT_EQ(driver_->SetRepositoryPolicy(ctx_, "Bad Key", {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(driver_->GetRepositoryPolicy(ctx_, "Bad Key").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(driver_->GetRepositoryLimit(ctx_, repo.Key())->has_value());
  EXPECT_EQ(*driver_->GetRepositoryPolicy(ctx_, repo.Key()),
            RepositoryPolicy{});
  // The bounds themselves are accepted.
  EXPECT_TRUE(
      driver_->AcquireSlot(ctx_, repo, Run("a"), Within(absl::Milliseconds(1)))
          .ok());
  RepositoryPolicy longest;
  longest.max_queue_time = kMaxQueueTimeLimit;
  EXPECT_TRUE(driver_->SetRepositoryPolicy(ctx_, repo.Key(), longest).ok());
  EXPECT_EQ(*driver_->GetRepositoryPolicy(ctx_, repo.Key()), longest);
}

// Submits with a short limit race with releases and with the drivers'
// background removals, while time moves: every run ends admitted or timed
// out, never both, and the limit holds throughout.
TEST_P(DriverConformanceTest, QueueTime_RacesNeverAdmitATimedOutRun) {
  Repository repo = Repo("race", 2);
  auto other = MakeDriver();
  const bool manual = manual_clock_ != nullptr;
  // On a manual clock a ticker moves time ten times as fast as real time.
  const absl::Duration limit = absl::Milliseconds(manual ? 100 : 150);
  // A holder holds longer than the limit: a run queued behind two of
  // them often times out.
  const auto hold = std::chrono::milliseconds(manual ? 15 : 250);
  constexpr int kWorkers = 4;
  constexpr int kRuns = 8;
  std::mutex mu;
  std::set<std::string> admitted, timed_out;  // guarded by mu
  RaceCounters c;
  std::atomic<bool> done{false};
  std::thread ticker([&] {
    while (manual && !done.load()) {
      manual_clock_->Advance(absl::Milliseconds(20));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      Driver* d = w % 2 == 0 ? driver_.get() : other.get();
      for (int i = 0; i < kRuns; ++i) {
        const std::string run = Run(absl::StrCat("w", w, "-", i));
        const RaceOutcome got =
            AdmitHoldRelease(d, ctx_, repo, run, Within(limit), hold, &c);
        std::lock_guard<std::mutex> lock(mu);
        if (got == RaceOutcome::kAdmitted) admitted.insert(run);
        if (got == RaceOutcome::kRemoved) timed_out.insert(run);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  done = true;
  ticker.join();
  EXPECT_EQ(c.errors.load(), 0);
  EXPECT_LE(c.most.load(), 2);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(admitted.size() + timed_out.size(),
            static_cast<size_t>(kWorkers * kRuns));
  for (const std::string& run : timed_out) {
    EXPECT_EQ(admitted.count(run), 0u) << run << " timed out and was admitted";
  }
  EXPECT_FALSE(timed_out.empty());
  EXPECT_FALSE(admitted.empty());
  ASSERT_TRUE(other->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency::conformance
