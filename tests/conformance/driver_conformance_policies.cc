// The conformance suite, queue policies (docs/policies.md): clearing a
// queue and supersede groups. A cleared or superseded run leaves the queue
// and is never admitted afterwards, in any process, until its record is
// forgotten; running runs keep their slots.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST_P(DriverConformanceTest, Clear_RemovesTheQueueAndLeavesRunningRuns) {
  Repository repo = Repo("clear", 1);
  RemovedLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  AcquireOptions at;
  at.creation_time = absl::FromUnixSeconds(1000);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("c"), at)->position, 1);
  at.creation_time = absl::FromUnixSeconds(900);  // older: goes first
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"), at)->position, 1);

  auto cleared = driver_->ClearQueue(ctx_, repo.Key());
  ASSERT_TRUE(cleared.ok()) << cleared.status();
  EXPECT_THAT(cleared->removed, ElementsAre(Run("b"), Run("c")));
  auto snap = driver_->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(snap.ok());
  EXPECT_THAT(RunKeys(snap->running), ElementsAre(Run("a")));
  EXPECT_THAT(snap->queued, IsEmpty());
  EXPECT_EQ(snap->limit, std::optional<int32_t>(1));
  EXPECT_TRUE(Eventually([&] { return log.runs().size() == 2; }));
  EXPECT_THAT(log.runs(),
              ElementsAre(Run("b") + " cleared", Run("c") + " cleared"));
  // The running run keeps its lease, and its release admits nobody.
  EXPECT_TRUE(driver_->RenewLease(ctx_, a->lease.lease_id).ok());
  auto rel = driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok());
  EXPECT_TRUE(rel->released);
  EXPECT_THAT(rel->admitted, IsEmpty());
  // Clearing again, or a queue nobody is in, removes nothing.
  auto again = driver_->ClearQueue(ctx_, repo.Key());
  ASSERT_TRUE(again.ok());
  EXPECT_THAT(again->removed, IsEmpty());
  auto unknown = driver_->ClearQueue(ctx_, Repo("never", 1).Key());
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_THAT(unknown->removed, IsEmpty());
  EXPECT_FALSE(
      driver_->ListRepositories(ctx_, ns_).value().empty());  // still listed
  absl::Status bad = driver_->ClearQueue(ctx_, "no-slash").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
}

TEST_P(DriverConformanceTest, Clear_AClearedRunIsNeverAdmittedAfterwards) {
  Repository repo = Repo("cleared", 1);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  ASSERT_TRUE(driver_->ClearQueue(ctx_, repo.Key()).ok());
  // Its holder re-submits, as a waiting client does on every event: it is
  // refused, with the reason, while the slot is taken and once it is free,
  // through this driver and another one ("another process").
  auto again = driver_->AcquireSlot(ctx_, repo, Run("b"));
  EXPECT_TRUE(IsRunRemoved(again.status())) << again.status();
  EXPECT_EQ(RunRemovedReason(again.status()), "cleared");
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "").ok());
  auto other = MakeDriver();
  for (Driver* d : {driver_.get(), other.get()}) {
    AcquireOptions no_queue;
    no_queue.enqueue = false;
    auto r = d->AcquireSlot(ctx_, repo, Run("b"));
    EXPECT_TRUE(IsRunRemoved(r.status())) << r.status();
    r = d->AcquireSlot(ctx_, repo, Run("b"), no_queue);
    EXPECT_TRUE(IsRunRemoved(r.status())) << r.status();
  }
  // Nothing was written by the refusals, and others are admitted as usual.
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
  EXPECT_THAT(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key()), IsEmpty());
  EXPECT_TRUE(other->AcquireSlot(ctx_, repo, Run("c"))->acquired);
  ASSERT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest,
       Clear_ReleaseByKeyCleanupAndAdoptionEndTheRecord) {
  Repository repo = Repo("forget", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  for (const char* r : {"b", "c", "d"}) {
    ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run(r))->acquired);
  }
  ASSERT_EQ(driver_->ClearQueue(ctx_, repo.Key())->removed.size(), 3u);
  // A release by key forgets the record (the holder gave up): the run may
  // queue again, as a new submission.
  auto forget = driver_->ReleaseSlot(ctx_, "", Run("b"), repo.Key());
  ASSERT_TRUE(forget.ok()) << forget.status();
  EXPECT_FALSE(forget->released);
  EXPECT_TRUE(forget->dequeued);
  auto b = driver_->AcquireSlot(ctx_, repo, Run("b"));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->position, 1);
  // A release by a lease id does not touch the record.
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, "no-such-lease", Run("c"), "").ok());
  EXPECT_TRUE(
      IsRunRemoved(driver_->AcquireSlot(ctx_, repo, Run("c")).status()));
  // A run the cluster shows running is adopted all the same.
  AcquireOptions adopt;
  adopt.adopt_running = true;
  auto c = driver_->AcquireSlot(ctx_, repo, Run("c"), adopt);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->acquired);
  // Cleanup forgets every record.
  ASSERT_TRUE(driver_->CleanupRepository(ctx_, repo.Key()).ok());
  auto d = driver_->AcquireSlot(ctx_, repo, Run("d"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->acquired);
}

