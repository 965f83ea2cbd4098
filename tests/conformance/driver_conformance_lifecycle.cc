// The conformance suite, rules 7-16: what follows a grant. Releases that
// hand a slot to the queue head, watches, expiry, the Manager's renewals,
// limit changes, idempotent releases, cleanup and states, done contexts,
// bad keys and a closed driver. Rules 1-6 and the fixture are in
// driver_conformance.cc.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// Rule 7: release promotes in the same step.

TEST_P(DriverConformanceTest, Rule07_ReleaseAdmitsHeadAndReportsIt) {
  Repository repo = Repo("promote", 2);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("c"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("d"))->acquired);
  auto rel =
      driver_->ReleaseSlot(ctx_, a->lease.lease_id, Run("a"), repo.Key());
  ASSERT_TRUE(rel.ok());
  EXPECT_TRUE(rel->released);
  ASSERT_EQ(rel->admitted.size(), 1u);
  EXPECT_EQ(rel->admitted[0].pipeline_run_key, Run("c"));
  EXPECT_FALSE(rel->admitted[0].lease_id.empty());
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 2);
  // The promoted run's next acquire returns the lease it was given.
  auto c = driver_->AcquireSlot(ctx_, repo, Run("c"));
  EXPECT_TRUE(c->acquired);
  EXPECT_EQ(c->lease.lease_id, rel->admitted[0].lease_id);
}

// A snapshot is one state: while releases hand slots to the queue and the
// released runs queue again, a reader never sees a run both running and
// queued, nor a run in neither list beyond the one between its release
// and its re-queue. Three separate reads (Driver's default) fail this.
TEST_P(DriverConformanceTest, Rule07_SnapshotSeesAHandOffWholeOrNotAtAll) {
  Repository repo = Repo("snapshot", 2);
  std::vector<std::string> runs;
  for (int i = 0; i < 6; ++i) {
    runs.push_back(Run(absl::StrCat("r", i)));
    ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, runs.back()).ok());
  }
  // At rest it says what the separate reads say.
  auto rest = driver_->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->limit, std::optional<int32_t>(2));
  EXPECT_EQ(RunKeys(rest->running),
            RunKeys(*driver_->GetRunningPipelineRuns(ctx_, repo.Key())));
  EXPECT_THAT(RunKeys(rest->queued),
              ElementsAre(runs[2], runs[3], runs[4], runs[5]));
  for (size_t i = 0; i < rest->queued.size(); ++i) {
    EXPECT_EQ(rest->queued[i].position, static_cast<int64_t>(i + 1));
  }
  auto none = driver_->GetRepositorySnapshot(ctx_, Repo("never", 1).Key());
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->limit.has_value());
  EXPECT_TRUE(none->running.empty() && none->queued.empty());

  std::atomic<bool> done{false};
  std::atomic<int> snapshots{0};
  std::mutex mu;
  std::vector<std::string> bad;  // guarded by mu
  std::thread reader([&] {
    while (!done.load()) {
      auto s = driver_->GetRepositorySnapshot(ctx_, repo.Key());
      if (!s.ok()) continue;
      ++snapshots;
      std::set<std::string> seen;
      for (const Lease& l : s->running) seen.insert(l.pipeline_run_key);
      for (const QueueEntry& q : s->queued) {
        if (seen.count(q.pipeline_run_key) > 0) {
          std::lock_guard<std::mutex> lock(mu);
          bad.push_back(q.pipeline_run_key + " both running and queued");
        }
        seen.insert(q.pipeline_run_key);
      }
      if (seen.size() < 5 || s->running.size() > 2) {
        std::lock_guard<std::mutex> lock(mu);
        bad.push_back(absl::StrCat(s->running.size(), " running and ",
                                   s->queued.size(), " queued"));
      }
    }
  });
  // The hand-offs overlap the reads: they start once the reader has taken
  // a snapshot, and go on past 150 until it has taken 50 (a fast driver
  // could otherwise finish them all before the reader's thread runs).
  if (!Eventually([&] { return snapshots.load() > 0; })) {
    done = true;
    reader.join();
    FAIL() << "the reader took no snapshot";
  }
  for (int i = 0; i < 150 || (snapshots.load() < 50 && i < 1'000'000); ++i) {
    auto running = driver_->GetRunningPipelineRuns(ctx_, repo.Key());
    ASSERT_TRUE(running.ok());
    ASSERT_FALSE(running->empty());
    const std::string run = running->front().pipeline_run_key;
    ASSERT_TRUE(driver_->ReleaseSlot(ctx_, "", run, repo.Key()).ok());
    ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, run).ok());
  }
  done = true;
  reader.join();
  EXPECT_GE(snapshots.load(), 50);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(bad.empty()) << bad.size()
                           << " inconsistent snapshots, first: " << bad.front();
}

