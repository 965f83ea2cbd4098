// The conformance suite, Driver::ImportBatch: a batch of repositories is
// one step (a reader never sees one part without the others, a bad or
// oversized batch writes nothing), a batch at the driver's capacity fits,
// runs of equal creation time keep the request's order, and a raised limit
// admits other runs' queue heads beyond what one step carries.
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kBatchT0 = absl::FromUnixSeconds(1700000000);

ImportRequest::Waiting BatchWait(const std::string& run, int seconds) {
  return {run, kBatchT0 + absl::Seconds(seconds)};
}

// Two repositories per batch, batch after batch, while a reader reads the
// first repository's queue and then the second's: once the first shows its
// part, the second (read after) must show its own.
TEST_P(DriverConformanceTest, ImportBatch_ReadersSeeNoPartWithoutTheOthers) {
  const ImportCapacity cap = driver_->GetImportCapacity();
  const int per_repo =
      static_cast<int>(std::min<size_t>(20, cap.runs / 2 - cap.per_repository));
  const int kBatches = 30;
  std::vector<std::vector<RepositoryImport>> batches;
  for (int b = 0; b < kBatches; ++b) {
    std::vector<RepositoryImport> parts;
    for (const char* side : {"a", "b"}) {
      RepositoryImport p{Repo(absl::StrFormat("whole%s%02d", side, b), 1), {}};
      for (int i = 0; i < per_repo + 1; ++i) {
        // The first run takes the slot, the others queue.
        p.request.waiting.push_back(
            BatchWait(Run(absl::StrFormat("r%s%02d-%02d", side, b, i)), i));
      }
      parts.push_back(std::move(p));
    }
    batches.push_back(std::move(parts));
  }
  auto reader = MakeDriver();
  std::atomic<int> current{0}, partial{0}, reads{0};
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done.load()) {
      const int b = current.load();
      if (b >= kBatches) break;
      auto a =
          reader->GetQueuedPipelineRuns(ctx_, batches[b][0].repository.Key());
      auto other =
          reader->GetQueuedPipelineRuns(ctx_, batches[b][1].repository.Key());
      if (!a.ok() || !other.ok()) continue;
      ++reads;
      if (!a->empty() && other->size() != static_cast<size_t>(per_repo)) {
        ++partial;
      }
    }
  });
  while (reads.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  for (int b = 0; b < kBatches; ++b) {
    current = b;
    auto got = driver_->ImportBatch(ctx_, batches[b]);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), 2u);
    for (const ImportResult& r : *got) {
      EXPECT_EQ(r.admitted.size(), 1u);
      EXPECT_EQ(r.queued.size(), static_cast<size_t>(per_repo));
    }
    // Let the reader look at the finished batch too.
    const int seen = reads.load();
    while (reads.load() < seen + 2) absl::SleepFor(absl::Microseconds(100));
  }
  current = kBatches;
  done = true;
  watcher.join();
  EXPECT_GT(reads.load(), kBatches);
  EXPECT_EQ(partial.load(), 0) << "a reader saw one part without the other";
  EXPECT_TRUE(reader->Close().ok());
}

TEST_P(DriverConformanceTest, ImportBatch_BadOrOversizedBatchesWriteNothing) {
  RepositoryImport good{Repo("batchok", 2), {}};
  good.request.waiting = {BatchWait(Run("g1"), 0), BatchWait(Run("g2"), 1)};
  // A bad part after a good one.
  RepositoryImport bad{Repo("batchbad", 2), {}};
  bad.request.waiting = {BatchWait(Run("b1"), 0), BatchWait("Not A Key", 1)};
  auto r = driver_->ImportBatch(ctx_, {good, bad});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  // A repository given twice.
  r = driver_->ImportBatch(ctx_, {good, good});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("given twice"));
  // One run more than the capacity allows.
  const ImportCapacity cap = driver_->GetImportCapacity();
  RepositoryImport big{Repo("batchbig", 1), {}};
  const size_t n =
      cap.runs - cap.per_repository * 2 - good.request.waiting.size() + 1;
  for (size_t i = 0; i < n; ++i) {
    big.request.waiting.push_back(
        BatchWait(Run(absl::StrFormat("x%05d", i)), 0));
  }
  EXPECT_EQ(cap.CostOf({good, big}), cap.runs + 1);
  r = driver_->ImportBatch(ctx_, {good, big});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("per batch"));
  for (const char* name : {"batchok", "batchbad", "batchbig"}) {
    auto snap = driver_->GetRepositorySnapshot(ctx_, Repo(name, 1).Key());
    ASSERT_TRUE(snap.ok());
    EXPECT_FALSE(snap->limit.has_value()) << name;
    EXPECT_TRUE(snap->running.empty()) << name;
    EXPECT_TRUE(snap->queued.empty()) << name;
  }
  // One run fewer fits.
  big.request.waiting.pop_back();
  auto fits = driver_->ImportBatch(ctx_, {good, big});
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ((*fits)[1].queued.size(), n - 2);
}

