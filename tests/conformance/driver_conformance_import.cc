// The conformance suite, Driver::ImportRuns: what an import writes (the
// running runs adopted, the waiting ones queued or admitted oldest first),
// that sending it again changes nothing, that concurrent imports keep the
// limit, bad requests write nothing, and a reader sees a whole import or
// none of it on the drivers that take it as one step.
#include <algorithm>
#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

ImportRequest::Waiting Wait(const std::string& run, int seconds) {
  return {run, kT0 + absl::Seconds(seconds)};
}

TEST_P(DriverConformanceTest, Import_AdoptsQueuesAndAdmitsOldestFirst) {
  Repository repo = Repo("import", 3);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("x"))->acquired);
  ImportRequest req;
  req.running = {Run("a")};
  // Equal times keep the request's order; s is older than both.
  req.waiting = {Wait(Run("p"), 2), Wait(Run("q"), 2), Wait(Run("s"), 1),
                 Wait(Run("t"), 3)};
  auto got = driver_->ImportRuns(ctx_, repo, req);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(RunKeys(got->running), ElementsAre(Run("a")));
  EXPECT_THAT(RunKeys(got->admitted), ElementsAre(Run("s")));
  EXPECT_THAT(RunKeys(got->queued), ElementsAre(Run("p"), Run("q"), Run("t")));
  std::vector<int64_t> places;
  for (const QueueEntry& q : got->queued) places.push_back(q.position);
  EXPECT_THAT(places, ElementsAre(1, 2, 3));
  EXPECT_EQ(got->queued[0].creation_time, kT0 + absl::Seconds(2));
  EXPECT_TRUE(got->others_admitted.empty());

  auto snap = driver_->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->running.size(), 3u);
  EXPECT_THAT(RunKeys(snap->queued), ElementsAre(Run("p"), Run("q"), Run("t")));

  // The same request again: the same leases and places, nothing new.
  auto again = driver_->ImportRuns(ctx_, repo, req);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->running.size(), 1u);
  EXPECT_EQ(again->running[0].lease_id, got->running[0].lease_id);
  ASSERT_EQ(again->admitted.size(), 1u);
  EXPECT_EQ(again->admitted[0].lease_id, got->admitted[0].lease_id);
  EXPECT_EQ(again->admitted[0].fencing_token, got->admitted[0].fencing_token);
  EXPECT_THAT(RunKeys(again->queued),
              ElementsAre(Run("p"), Run("q"), Run("t")));
  auto after = driver_->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->running.size(), 3u);
  EXPECT_EQ(after->queued.size(), 3u);

  // The queue drains in the imported order.
  auto rel = driver_->ReleaseSlot(ctx_, "", Run("x"), repo.Key());
  ASSERT_TRUE(rel.ok());
  EXPECT_THAT(RunKeys(rel->admitted), ElementsAre(Run("p")));
}