TEST_P(DriverConformanceTest, Rule07_QueueManagerReleasesPromote) {
  Repository repo = Repo("qm-promote", 1);
  QueueManager qm(driver_.get(), nullptr);
  auto running =
      qm.AddListToRunningQueue(ctx_, repo, {Run("a"), Run("b"), Run("c")});
  ASSERT_TRUE(running.ok());
  EXPECT_THAT(*running, ElementsAre(Run("a")));
  EXPECT_THAT(*qm.QueuedPipelineRuns(ctx_, repo),
              ElementsAre(Run("b"), Run("c")));
  auto next = qm.RemoveAndTakeItemFromQueue(ctx_, repo, Run("a"));
  ASSERT_TRUE(next.ok());
  EXPECT_THAT(*next, ElementsAre(Run("b")));
  // Removing a queued run frees nothing and promotes nobody.
  EXPECT_TRUE(*qm.RemoveFromQueue(ctx_, repo.Key(), Run("c")));
  EXPECT_THAT(*qm.RunningPipelineRuns(ctx_, repo), ElementsAre(Run("b")));
  EXPECT_TRUE(qm.QueuedPipelineRuns(ctx_, repo)->empty());
  // Removing the running one frees its slot.
  EXPECT_TRUE(*qm.RemoveFromQueue(ctx_, repo.Key(), Run("b")));
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
  auto try_acquire = qm.TryAcquireSlot(ctx_, repo, Run("d"));
  EXPECT_TRUE(try_acquire->acquired);
  auto try_full = qm.TryAcquireSlot(ctx_, repo, Run("e"));
  EXPECT_FALSE(try_full->acquired);
  EXPECT_TRUE(qm.QueuedPipelineRuns(ctx_, repo)->empty());  // nothing queued
}

// ---------------------------------------------------------------------------
// Rule 8: watchers.

TEST_P(DriverConformanceTest, Rule08_WatcherToldOfReleaseAndAdmission) {
  Repository repo = Repo("watch", 1);
  EventLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  // Another driver instance releases: the watcher of this one hears of it.
  auto other = MakeDriver();
  ASSERT_TRUE(other->ReleaseSlot(ctx_, a->lease.lease_id, "", "")->released);
  EXPECT_TRUE(Eventually([&] {
    return log.Has(WatchEventType::kAdmitted, Run("b")) ||
           log.Has(WatchEventType::kReleased);
  }));
  EXPECT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, Rule08_WatcherToldOfExpiry) {
  Repository repo = Repo("watch-expiry", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  EventLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok());
  PassTTL();
  // Nobody calls the driver: its own cleanup reclaims and admits b.
  EXPECT_TRUE(
      Eventually([&] { return log.Has(WatchEventType::kAdmitted, Run("b")); }));
  EXPECT_THAT(RunKeys(*driver_->GetRunningPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("b")));
}

// One vocabulary on every driver: a release is `released`, a lease that ran
// out is `expired`, each naming its run, also with nobody queued (on etcd
// both are a bare deletion of the seat).
TEST_P(DriverConformanceTest, Rule08_ReleaseAndExpiryAreToldApart) {
  Repository repo = Repo("watch-vocabulary", 2);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  EventLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "")->released);
  EXPECT_TRUE(
      Eventually([&] { return log.Has(WatchEventType::kReleased, Run("a")); }));
  PassTTL();
  EXPECT_TRUE(
      Eventually([&] { return log.Has(WatchEventType::kExpired, Run("b")); }));
  EXPECT_TRUE(Eventually([&] {
    return driver_->GetCurrentSlots(ctx_, repo.Key()).value_or(-1) == 0;
  }));
  EXPECT_FALSE(log.Has(WatchEventType::kExpired, Run("a")));
  EXPECT_FALSE(log.Has(WatchEventType::kReleased, Run("b")));
}