// The costliest batch the capacity allows: every run already queued and
// now shown running (a seat and a dequeue each), every limit changed.
TEST_P(DriverConformanceTest, ImportBatch_TheCostliestBatchAtCapacityFits) {
  const ImportCapacity cap = driver_->GetImportCapacity();
  const size_t kRepos = 2;
  const size_t per_repo =
      std::min<size_t>(200, (cap.runs - kRepos * cap.per_repository) / kRepos);
  std::vector<RepositoryImport> parts;
  for (size_t k = 0; k < kRepos; ++k) {
    Repository repo = Repo(absl::StrFormat("costly%zu", k), 1);
    ASSERT_TRUE(
        driver_->AcquireSlot(ctx_, repo, Run(absl::StrFormat("h%zu", k)))
            ->acquired);
    RepositoryImport p{Repo(absl::StrFormat("costly%zu", k), 2), {}};
    p.request.set_limit = true;
    for (size_t i = 0; i < per_repo; ++i) {
      const std::string run = Run(absl::StrFormat("c%zu-%03zu", k, i));
      AcquireOptions o;
      o.creation_time = kBatchT0 + absl::Seconds(i);
      ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, run, o)->acquired);
      p.request.running.push_back(run);
    }
    parts.push_back(std::move(p));
  }
  auto got = driver_->ImportBatch(ctx_, parts);
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t k = 0; k < kRepos; ++k) {
    EXPECT_EQ((*got)[k].running.size(), per_repo);
    auto snap = driver_->GetRepositorySnapshot(ctx_, parts[k].repository.Key());
    ASSERT_TRUE(snap.ok());
    EXPECT_EQ(snap->running.size(), per_repo + 1);
    EXPECT_TRUE(snap->queued.empty());
    EXPECT_EQ(snap->limit, 2);
  }
}

// Runs of one event share a creation time and wait in the event's order,
// which is not their names' order; a later batch's runs of that time wait
// after them.
TEST_P(DriverConformanceTest, ImportBatch_EqualTimesKeepTheRequestsOrder) {
  Repository repo = Repo("event", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("h"))->acquired);
  RepositoryImport first{repo, {}};
  first.request.waiting = {BatchWait(Run("zeta"), 5),
                           BatchWait(Run("alpha"), 5), BatchWait(Run("mid"), 5),
                           BatchWait(Run("early"), 4)};
  auto got = driver_->ImportBatch(ctx_, {first});
  ASSERT_TRUE(got.ok()) << got.status();
  RepositoryImport second{repo, {}};
  second.request.waiting = {BatchWait(Run("aaa"), 5)};
  ASSERT_TRUE(driver_->ImportBatch(ctx_, {second}).ok());
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("early"), Run("zeta"), Run("alpha"), Run("mid"),
                          Run("aaa")));
  // Every process reads the same order (a second driver instance).
  auto other = MakeDriver();
  EXPECT_THAT(RunKeys(*other->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("early"), Run("zeta"), Run("alpha"), Run("mid"),
                          Run("aaa")));
  EXPECT_TRUE(other->Close().ok());
  // And the queue drains in it.
  auto rel = driver_->ReleaseSlot(ctx_, "", Run("h"), repo.Key());
  ASSERT_TRUE(rel.ok());
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("early")));
  rel = driver_->ReleaseSlot(ctx_, "", Run("early"), repo.Key());
  ASSERT_TRUE(rel.ok());
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("zeta")));
}

// A batch that raises a limit over a long queue of other runs: all of
// them that fit are admitted (on etcd by steps after the batch's Txn), in
// order, and reported; the batch's own later run waits.
TEST_P(DriverConformanceTest, ImportBatch_ARaisedLimitAdmitsTheWholeQueue) {
  Repository one = Repo("raised", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, one, Run("h"))->acquired);
  const int kQueued = 100;
  for (int i = 0; i < kQueued; ++i) {
    AcquireOptions o;
    o.creation_time = kBatchT0 + absl::Seconds(i);
    ASSERT_FALSE(
        driver_->AcquireSlot(ctx_, one, Run(absl::StrFormat("q%03d", i)), o)
            ->acquired);
  }
  RepositoryImport part{Repo("raised", kQueued + 1), {}};
  part.request.set_limit = true;
  part.request.waiting = {BatchWait(Run("new"), 1000)};
  auto got = driver_->ImportBatch(ctx_, {part});
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0].others_admitted.size(), static_cast<size_t>(kQueued));
  EXPECT_THAT(RunKeys((*got)[0].queued), ElementsAre(Run("new")));
  EXPECT_EQ((*got)[0].queued[0].position, 1);
  auto snap = driver_->GetRepositorySnapshot(ctx_, one.Key());
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->running.size(), static_cast<size_t>(kQueued + 1));
  EXPECT_THAT(RunKeys(snap->queued), ElementsAre(Run("new")));
}

}  // namespace
}  // namespace pac::concurrency::conformance