// Clears from a second driver race with submissions, re-submissions and
// releases on the first: every run ends admitted or cleared, never both,
// and the limit holds throughout.
TEST_P(DriverConformanceTest, Clear_RacesNeverAdmitAClearedRun) {
  Repository repo = Repo("race", 2);
  auto other = MakeDriver();
  constexpr int kWorkers = 4;
  constexpr int kRuns = 12;
  std::mutex mu;
  std::set<std::string> admitted, cleared;  // guarded by mu
  RaceCounters c;
  std::atomic<bool> done{false};
  std::thread clearer([&] {
    while (!done.load()) {
      auto r = other->ClearQueue(ctx_, repo.Key());
      if (!r.ok()) {
        ++c.errors;
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        cleared.insert(r->removed.begin(), r->removed.end());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < kRuns; ++i) {
        const std::string run = Run(absl::StrCat("w", w, "-", i));
        // Held longer than the clearer's pace: two runs wait while two
        // hold, and clears find them.
        if (AdmitHoldRelease(driver_.get(), ctx_, repo, run, {},
                             std::chrono::milliseconds(4),
                             &c) == RaceOutcome::kAdmitted) {
          std::lock_guard<std::mutex> lock(mu);
          admitted.insert(run);
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
  done = true;
  clearer.join();
  EXPECT_EQ(c.errors.load(), 0);
  EXPECT_LE(c.most.load(), 2);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(admitted.size() + cleared.size(),
            static_cast<size_t>(kWorkers * kRuns));
  for (const std::string& run : cleared) {
    EXPECT_EQ(admitted.count(run), 0u) << run << " was cleared and admitted";
  }
  EXPECT_FALSE(cleared.empty());
  ASSERT_TRUE(other->Close().ok());
}

// ---------------------------------------------------------------------------
// Supersede groups.

AcquireOptions Grouped(const std::string& group, int64_t at_seconds) {
  AcquireOptions o;
  o.group = group;
  o.creation_time = absl::FromUnixSeconds(at_seconds);
  return o;
}

TEST_P(DriverConformanceTest, Supersede_ANewerRunRemovesTheGroupsOlderQueued) {
  Repository repo = Repo("supersede", 1);
  RemovedLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"), Grouped("pr-1", 90));
  ASSERT_TRUE(a.ok() && a->acquired);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"), Grouped("pr-1", 100))
                ->position,
            1);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("c"), Grouped("pr-2", 110))
                ->position,
            2);
  AcquireOptions plain;
  plain.creation_time = absl::FromUnixSeconds(115);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("p"), plain)->position, 3);
  // d of pr-1 supersedes b (queued), not a (running); c and p stay.
  auto d = driver_->AcquireSlot(ctx_, repo, Run("d"), Grouped("pr-1", 120));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->position, 3);
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("c"), Run("p"), Run("d")));
  EXPECT_THAT(RunKeys(*driver_->GetRunningPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("a")));
  EXPECT_TRUE(Eventually([&] { return log.runs().size() == 1; }));
  EXPECT_THAT(log.runs(), ElementsAre(Run("b") + " superseded"));
  // b submitted again is refused, with the reason.
  auto b = driver_->AcquireSlot(ctx_, repo, Run("b"), Grouped("pr-1", 100));
  EXPECT_TRUE(IsRunRemoved(b.status())) << b.status();
  EXPECT_EQ(RunRemovedReason(b.status()), "superseded");
  // The newest re-submitted keeps its place; so does a run of no group.
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("d"), Grouped("pr-1", 120))
                ->position,
            3);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("p"), plain)->position, 2);
  // The release admits the queue's head, c; b never.
  auto rel = driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok());
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("c")));
}