TEST_P(DriverConformanceTest, Rule08_WatcherToldOfLimitRaiseAndCleanup) {
  Repository repo = Repo("watch-limit", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  EventLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok());
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, Repo("watch-limit", 2)).ok());
  EXPECT_TRUE(
      Eventually([&] { return log.Has(WatchEventType::kAdmitted, Run("b")); }));
  ASSERT_TRUE(driver_->CleanupRepository(ctx_, repo.Key()).ok());
  EXPECT_TRUE(Eventually([&] { return log.Has(WatchEventType::kCleaned); }));
}

TEST_P(DriverConformanceTest, Rule08_StoppedOrCancelledWatchIsSilent) {
  Repository repo = Repo("watch-stop", 0);
  EventLog stopped_log, cancelled_log, live_log;
  auto stopped =
      driver_->WatchSlotAvailability(ctx_, repo.Key(), stopped_log.Callback());
  auto [cctx, cancel] = Context::WithCancel(ctx_);
  auto cancelled = driver_->WatchSlotAvailability(cctx, repo.Key(),
                                                  cancelled_log.Callback());
  auto live =
      driver_->WatchSlotAvailability(ctx_, repo.Key(), live_log.Callback());
  ASSERT_TRUE(stopped.ok() && cancelled.ok() && live.ok());
  (*stopped)->Stop();
  cancel.Cancel();
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "")->released);
  EXPECT_TRUE(
      Eventually([&] { return live_log.Has(WatchEventType::kReleased); }));
  EXPECT_EQ(stopped_log.size(), 0u);
  EXPECT_EQ(cancelled_log.size(), 0u);
}

// ---------------------------------------------------------------------------
// Rule 9: expiry.

TEST_P(DriverConformanceTest, Rule09_AdmissionIgnoresExpiredLeases) {
  auto lazy = MakeDriver(/*background_cleanup=*/false);
  Repository repo = Repo("expiry", 1);
  ASSERT_TRUE(lazy->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  EXPECT_FALSE(
      lazy->AcquireSlot(ctx_, repo, Run("b"), {.enqueue = false})->acquired);
  PassTTL();
  auto b = lazy->AcquireSlot(ctx_, repo, Run("b"));
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->acquired);
  EXPECT_EQ(*lazy->GetCurrentSlots(ctx_, repo.Key()), 1);
  EXPECT_TRUE(lazy->Close().ok());
}

// ---------------------------------------------------------------------------
// Rule 10: keepalive by the Manager.

TEST_P(DriverConformanceTest, Rule10_ManagerKeepsLeasesAlive) {
  std::atomic<int> lost{0};
  ManagerOptions options;
  options.clock = clock_;
  options.on_lease_lost = [&](const Lease&, const absl::Status&) { ++lost; };
  auto manager = Manager::FromDriver(MakeDriver(), nullptr, options);
  Repository repo = Repo("keepalive", 1);
  auto a = manager->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  EXPECT_EQ(manager->TrackedLeaseCount(), 1u);
  // Three TTLs pass in steps of a sixth; the Manager renews along the way.
  absl::Time last_expiry = a->lease.expires_at;
  for (int step = 0; step < 18; ++step) {
    Advance(ttl_ / 6);
    absl::Time now = clock_->Now();
    ASSERT_TRUE(Eventually([&] {
      auto leases =
          manager->GetDriver().GetRunningPipelineRuns(ctx_, repo.Key());
      return leases.ok() && leases->size() == 1 &&
             (*leases)[0].expires_at - now > ttl_ / 4;
    })) << "step "
        << step;
    auto leases = manager->GetDriver().GetRunningPipelineRuns(ctx_, repo.Key());
    last_expiry = std::max(last_expiry, (*leases)[0].expires_at);
  }
  EXPECT_GT(last_expiry, a->lease.expires_at + ttl_);
  EXPECT_FALSE(manager->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  EXPECT_EQ(lost.load(), 0);
  ASSERT_TRUE(
      manager->ReleaseSlot(ctx_, a->lease.lease_id, Run("a"), repo.Key()).ok());
  // b was admitted by the Manager's own release, but nobody here waits for
  // it: its own holder renews it, not this Manager.
  EXPECT_EQ(manager->TrackedLeaseCount(), 0u);
  EXPECT_TRUE(manager->Close().ok());
}

// Issue 20 (17): a run admitted for a waiter that is gone (it queued, then
// died) holds its slot for one TTL at most: the Manager whose release
// admitted it does not renew it, and the next run gets the slot. Before:
// the Manager renewed it until it closed.
TEST_P(DriverConformanceTest, Rule10_AnAdmittedRunNobodyWaitsForExpires) {
  ManagerOptions options;
  options.clock = clock_;
  auto manager = Manager::FromDriver(MakeDriver(), nullptr, options);
  Repository repo = Repo("orphan", 1);
  auto a = manager->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("gone"))->acquired);
  auto rel = manager->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok() && rel->admitted.size() == 1u);
  EXPECT_EQ(manager->TrackedLeaseCount(), 0u);
  for (int step = 0; step < 4; ++step) Advance(ttl_ / 2);
  // Its lease ran out: the slot is free for the next run.
  EXPECT_TRUE(Eventually([&] {
    auto next = driver_->AcquireSlot(ctx_, repo, Run("next"));
    return next.ok() && next->acquired;
  }));
  EXPECT_TRUE(manager->Close().ok());
}