// A waiting run's priority places it under the priority mode, and its
// group makes a newer run of the group supersede it, as if submitted.
TEST_P(DriverConformanceTest, Import_WaitingRunsKeepTheirGroupAndPriority) {
  Repository repo = Repo("import-policy", 1);
  RepositoryPolicy p;
  p.mode = QueueMode::kPriority;
  ASSERT_TRUE(driver_->SetRepositoryPolicy(ctx_, repo.Key(), p).ok());
  ImportRequest req;
  req.running = {Run("a")};
  req.waiting = {Wait(Run("b"), 1), Wait(Run("c"), 2), Wait(Run("d"), 3)};
  req.waiting[1].priority = 5;
  req.waiting[1].group = "pr-1";
  req.waiting[2].priority = -1;
  auto got = driver_->ImportRuns(ctx_, repo, req);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->queued.size(), 3u);  // in request order, with places
  EXPECT_EQ(got->queued[0].position, 2);
  EXPECT_EQ(got->queued[1].position, 1);
  EXPECT_EQ(got->queued[2].position, 3);
  auto other = MakeDriver();
  auto q = other->GetQueuedPipelineRuns(ctx_, repo.Key());
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_THAT(RunKeys(*q), ElementsAre(Run("c"), Run("b"), Run("d")));
  EXPECT_EQ((*q)[0].priority, 5);
  // A newer run of c's group supersedes it.
  AcquireOptions newer;
  newer.group = "pr-1";
  newer.creation_time = kT0 + absl::Seconds(10);
  auto e = other->AcquireSlot(ctx_, repo, Run("e"), newer);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_THAT(QueuedRuns(driver_.get(), repo),
              ElementsAre(Run("b"), Run("e"), Run("d")));
  auto c = driver_->AcquireSlot(ctx_, repo, Run("c"));
  EXPECT_EQ(RunRemovedReason(c.status()), "superseded") << c.status();
  // A group that is not printable ASCII is refused, and nothing written.
  ImportRequest bad;
  bad.waiting = {Wait(Run("f"), 4)};
  bad.waiting[0].group = "pr 1";
  auto refused = driver_->ImportRuns(ctx_, repo, bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("group"));
  EXPECT_EQ(QueuedRuns(driver_.get(), repo).size(), 3u);
  ASSERT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, Import_RunningRunsTakeSlotsAboveTheLimit) {
  Repository repo = Repo("adopt", 1);
  ImportRequest req;
  req.running = {Run("a"), Run("b"), Run("c")};
  req.waiting = {Wait(Run("w"), 0)};
  auto got = driver_->ImportRuns(ctx_, repo, req);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(RunKeys(got->running), ElementsAre(Run("a"), Run("b"), Run("c")));
  EXPECT_TRUE(got->admitted.empty());
  EXPECT_THAT(RunKeys(got->queued), ElementsAre(Run("w")));
  std::set<int64_t> tokens;
  for (const Lease& l : got->running) tokens.insert(l.fencing_token);
  EXPECT_EQ(tokens.size(), 3u);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 3);
  // A queued run the cluster shows running takes a slot.
  ImportRequest started;
  started.running = {Run("w")};
  auto got2 = driver_->ImportRuns(ctx_, repo, started);
  ASSERT_TRUE(got2.ok()) << got2.status();
  EXPECT_THAT(RunKeys(got2->running), ElementsAre(Run("w")));
  EXPECT_TRUE(driver_->GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 4);
}

TEST_P(DriverConformanceTest, Import_KeepsOrSetsTheRecordedLimit) {
  Repository one = Repo("limit", 1);
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, one).ok());
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, one, Run("h"))->acquired);
  ImportRequest req;
  req.waiting = {Wait(Run("w1"), 1), Wait(Run("w2"), 2)};
  Repository three = Repo("limit", 3);
  auto kept = driver_->ImportRuns(ctx_, three, req);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(**driver_->GetRepositoryLimit(ctx_, one.Key()), 1);
  EXPECT_TRUE(kept->admitted.empty());
  EXPECT_EQ(kept->queued.size(), 2u);
  // With set_limit the new limit is recorded and admits the queue.
  req.set_limit = true;
  auto set = driver_->ImportRuns(ctx_, three, req);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(**driver_->GetRepositoryLimit(ctx_, one.Key()), 3);
  EXPECT_THAT(RunKeys(set->admitted), ElementsAre(Run("w1"), Run("w2")));
  EXPECT_TRUE(set->queued.empty());
}

TEST_P(DriverConformanceTest, Import_AQueuedRunKeepsItsPlace) {
  Repository repo = Repo("place", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("h"))->acquired);
  AcquireOptions o;
  o.creation_time = kT0 + absl::Seconds(5);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("e"), o)->acquired);
  ImportRequest req;
  req.waiting = {Wait(Run("e"), 0), Wait(Run("n"), 9)};
  auto got = driver_->ImportRuns(ctx_, repo, req);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->queued.size(), 2u);
  EXPECT_EQ(got->queued[0].creation_time, kT0 + absl::Seconds(5));
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("e"), Run("n")));
}

TEST_P(DriverConformanceTest, Import_BadRequestsWriteNothing) {
  Repository repo = Repo("bad", 2);
  ImportRequest twice;
  twice.running = {Run("a")};
  twice.waiting = {Wait(Run("b"), 0), Wait(Run("a"), 1)};
  auto r = driver_->ImportRuns(ctx_, repo, twice);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("given twice"));
  ImportRequest bad_key;
  bad_key.waiting = {Wait(Run("ok"), 0), Wait("Not A Key", 1)};
  EXPECT_EQ(driver_->ImportRuns(ctx_, repo, bad_key).status().code(),
            absl::StatusCode::kInvalidArgument);
  ImportRequest too_many;
  for (size_t i = 0; i <= Driver::kMaxImportRuns; ++i) {
    too_many.waiting.push_back(Wait(Run(absl::StrFormat("r%05d", i)), 0));
  }
  auto big = driver_->ImportRuns(ctx_, repo, too_many);
  ASSERT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(big.status().message(), HasSubstr("at most"));
  auto snap = driver_->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(snap.ok());
  EXPECT_FALSE(snap->limit.has_value());
  EXPECT_TRUE(snap->running.empty());
  EXPECT_TRUE(snap->queued.empty());
}

