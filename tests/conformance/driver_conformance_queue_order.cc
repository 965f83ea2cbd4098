// The conformance suite, queue order (docs/policies.md, "Queue order"):
// oldest-first, newest-first and priority; every mode is a total order,
// the same in every process, and a change of mode reorders the queued runs
// in one step.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

AcquireOptions At(int64_t seconds, int32_t priority = 0) {
  AcquireOptions o;
  o.creation_time = absl::FromUnixSeconds(seconds);
  o.priority = priority;
  return o;
}

RepositoryPolicy Mode(QueueMode mode) {
  RepositoryPolicy p;
  p.mode = mode;
  return p;
}

TEST_P(DriverConformanceTest, Order_NewestFirstAdmitsTheLatestCreatedRun) {
  Repository repo = Repo("newest", 1);
  ASSERT_TRUE(
      driver_
          ->SetRepositoryPolicy(ctx_, repo.Key(), Mode(QueueMode::kNewestFirst))
          .ok());
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"), At(100))->position, 1);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("c"), At(300))->position, 1);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("d"), At(200))->position, 2);
  // Equal creation times keep their enqueue order.
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("e"), At(200))->position, 3);
  EXPECT_THAT(QueuedRuns(driver_.get(), repo),
              ElementsAre(Run("c"), Run("d"), Run("e"), Run("b")));
  auto q = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
  ASSERT_TRUE(q.ok());
  for (size_t i = 0; i < q->size(); ++i) EXPECT_EQ((*q)[i].position, i + 1);
  // A re-submit keeps its place.
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("d"), At(200))->position, 2);
  auto rel = driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("c")));
}

TEST_P(DriverConformanceTest, Order_PriorityAdmitsHigherFirstThenOlder) {
  Repository repo = Repo("priority", 1);
  ASSERT_TRUE(
      driver_->SetRepositoryPolicy(ctx_, repo.Key(), Mode(QueueMode::kPriority))
          .ok());
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"), At(100, 0))->position,
            1);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("c"), At(300, 5))->position,
            1);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("d"), At(200, 5))->position,
            1);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("e"), At(50, -1))->position,
            4);
  auto other = MakeDriver();
  EXPECT_THAT(QueuedRuns(other.get(), repo),
              ElementsAre(Run("d"), Run("c"), Run("b"), Run("e")));
  auto q = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->size(), 4u);
  EXPECT_EQ((*q)[0].priority, 5);
  EXPECT_EQ((*q)[3].priority, -1);
  // A run that could take a free slot does not jump a higher queued one:
  // the head is admitted first, by the release.
  auto rel = other->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("d")));
  ASSERT_TRUE(other->Close().ok());
}

// A change of mode reorders the queued runs in one step: every reader,
// in any process, sees the old order or the new one, never a mix; and the
// next admission follows the new one.
TEST_P(DriverConformanceTest, Order_AChangeOfModeReordersTheQueue) {
  Repository repo = Repo("reorder", 1);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  // b: oldest; c: highest priority; d: newest.
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("b"), At(100, 0))->position,
            1);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("c"), At(200, 9))->position,
            2);
  ASSERT_EQ(driver_->AcquireSlot(ctx_, repo, Run("d"), At(300, 1))->position,
            3);
  const std::vector<std::string> oldest{Run("b"), Run("c"), Run("d")};
  const std::vector<std::string> newest{Run("d"), Run("c"), Run("b")};
  const std::vector<std::string> priority{Run("c"), Run("d"), Run("b")};
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAreArray(oldest));
  auto other = MakeDriver();
  std::atomic<bool> done{false};
  std::atomic<int> mixed{0}, reads{0};
  std::thread reader([&] {
    while (!done.load()) {
      auto got = QueuedRuns(other.get(), repo);
      ++reads;
      if (got != oldest && got != newest && got != priority) ++mixed;
    }
  });
  for (int i = 0; i < 5; ++i) {
    for (QueueMode m : {QueueMode::kNewestFirst, QueueMode::kPriority,
                        QueueMode::kOldestFirst}) {
      ASSERT_TRUE(driver_->SetRepositoryPolicy(ctx_, repo.Key(), Mode(m)).ok());
    }
  }
  ASSERT_TRUE(
      driver_
          ->SetRepositoryPolicy(ctx_, repo.Key(), Mode(QueueMode::kNewestFirst))
          .ok());
  done = true;
  reader.join();
  EXPECT_EQ(mixed.load(), 0) << "of " << reads.load() << " reads";
  EXPECT_THAT(QueuedRuns(other.get(), repo), ElementsAreArray(newest));
  EXPECT_EQ(other->GetRepositoryPolicy(ctx_, repo.Key())->mode,
            QueueMode::kNewestFirst);
  ASSERT_TRUE(
      other->SetRepositoryPolicy(ctx_, repo.Key(), Mode(QueueMode::kPriority))
          .ok());
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAreArray(priority));
  auto rel = driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("c")));
  ASSERT_TRUE(other->Close().ok());
}