// A run that a WaitForSlot of this Manager waits for is renewed from the
// moment a release admits it.
TEST_P(DriverConformanceTest,
       Rule10_AnAdmittedRunAWaiterHereWaitsForIsRenewed) {
  ManagerOptions options;
  options.clock = clock_;
  auto manager = Manager::FromDriver(MakeDriver(), nullptr, options);
  Repository repo = Repo("awaited", 1);
  auto a = manager->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  absl::StatusOr<Lease> waited = absl::UnknownError("not yet");
  std::thread waiter([&] {
    waited = manager->WaitForSlot(Context::WithTimeout(ctx_, absl::Seconds(30)),
                                  repo, Run("w"));
  });
  ASSERT_TRUE(Eventually([&] {
    auto q = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
    return q.ok() && q->size() == 1;
  }));
  auto rel = manager->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok() && rel->admitted.size() == 1u);
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ(manager->TrackedLeaseCount(), 1u);
  EXPECT_TRUE(manager->Close().ok());
}

TEST_P(DriverConformanceTest, Rule10_ManagerReportsLostLease) {
  std::atomic<int> lost{0};
  ManagerOptions options;
  options.clock = clock_;
  options.on_lease_lost = [&](const Lease&, const absl::Status& s) {
    if (IsLeaseLost(s)) ++lost;
  };
  auto manager = Manager::FromDriver(MakeDriver(), nullptr, options);
  Repository repo = Repo("lost", 1);
  auto a = manager->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a->acquired);
  // Another process releases it behind the Manager's back.
  auto other = MakeDriver();
  ASSERT_TRUE(other->ReleaseSlot(ctx_, a->lease.lease_id, "", "")->released);
  Advance(ttl_ / 2);
  EXPECT_TRUE(Eventually([&] { return lost.load() == 1; }));
  EXPECT_EQ(manager->TrackedLeaseCount(), 0u);
  EXPECT_TRUE(other->Close().ok());
  EXPECT_TRUE(manager->Close().ok());
}

// ---------------------------------------------------------------------------
// Rule 11: limit changes.

TEST_P(DriverConformanceTest, Rule11_LoweringLimitEvictsNobody) {
  Repository repo = Repo("lower", 3);
  for (const char* r : {"a", "b", "c"}) {
    ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run(r))->acquired);
  }
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("d"))->acquired);
  Repository lowered = Repo("lower", 1);
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, lowered)->empty());
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 3);
  EXPECT_TRUE(
      driver_->ReleaseSlot(ctx_, "", Run("a"), repo.Key())->admitted.empty());
  EXPECT_TRUE(
      driver_->ReleaseSlot(ctx_, "", Run("b"), repo.Key())->admitted.empty());
  EXPECT_FALSE(driver_->AcquireSlot(ctx_, lowered, Run("e"))->acquired);
  auto last = driver_->ReleaseSlot(ctx_, "", Run("c"), repo.Key());
  ASSERT_EQ(last->admitted.size(), 1u);
  EXPECT_EQ(last->admitted[0].pipeline_run_key, Run("d"));
}