TEST_P(DriverConformanceTest, Supersede_ARunOlderThanTheGroupsQueuedIsRefused) {
  Repository repo = Repo("older", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("new"), Grouped("main", 200))
                ->position,
            1);
  // A run created before the queued one (a late webhook, a controller
  // that re-submits after a restart) is removed, not queued, through
  // this driver and another.
  auto late =
      driver_->AcquireSlot(ctx_, repo, Run("late"), Grouped("main", 150));
  EXPECT_TRUE(IsRunRemoved(late.status())) << late.status();
  EXPECT_EQ(RunRemovedReason(late.status()), "superseded");
  auto other = MakeDriver();
  auto again =
      other->AcquireSlot(ctx_, repo, Run("late"), Grouped("main", 150));
  EXPECT_TRUE(IsRunRemoved(again.status())) << again.status();
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("new")));
  // Of another group, or of none, it queues as usual.
  EXPECT_EQ(
      driver_->AcquireSlot(ctx_, repo, Run("x"), Grouped("dev", 150))->position,
      1);
  // A bad group is InvalidArgument and writes nothing.
  AcquireOptions bad = Grouped("has space", 10);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("y"), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  bad.group = std::string(254, 'g');
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("y"), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(driver_->GetQueuedPipelineRuns(ctx_, repo.Key())->size(), 2u);
  ASSERT_TRUE(other->Close().ok());
}

// Workers each push runs of their own group, newer and newer, and
// re-submit what they have queued, as waiting clients do, on two drivers,
// while slots turn over: a superseded run is never granted, every run ends
// granted or superseded, a group never has two runs queued, and the limit
// holds.
TEST_P(DriverConformanceTest, Supersede_RacesNeverAdmitASupersededRun) {
  Repository repo = Repo("srace", 2);
  auto other = MakeDriver();
  constexpr int kGroups = 4;
  constexpr int kRuns = 10;
  std::mutex mu;
  std::set<std::string> granted, superseded;  // guarded by mu
  RaceCounters c;
  // Both slots held for the first 100 ms: the workers' first runs queue,
  // and their next ones supersede them, on every driver however fast.
  std::vector<std::string> holders;
  for (const char* h : {"holder-1", "holder-2"}) {
    auto r = driver_->AcquireSlot(ctx_, repo, Run(h));
    ASSERT_TRUE(r.ok() && r->acquired) << r.status();
    holders.push_back(r->lease.lease_id);
  }
  std::thread unhold([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    for (const std::string& id : holders) {
      if (!driver_->ReleaseSlot(ctx_, id, "", "").ok()) ++c.errors;
    }
  });
  std::vector<std::thread> workers;
  const int64_t base = absl::ToUnixSeconds(absl::Now());
  for (int g = 0; g < kGroups; ++g) {
    workers.emplace_back([&, g] {
      Driver* d = g % 2 == 0 ? driver_.get() : other.get();
      const std::string group = absl::StrCat("pr-", g);
      std::vector<std::pair<std::string, int64_t>> waiting;
      int next = 0;
      const absl::Time until = absl::Now() + absl::Seconds(60);
      while ((next < kRuns || !waiting.empty()) && absl::Now() < until) {
        if (next < kRuns) {
          waiting.emplace_back(Run(absl::StrCat("g", g, "-", next)),
                               base + next);
          ++next;
        }
        for (auto it = waiting.begin(); it != waiting.end();) {
          auto r =
              d->AcquireSlot(ctx_, repo, it->first, Grouped(group, it->second));
          if (IsRunRemoved(r.status())) {
            std::lock_guard<std::mutex> lock(mu);
            superseded.insert(it->first);
            it = waiting.erase(it);
            continue;
          }
          if (!r.ok()) {
            ++c.errors;
            it = waiting.erase(it);
            continue;
          }
          if (!r->acquired) {
            ++it;
            continue;
          }
          {
            std::lock_guard<std::mutex> lock(mu);
            granted.insert(it->first);
          }
          c.HoldAndRelease(d, ctx_, r->lease.lease_id,
                           std::chrono::milliseconds(2));
          it = waiting.erase(it);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  std::atomic<bool> done{false};
  int most_queued_of_a_group = 0;
  std::thread reader([&] {
    while (!done.load()) {
      auto q = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
      if (!q.ok()) continue;
      std::map<char, int> per_group;  // "gN-": N
      for (const QueueEntry& e : *q) {
        const std::string& run = e.pipeline_run_key;
        char g = run[run.find('/') + 2];
        most_queued_of_a_group =
            std::max(most_queued_of_a_group, ++per_group[g]);
      }
    }
  });
  for (std::thread& t : workers) t.join();
  unhold.join();
  done = true;
  reader.join();
  EXPECT_EQ(c.errors.load(), 0);
  EXPECT_LE(c.most.load(), 2);
  EXPECT_LE(most_queued_of_a_group, 1);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(granted.size() + superseded.size(),
            static_cast<size_t>(kGroups * kRuns));
  for (const std::string& run : superseded) {
    EXPECT_EQ(granted.count(run), 0u) << run << " superseded and granted";
  }
  EXPECT_FALSE(superseded.empty());
  ASSERT_TRUE(other->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency::conformance