// Eight threads import the same 60 waiting runs at once, from two driver
// instances, while a ninth acquires: the limit holds, each run is once in
// the backend, and the queue is in the imported order.
TEST_P(DriverConformanceTest, Import_ConcurrentImportsKeepTheLimitAndOrder) {
  Repository repo = Repo("racing", 3);
  ImportRequest req;
  for (int i = 0; i < 60; ++i) {
    req.waiting.push_back(Wait(Run(absl::StrFormat("w%02d", i)), i));
  }
  auto other = MakeDriver();
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    Driver* d = t % 2 == 0 ? driver_.get() : other.get();
    threads.emplace_back([&, d] {
      if (!d->ImportRuns(ctx_, repo, req).ok()) ++errors;
    });
  }
  threads.emplace_back([&] {
    AcquireOptions o;
    o.creation_time = kT0 + absl::Seconds(1000);
    if (!driver_->AcquireSlot(ctx_, repo, Run("late"), o).ok()) ++errors;
  });
  for (auto& th : threads) th.join();
  ASSERT_EQ(errors.load(), 0);
  auto snap = driver_->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(snap.ok());
  ASSERT_EQ(snap->running.size(), 3u);
  std::vector<std::string> want;
  for (int i = 3; i < 60; ++i) want.push_back(Run(absl::StrFormat("w%02d", i)));
  std::vector<std::string> queued = RunKeys(snap->queued);
  // "late" is admitted if it came first, else queued last.
  if (!queued.empty() && queued.back() == Run("late")) {
    queued.pop_back();
    EXPECT_THAT(RunKeys(snap->running),
                ElementsAre(Run("w00"), Run("w01"), Run("w02")));
    EXPECT_THAT(queued, ElementsAreArray(want));
  } else {
    EXPECT_THAT(RunKeys(snap->running), ::testing::Contains(Run("late")));
    EXPECT_EQ(queued.size(), 58u);
  }
  EXPECT_TRUE(other->Close().ok());
}

// A reader during a 2,000-run import (500 on etcd) sees it whole or not at
// all on the drivers that take it as one step (memory, PostgreSQL); on the
// others (etcd: one Txn per 63 runs) the queue only grows, in order, to the
// whole.
TEST_P(DriverConformanceTest, Import_ReadersSeeItWholeOrGrowingInOrder) {
  Repository repo = Repo("whole", 1);
  auto holder = driver_->AcquireSlot(ctx_, repo, Run("h"));
  ASSERT_TRUE(holder.ok() && holder->acquired);
  ImportRequest req;
  const bool atomic = driver_->Type() != "etcd";
  // etcd: 500, in parts.
  const int kRuns = atomic ? 2000 : 500;
  for (int i = 0; i < kRuns; ++i) {
    req.waiting.push_back(Wait(Run(absl::StrFormat("w%04d", i)), i));
  }
  auto reader = MakeDriver();
  std::atomic<bool> done{false};
  std::atomic<int> partial{0}, shrank{0}, reads{0};
  // The holder keeps its slot however long the import takes (a real TTL
  // is 2 s), so nothing leaves the queue.
  std::thread renewer([&] {
    while (!done.load()) {
      (void)driver_->RenewLease(ctx_, holder->lease.lease_id);
      absl::SleepFor(std::min(ttl() / 4, absl::Milliseconds(100)));
    }
  });
  std::thread watcher([&] {
    size_t last = 0;
    while (!done.load()) {
      auto q = reader->GetQueuedPipelineRuns(ctx_, repo.Key());
      if (!q.ok()) continue;
      ++reads;
      if (q->size() != 0 && q->size() != static_cast<size_t>(kRuns)) {
        ++partial;
      }
      if (q->size() < last) ++shrank;
      last = q->size();
    }
  });
  // The reader is reading before the import starts (on the memory driver
  // the whole import takes a few milliseconds).
  while (reads.load() == 0) absl::SleepFor(absl::Milliseconds(1));
  auto got = driver_->ImportRuns(ctx_, repo, req);
  done = true;
  watcher.join();
  renewer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->queued.size(), static_cast<size_t>(kRuns));
  EXPECT_GT(reads.load(), 0);
  EXPECT_EQ(shrank.load(), 0);
  if (atomic) EXPECT_EQ(partial.load(), 0) << "a reader saw part of it";
  EXPECT_TRUE(reader->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency::conformance