// Queues `n` runs (`<prefix>000`, `<prefix>001`, ...) behind `holder`,
// which holds the repository's only slot, renewing its lease as it goes (a
// real backend's TTL is short); returns their keys in queue order.
std::vector<std::string> QueueMany(Driver* d, const Context& ctx,
                                   const Repository& repo,
                                   const std::string& ns,
                                   const std::string& holder_lease,
                                   const std::string& prefix, int n) {
  std::vector<std::string> runs;
  for (int i = 0; i < n; ++i) {
    runs.push_back(
        absl::StrCat(ns, "/", prefix, absl::Dec(i, absl::kZeroPad3)));
    auto r = d->AcquireSlot(ctx, repo, runs.back());
    EXPECT_TRUE(r.ok() && !r->acquired) << runs.back();
    if (i % 25 == 24) EXPECT_TRUE(d->RenewLease(ctx, holder_lease).ok());
  }
  return runs;
}

TEST_P(DriverConformanceTest, Rule11_RaisingLimitAdmitsAtOnce) {
  Repository repo = Repo("raise", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("c"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("d"))->acquired);
  auto admitted = driver_->SetRepositoryLimit(ctx_, Repo("raise", 3));
  ASSERT_TRUE(admitted.ok());
  EXPECT_THAT(RunKeys(*admitted), ElementsAre(Run("b"), Run("c")));
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("d")));
  // A raise carried by an acquire admits the queue first, in order.
  auto e = driver_->AcquireSlot(ctx_, Repo("raise", 5), Run("e"));
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->acquired);
  EXPECT_THAT(RunKeys(e->admitted), ElementsAre(Run("d")));
}

// More admissions than one backend request may carry (etcd: 128 operations
// per Txn) still come in one call, oldest first, and the rest stay queued
// in order. (No background promotion: the admitted runs' leases may run
// out on a real backend's short TTL, which must not move the queue here.)
TEST_P(DriverConformanceTest,
       Rule11_RaisingTheLimitPastOneRequestAdmitsInOrder) {
  std::unique_ptr<Driver> d = MakeDriver(/*background_cleanup=*/false);
  Repository repo = Repo("raise-many", 1);
  auto a = d->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  const std::vector<std::string> queued =
      QueueMany(d.get(), ctx_, repo, ns_, a->lease.lease_id, "q", 300);
  auto admitted = d->SetRepositoryLimit(ctx_, Repo("raise-many", 200));
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_THAT(RunKeys(*admitted),
              ElementsAreArray(queued.begin(), queued.begin() + 199));
  auto left = d->GetQueuedPipelineRuns(ctx_, repo.Key());
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_THAT(RunKeys(*left),
              ElementsAreArray(queued.begin() + 199, queued.end()));
  // Every admitted run holds its own slot, with its own fencing token.
  std::set<int64_t> tokens;
  for (const Lease& l : *admitted) tokens.insert(l.fencing_token);
  EXPECT_EQ(tokens.size(), admitted->size());
  // A limit of 0 (unlimited) admits the whole backlog, in order.
  auto rest = d->SetRepositoryLimit(ctx_, Repo("raise-many", 0));
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_THAT(RunKeys(*rest),
              ElementsAreArray(queued.begin() + 199, queued.end()));
  EXPECT_TRUE(d->GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
  EXPECT_TRUE(d->Close().ok());
}

// An acquire that keeps the recorded limit (a server that read it from the
// backend) admits under it and does not write back the limit it was given,
// which another process may have changed since; with none recorded, it
// records the one given.
TEST_P(DriverConformanceTest,
       Rule11_AnAcquireKeepingTheRecordedLimitUndoesNoChange) {
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, Repo("kept", 3)).ok());
  AcquireOptions keep;
  keep.keep_recorded_limit = true;
  for (const char* run : {"a", "b", "c"}) {
    auto r = driver_->AcquireSlot(ctx_, Repo("kept", 1), Run(run), keep);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->acquired) << run;
  }
  EXPECT_EQ(*driver_->GetRepositoryLimit(ctx_, Repo("kept", 1).Key()), 3);
  auto d = driver_->AcquireSlot(ctx_, Repo("kept", 9), Run("d"), keep);
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->acquired);
  EXPECT_EQ(*driver_->GetRepositoryLimit(ctx_, Repo("kept", 1).Key()), 3);
  auto first = driver_->AcquireSlot(ctx_, Repo("fresh", 2), Run("e"), keep);
  ASSERT_TRUE(first.ok() && first->acquired);
  EXPECT_EQ(*driver_->GetRepositoryLimit(ctx_, Repo("fresh", 2).Key()), 2);
}