// Runs of random priorities and creation times queue from two drivers at
// once; then each release admits exactly the head of the priority order,
// the same order whichever process reads it.
TEST_P(DriverConformanceTest, Order_PriorityIsOneOrderAcrossProcesses) {
  Repository repo = Repo("prio-race", 1);
  ASSERT_TRUE(
      driver_->SetRepositoryPolicy(ctx_, repo.Key(), Mode(QueueMode::kPriority))
          .ok());
  auto holder = driver_->AcquireSlot(ctx_, repo, Run("holder"));
  ASSERT_TRUE(holder.ok() && holder->acquired);
  auto other = MakeDriver();
  constexpr int kWorkers = 4;
  constexpr int kRuns = 6;
  // (-priority, creation, run): the expected order, but for enqueue order
  // among equal creation times, which distinct times here rule out.
  std::vector<std::tuple<int, int64_t, std::string>> want;
  std::mutex mu;
  std::atomic<int> errors{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      std::mt19937 rng(w);
      Driver* d = w % 2 == 0 ? driver_.get() : other.get();
      for (int i = 0; i < kRuns; ++i) {
        const int priority = static_cast<int>(rng() % 3);
        const int64_t at = 1000 + w * kRuns + i;  // distinct
        const std::string run = Run(absl::StrCat("w", w, "-", i));
        auto r = d->AcquireSlot(ctx_, repo, run, At(at, priority));
        if (!r.ok() || r->acquired || r->position < 1) {
          ++errors;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        want.emplace_back(-priority, at, run);
      }
    });
  }
  for (std::thread& t : workers) t.join();
  ASSERT_EQ(errors.load(), 0);
  std::sort(want.begin(), want.end());
  std::vector<std::string> order;
  for (const auto& [p, at, run] : want) order.push_back(run);
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), ElementsAreArray(order));
  EXPECT_THAT(QueuedRuns(other.get(), repo), ElementsAreArray(order));
  // Each release admits the next of the order.
  std::string lease = holder->lease.lease_id;
  for (size_t i = 0; i < order.size(); ++i) {
    Driver* d = i % 2 == 0 ? other.get() : driver_.get();
    auto rel = d->ReleaseSlot(ctx_, lease, "", "");
    ASSERT_TRUE(rel.ok()) << rel.status();
    ASSERT_EQ(rel->admitted.size(), 1u) << i;
    EXPECT_EQ(rel->admitted[0].pipeline_run_key, order[i]) << i;
    lease = rel->admitted[0].lease_id;
  }
  ASSERT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, Order_ThePolicyKeepsBothFields) {
  Repository repo = Repo("fields", 1);
  RepositoryPolicy p;
  p.mode = QueueMode::kPriority;
  p.max_queue_time = absl::Hours(1);
  ASSERT_TRUE(driver_->SetRepositoryPolicy(ctx_, repo.Key(), p).ok());
  auto other = MakeDriver();
  EXPECT_EQ(*other->GetRepositoryPolicy(ctx_, repo.Key()), p);
  p.max_queue_time.reset();
  ASSERT_TRUE(other->SetRepositoryPolicy(ctx_, repo.Key(), p).ok());
  EXPECT_EQ(*driver_->GetRepositoryPolicy(ctx_, repo.Key()), p);
  EXPECT_EQ(ParseQueueMode("newest-first", "mode").value(),
            QueueMode::kNewestFirst);
  EXPECT_EQ(ParseQueueMode("fifo", "mode").status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(other->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency::conformance