// ---------------------------------------------------------------------------
// Rule 12: idempotent release by id or key.

TEST_P(DriverConformanceTest, Rule12_ReleaseIsIdempotentByIdAndKey) {
  Repository repo = Repo("release", 2);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  auto first =
      driver_->ReleaseSlot(ctx_, a->lease.lease_id, Run("a"), repo.Key());
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(first->released);
  auto again =
      driver_->ReleaseSlot(ctx_, a->lease.lease_id, Run("a"), repo.Key());
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->released);
  auto by_key = driver_->ReleaseSlot(ctx_, "", Run("b"), repo.Key());
  EXPECT_TRUE(by_key->released);
  EXPECT_FALSE(driver_->ReleaseSlot(ctx_, "", Run("b"), repo.Key())->released);
  auto unknown = driver_->ReleaseSlot(ctx_, "no-such-lease", "", "");
  ASSERT_TRUE(unknown.ok());
  EXPECT_FALSE(unknown->released);
  EXPECT_FALSE(
      driver_->ReleaseSlot(ctx_, "", Run("never"), repo.Key())->released);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
}

TEST_P(DriverConformanceTest, Rule12_StaleLeaseIdDoesNotReleaseNewerLease) {
  Repository repo = Repo("stale", 1);
  auto old_lease = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, "", Run("a"), repo.Key())->released);
  auto fresh = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(fresh->acquired);
  auto stale = driver_->ReleaseSlot(ctx_, old_lease->lease.lease_id, Run("a"),
                                    repo.Key());
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(stale->released);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 1);
  // A live lease id named with another run's key releases nothing either.
  auto mismatched =
      driver_->ReleaseSlot(ctx_, fresh->lease.lease_id, Run("b"), repo.Key());
  ASSERT_TRUE(mismatched.ok());
  EXPECT_FALSE(mismatched->released);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 1);
}

// ---------------------------------------------------------------------------
// Rule 13: cleanup.

TEST_P(DriverConformanceTest, Rule13_CleanupRemovesOnlyThatRepository) {
  Repository gone = Repo("gone", 1);
  Repository kept = Repo("gone-not", 1);  // a prefix-sharing neighbour
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, gone, Run("a"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, gone, Run("b"))->acquired);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, kept, Run("c"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, kept, Run("d"))->acquired);
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, gone, "active").ok());
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, kept, "active").ok());
  ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, Run("a"), "started").ok());
  ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, Run("c"), "started").ok());

  ASSERT_TRUE(driver_->CleanupRepository(ctx_, gone.Key()).ok());
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, gone.Key()), 0);
  EXPECT_TRUE(driver_->GetQueuedPipelineRuns(ctx_, gone.Key())->empty());
  EXPECT_TRUE(
      absl::IsNotFound(driver_->GetRepositoryState(ctx_, gone.Key()).status()));
  EXPECT_TRUE(
      absl::IsNotFound(driver_->GetPipelineRunState(ctx_, Run("a")).status()));

  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, kept.Key()), 1);
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, kept.Key())),
              ElementsAre(Run("d")));
  EXPECT_EQ(*driver_->GetRepositoryState(ctx_, kept.Key()), "active");
  EXPECT_EQ(*driver_->GetPipelineRunState(ctx_, Run("c")), "started");
}

// A repository with more runs than one backend request may delete (etcd:
// 128 operations per Txn) is cleaned up whole, run states included.
TEST_P(DriverConformanceTest, Rule13_CleanupOfARepositoryWithAThousandRuns) {
  Repository repo = Repo("big", 1);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  const std::vector<std::string> queued =
      QueueMany(driver_.get(), ctx_, repo, ns_, a->lease.lease_id, "q", 999);
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, repo, "active").ok());
  for (int i = 0; i < 999; i += 111) {
    ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, queued[i], "queued").ok());
  }
  ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, Run("a"), "started").ok());
  absl::Status s = driver_->CleanupRepository(ctx_, repo.Key());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
  EXPECT_TRUE(driver_->GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
  EXPECT_TRUE(
      absl::IsNotFound(driver_->GetRepositoryState(ctx_, repo.Key()).status()));
  EXPECT_TRUE(
      absl::IsNotFound(driver_->GetPipelineRunState(ctx_, Run("a")).status()));
  for (int i = 0; i < 999; i += 111) {
    EXPECT_TRUE(absl::IsNotFound(
        driver_->GetPipelineRunState(ctx_, queued[i]).status()));
  }
  auto repos = driver_->ListRepositories(ctx_, ns_);
  ASSERT_TRUE(repos.ok());
  EXPECT_TRUE(repos->empty());
}

TEST_P(DriverConformanceTest, Rule13_StatesRoundTrip) {
  Repository repo = Repo("states", 1);
  EXPECT_TRUE(
      absl::IsNotFound(driver_->GetRepositoryState(ctx_, repo.Key()).status()));
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, repo, "paused").ok());
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, repo, "active").ok());
  EXPECT_EQ(*driver_->GetRepositoryState(ctx_, repo.Key()), "active");
  ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, Run("x"), "queued").ok());
  EXPECT_EQ(*driver_->GetPipelineRunState(ctx_, Run("x")), "queued");
}

// A state the specification's VARCHAR(50) cannot hold is refused alike by
// every driver, and writes nothing; 50 characters (of any script) are kept.
TEST_P(DriverConformanceTest, Rule13_StatesAreCheckedAlikeOnEveryDriver) {
  Repository repo = Repo("state-check", 1);
  const std::string fifty(50, 's');
  std::string fifty_runes;
  for (int i = 0; i < 50; ++i) fifty_runes += "\u00e9";  // é: 2 bytes
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, repo, fifty).ok());
  EXPECT_EQ(*driver_->GetRepositoryState(ctx_, repo.Key()), fifty);
  ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, Run("x"), fifty_runes).ok());
  EXPECT_EQ(*driver_->GetPipelineRunState(ctx_, Run("x")), fifty_runes);
  const std::string bad_invalid_utf8 = "run\xff";
  for (const std::string& bad :
       {std::string(), fifty + "s", std::string("a\nb"), bad_invalid_utf8}) {
    absl::Status r = driver_->SetRepositoryState(ctx_, repo, bad);
    EXPECT_TRUE(absl::IsInvalidArgument(r)) << r;
    EXPECT_THAT(std::string(r.message()), HasSubstr("state")) << r;
    absl::Status p = driver_->SetPipelineRunState(ctx_, Run("x"), bad);
    EXPECT_TRUE(absl::IsInvalidArgument(p)) << p;
  }
  EXPECT_EQ(*driver_->GetRepositoryState(ctx_, repo.Key()), fifty);
  EXPECT_EQ(*driver_->GetPipelineRunState(ctx_, Run("x")), fifty_runes);
}

// ---------------------------------------------------------------------------
// Rule 14: cancellation.

TEST_P(DriverConformanceTest, Rule14_DoneContextWritesNothing) {
  Repository repo = Repo("cancel", 1);
  auto [cctx, cancel] = Context::WithCancel(ctx_);
  cancel.Cancel();
  auto r = driver_->AcquireSlot(cctx, repo, Run("a"));
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
  Context expired = Context::WithDeadline(ctx_, absl::Now() - absl::Seconds(1));
  auto e = driver_->AcquireSlot(expired, repo, Run("b"));
  EXPECT_TRUE(absl::IsDeadlineExceeded(e.status())) << e.status();
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
  EXPECT_TRUE(driver_->GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
  EXPECT_TRUE(absl::IsCancelled(
      driver_->ReleaseSlot(cctx, "", Run("a"), repo.Key()).status()));
}

TEST_P(DriverConformanceTest, Rule14_WaitForSlotTimeoutLeavesNothingBehind) {
  ManagerOptions options;
  options.clock = clock_;
  auto manager = Manager::FromDriver(MakeDriver(), nullptr, options);
  Repository repo = Repo("wait", 1);
  auto holder = manager->AcquireSlot(ctx_, repo, Run("holder"));
  ASSERT_TRUE(holder->acquired);
  Context short_ctx = Context::WithTimeout(ctx_, absl::Milliseconds(300));
  std::vector<int64_t> positions;
  auto waited =
      manager->WaitForSlot(short_ctx, repo, Run("waiter"), {},
                           [&](int64_t p) { positions.push_back(p); });
  EXPECT_TRUE(absl::IsDeadlineExceeded(waited.status())) << waited.status();
  ASSERT_FALSE(positions.empty());
  EXPECT_EQ(positions.front(), 1);
  EXPECT_TRUE(
      manager->GetDriver().GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
  EXPECT_EQ(*manager->GetDriver().GetCurrentSlots(ctx_, repo.Key()), 1);

  // A cancelled waiter leaves nothing either, and a released holder wakes
  // the next waiter without polling delays.
  auto [cctx, cancel] = Context::WithCancel(ctx_);
  std::thread canceller([&, c = cancel] {
    absl::SleepFor(absl::Milliseconds(100));
    c.Cancel();
  });
  auto cancelled = manager->WaitForSlot(cctx, repo, Run("waiter2"));
  canceller.join();
  EXPECT_TRUE(absl::IsCancelled(cancelled.status())) << cancelled.status();
  EXPECT_TRUE(
      manager->GetDriver().GetQueuedPipelineRuns(ctx_, repo.Key())->empty());

  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (void)manager->ReleaseSlot(ctx_, holder->lease.lease_id, "", "");
  });
  auto got = manager->WaitForSlot(
      Context::WithTimeout(ctx_, factory().patience), repo, Run("waiter3"));
  releaser.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->pipeline_run_key, Run("waiter3"));
  EXPECT_TRUE(manager->Close().ok());
}

// ---------------------------------------------------------------------------
// Rule 15: bad input.

TEST_P(DriverConformanceTest, Rule15_BadKeysAreRejectedAndNothingWritten) {
  Repository repo = Repo("input", 1);
  const std::vector<std::string> bad_runs = {
      "",
      "no-slash",
      "/name",
      "ns/",
      "ns/a/b",
      "Upper/name",
      "ns/Name",
      "ns/na_me",
      "ns/../etc",
      "ns/a..b",
      std::string("ns/a\0b", 6),
      "-ns/name",
      "ns/name-",
      std::string(64, 'a') + "/name",
      "ns/" + std::string(254, 'a'),
  };
  for (const std::string& run : bad_runs) {
    auto r = driver_->AcquireSlot(ctx_, repo, run);
    ASSERT_FALSE(r.ok()) << "accepted run key '" << run << "'";
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("pipeline_run"));
  }
  Repository bad_repo{"Bad_NS", "repo", 1};
  auto r = driver_->AcquireSlot(ctx_, bad_repo, Run("a"));
  EXPECT_TRUE(absl::IsInvalidArgument(r.status()));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("repository"));
  Repository negative = Repo("input", -1);
  auto n = driver_->AcquireSlot(ctx_, negative, Run("a"));
  EXPECT_TRUE(absl::IsInvalidArgument(n.status()));
  EXPECT_THAT(std::string(n.status().message()),
              HasSubstr("concurrency_limit"));
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->SetRepositoryLimit(ctx_, negative).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->ReleaseSlot(ctx_, "", "bad", repo.Key()).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(driver_->GetCurrentSlots(ctx_, "nope").status()));
  // Nothing was written: the repository is empty, and a good run still gets
  // the single slot.
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
  EXPECT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("good"))->acquired);
}

// ---------------------------------------------------------------------------
// Rule 16: failures give typed errors.

TEST_P(DriverConformanceTest, Rule16_ClosedDriverGivesTypedError) {
  auto d = MakeDriver();
  ASSERT_TRUE(d->Close().ok());
  ASSERT_TRUE(d->Close().ok());  // idempotent
  auto r = d->AcquireSlot(ctx_, Repo("closed", 1), Run("a"));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(r.status()) ||
              absl::IsUnavailable(r.status()))
      << r.status();
  auto l = d->ListRepositories(ctx_, "");
  EXPECT_TRUE(absl::IsFailedPrecondition(l.status()) ||
              absl::IsUnavailable(l.status()))
      << l.status();
}

}  // namespace
}  // namespace pac::concurrency::conformance
