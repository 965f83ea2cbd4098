// The etcd driver's light steps on the mock store: a release with nobody
// queued, which writes only its slot, and a grant under a small limit,
// which puts only its seat (etcd_driver.h), against guarded steps planned
// on views they leave behind, lost answers and the watch.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_rpc.pb.h"
#include "src/etcd/etcd_test_util.h"
#include "src/etcd/mock_etcd.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency {
namespace {

using testing_etcd::MockDriverOver;
using testing_etcd::WritesASlot;

class LightReleases final : public internal::ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<internal::etcdpb::TxnResponse> Txn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    std::function<void()> hook;
    {
      std::lock_guard<std::mutex> lock(mu);
      txns.push_back(req);
      for (const auto& op : req.success()) {
        if (op.has_request_put() &&
            absl::StrContains(op.request_put().key(), "/queue/")) {
          hook = std::exchange(before_enqueue, nullptr);
        }
      }
    }
    if (counting) ++requests;
    if (hook) hook();
    if (WritesASlot(req, /*put=*/false) && lose_next_release.exchange(false)) {
      if (before_loss) before_loss();
      return absl::UnavailableError("injected: never sent");
    }
    return inner_->Txn(ctx, req);
  }
  absl::StatusOr<internal::etcdpb::RangeResponse> Range(
      const Context& ctx, const internal::etcdpb::RangeRequest& req) override {
    if (counting) ++requests;
    return inner_->Range(ctx, req);
  }
  internal::etcdpb::TxnRequest Last() {
    std::lock_guard<std::mutex> lock(mu);
    return txns.back();
  }
  size_t Sent() {
    std::lock_guard<std::mutex> lock(mu);
    return txns.size();
  }
  std::mutex mu;
  std::vector<internal::etcdpb::TxnRequest> txns;
  std::function<void()> before_enqueue;
  // The next Txn that deletes a slot is not sent: before_loss runs, and
  // the caller gets Unavailable (an outcome it cannot know).
  std::atomic<bool> lose_next_release{false};
  std::function<void()> before_loss;
  std::atomic<bool> counting{false};
  std::atomic<int> requests{0};
};

class LightRelease : public ::testing::Test {
 protected:
  void SetUp() override {
    mock = std::make_shared<internal::MockEtcd>(&clock);
    kv = std::make_shared<LightReleases>(mock);
    a = MockDriverOver(mock, &clock);
    b = MockDriverOver(kv, &clock);
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
  }
  void TearDown() override {
    if (a != nullptr) EXPECT_TRUE(a->Close().ok());
    if (b != nullptr) EXPECT_TRUE(b->Close().ok());
  }
  // The mod revision of a repository's `meta` key (0: none).
  int64_t MetaMod(const Repository& repo) {
    internal::etcdpb::RangeRequest r;
    r.set_key(absl::StrCat("/pac-concurrency/repo/", repo.Key(), "/meta"));
    auto got = mock->Range(ctx, r);
    EXPECT_TRUE(got.ok());
    return got.ok() && got->kvs_size() > 0 ? got->kvs(0).mod_revision() : 0;
  }
  ManualClock clock;
  std::shared_ptr<internal::MockEtcd> mock;
  std::shared_ptr<LightReleases> kv;
  std::unique_ptr<Driver> a, b;  // b's requests go through kv
  Context ctx;
};

// With nobody queued, a release deletes its slot and writes nothing else
// (no `meta`): one key write fewer per acquire+release pair. With a queue,
// it still rewrites `meta` and admits the head in the same Txn.
TEST_F(LightRelease, AReleaseWithNobodyQueuedWritesOnlyItsSlot) {
  Repository repo{"light", "repo", 2};
  auto x = b->AcquireSlot(ctx, repo, "light/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  const int64_t meta = MetaMod(repo);
  ASSERT_GT(meta, 0);
  auto r = b->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(r.ok() && r->released) << r.status();
  const internal::etcdpb::TxnRequest t = kv->Last();
  ASSERT_EQ(t.success_size(), 1);
  EXPECT_EQ(t.success(0).request_delete_range().key(),
            "/pac-concurrency/repo/light/repo/slot/0");
  EXPECT_EQ(MetaMod(repo), meta);
  EXPECT_EQ(*b->GetCurrentSlots(ctx, repo.Key()), 0);
  // The driver's view after it stays right: the next pair works as well,
  // and its grant (nobody queued, a small limit) writes only its seat.
  auto y = b->AcquireSlot(ctx, repo, "light/y");
  ASSERT_TRUE(y.ok() && y->acquired);
  const internal::etcdpb::TxnRequest g = kv->Last();
  ASSERT_EQ(g.success_size(), 1);
  EXPECT_EQ(g.success(0).request_put().key(),
            "/pac-concurrency/repo/light/repo/slot/0");
  EXPECT_EQ(MetaMod(repo), meta);
  EXPECT_TRUE(b->ReleaseSlot(ctx, y->lease.lease_id, "", "")->released);

  Repository one{"light", "one", 1};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto h = b->AcquireSlot(ctx, one, "light/h", opts);
  auto w = b->AcquireSlot(ctx, one, "light/w", opts);
  ASSERT_TRUE(h.ok() && h->acquired && w.ok() && !w->acquired);
  const int64_t before = MetaMod(one);
  auto rh = b->ReleaseSlot(ctx, h->lease.lease_id, "", "");
  ASSERT_TRUE(rh.ok() && rh->released);
  ASSERT_EQ(rh->admitted.size(), 1u);
  EXPECT_EQ(rh->admitted[0].pipeline_run_key, "light/w");
  EXPECT_GT(MetaMod(one), before);
}

// A grant that loses its compare to another driver's grant answers "no
// slot free" from the repository its failed Txn returned: that view is as
// fresh as a read, so no Confirm follows. (With one, under contention the
// Confirm rarely held and the caller went round again.)
TEST_F(LightRelease, ALostGrantAnswersFromItsFailureBranch) {
  Repository repo{"light", "lost", 1};
  auto x = b->AcquireSlot(ctx, repo, "light/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  // b's view: the slot free. b has no watch (nobody queued): it does not
  // hear a's grant.
  ASSERT_TRUE(b->ReleaseSlot(ctx, x->lease.lease_id, "", "")->released);
  auto y = a->AcquireSlot(ctx, repo, "light/y");
  ASSERT_TRUE(y.ok() && y->acquired);
  const size_t before = kv->Sent();
  AcquireOptions no_queue;
  no_queue.enqueue = false;
  auto z = b->AcquireSlot(ctx, repo, "light/z", no_queue);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_FALSE(z->acquired);
  std::lock_guard<std::mutex> lock(kv->mu);
  EXPECT_EQ(kv->txns.size() - before, 1u)
      << "more than the lost grant was sent";
}

// A light release that never reached etcd, failing with Unavailable after
// its slot expired, does not pass for committed: the slot is gone and
// `meta` unchanged, as after its own commit, but the slot's lease is gone
// too, so an expiry deleted it. The release says it released nothing.
TEST_F(LightRelease, AReleaseThatNeverCommittedIsNotProvedByAnExpiry) {
  Repository repo{"light", "expired", 2};
  auto x = b->AcquireSlot(ctx, repo, "light/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  const int64_t meta = MetaMod(repo);
  kv->before_loss = [&] { clock.Advance(absl::Seconds(61)); };
  kv->lose_next_release = true;
  auto r = b->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_FALSE(kv->lose_next_release.load()) << "no release was sent";
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->released) << "an expiry was taken for the release";
  EXPECT_EQ(MetaMod(repo), meta);
  EXPECT_EQ(*b->GetCurrentSlots(ctx, repo.Key()), 0);
}

// A run that another driver planned to queue, from a view that had every
// slot taken, is not queued when a light release freed a slot in the
// meantime (the release left `meta` alone): the enqueue's compare on the
// slots it counted fails, and the run gets the slot. Queued, it would wait
// for nobody: the release saw no queue to admit from.
TEST_F(LightRelease, AnEnqueuePlannedBeforeALightReleaseTakesTheSlot) {
  Repository repo{"light", "race", 1};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto x = a->AcquireSlot(ctx, repo, "light/x", opts);
  ASSERT_TRUE(x.ok() && x->acquired);
  const int64_t meta = MetaMod(repo);
  bool released = false;
  int64_t meta_after = 0;
  kv->before_enqueue = [&] {
    auto r = a->ReleaseSlot(ctx, x->lease.lease_id, "", "");
    released = r.ok() && r->released;
    meta_after = MetaMod(repo);
  };
  auto y = b->AcquireSlot(ctx, repo, "light/y", opts);
  ASSERT_TRUE(released) << "b never planned to queue";
  EXPECT_EQ(meta_after, meta) << "the release was not a light one";
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_TRUE(y->acquired) << "queued at " << y->position
                           << " behind a free slot";
  EXPECT_TRUE(b->GetQueuedPipelineRuns(ctx, repo.Key())->empty());
  auto running = b->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].pipeline_run_key, "light/y");
}

// A light release is a slot deleted without a `meta` write, as an expiry
// is; a watching driver whose view (kept current by its watch) shows no
// queue runs no promotion step for it: no request at all.
TEST_F(LightRelease, AWatchingDriverSpendsNoRequestOnALightRelease) {
  Repository repo{"light", "watched", 2};
  conformance::EventLog heard;
  auto w = b->WatchSlotAvailability(ctx, repo.Key(), heard.Callback());
  ASSERT_TRUE(w.ok()) << w.status();
  auto x = b->AcquireSlot(ctx, repo, "light/x");  // b caches a view
  auto y = a->AcquireSlot(ctx, repo, "light/y");
  ASSERT_TRUE(x.ok() && x->acquired && y.ok() && y->acquired);
  mock->DrainDeliveriesForTest();  // b's view has y
  kv->counting = true;
  const int64_t meta = MetaMod(repo);
  ASSERT_TRUE(a->ReleaseSlot(ctx, y->lease.lease_id, "", "")->released);
  EXPECT_EQ(MetaMod(repo), meta);
  ASSERT_TRUE(heard.Await(WatchEventType::kReleased, "light/y"));
  // A promotion step would follow the event at once (a Confirm Txn).
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(kv->requests.load(), 0);
  (*w)->Stop();
}

// b's view left by its light release misses a's light grants (they write
// no `meta`), and b then takes a guarded step (it raises the limit). Its
// Txn compares every seat below the old limit: it must not put its run
// into a seat it thinks free and a's grant took, which would end that
// grant unseen (and, without the limit change, admit over the limit).
TEST_F(LightRelease, AGuardedStepOnAStaleViewFillsNoSeatALightGrantTook) {
  Repository repo{"light", "stale", 2};
  auto x = b->AcquireSlot(ctx, repo, "light/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  ASSERT_TRUE(b->ReleaseSlot(ctx, x->lease.lease_id, "", "")->released);
  const int64_t meta = MetaMod(repo);
  auto y = a->AcquireSlot(ctx, repo, "light/y");
  auto z = a->AcquireSlot(ctx, repo, "light/z");
  ASSERT_TRUE(y.ok() && y->acquired && z.ok() && z->acquired);
  ASSERT_EQ(MetaMod(repo), meta) << "a's grants were not light";
  Repository wider{"light", "stale", 3};
  auto w = b->AcquireSlot(ctx, wider, "light/w");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->acquired);
  auto running = a->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  std::set<std::string> runs;
  for (const Lease& l : *running) runs.insert(l.pipeline_run_key);
  EXPECT_EQ(runs, (std::set<std::string>{"light/w", "light/y", "light/z"}));
  EXPECT_TRUE(a->RenewLease(ctx, y->lease.lease_id).ok());
  EXPECT_TRUE(a->RenewLease(ctx, z->lease.lease_id).ok());
  // And at the old limit, from a view as stale: no slot for a fourth run.
  ASSERT_TRUE(b->ReleaseSlot(ctx, w->lease.lease_id, "", "")->released);
  auto v = a->AcquireSlot(ctx, wider, "light/v");
  ASSERT_TRUE(v.ok() && v->acquired);
  AcquireOptions no_queue;
  no_queue.enqueue = false;
  auto u = b->AcquireSlot(ctx, wider, "light/u", no_queue);
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_FALSE(u->acquired);
  EXPECT_EQ(*a->GetCurrentSlots(ctx, repo.Key()), 3);
}

// Rule 2 across drivers: b, whose view misses a's light grant of a run,
// acquires the same run. Its light grant loses the seat compares, and the
// repository it gets back shows the run held: b answers with a's lease,
// not a second slot.
TEST_F(LightRelease, ARunGrantedUnseenIsNotGrantedASecondSlot) {
  Repository repo{"light", "twice", 3};
  auto x = b->AcquireSlot(ctx, repo, "light/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  ASSERT_TRUE(b->ReleaseSlot(ctx, x->lease.lease_id, "", "")->released);
  auto y = a->AcquireSlot(ctx, repo, "light/y");
  ASSERT_TRUE(y.ok() && y->acquired);
  auto again = b->AcquireSlot(ctx, repo, "light/y");
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE(again->acquired);
  EXPECT_EQ(again->lease.lease_id, y->lease.lease_id);
  EXPECT_EQ(again->lease.fencing_token, y->lease.fencing_token);
  EXPECT_EQ(*a->GetCurrentSlots(ctx, repo.Key()), 1);
}

// A release that admits the queue head puts the head's slot over the seat
// it frees (one key, no delete). A driver watching that never saw the
// repository hears both: the holder released, by name, and the head
// admitted.
TEST_F(LightRelease, AHandOffIsHeardAsAReleaseAndAnAdmission) {
  Repository repo{"light", "handoff", 1};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto h = a->AcquireSlot(ctx, repo, "light/h", opts);
  auto q = a->AcquireSlot(ctx, repo, "light/q", opts);
  ASSERT_TRUE(h.ok() && h->acquired && q.ok() && !q->acquired);
  conformance::EventLog heard;
  auto w = b->WatchSlotAvailability(ctx, repo.Key(), heard.Callback());
  ASSERT_TRUE(w.ok()) << w.status();
  auto r = a->ReleaseSlot(ctx, h->lease.lease_id, "", "");
  ASSERT_TRUE(r.ok() && r->released && r->admitted.size() == 1u);
  mock->DrainDeliveriesForTest();
  EXPECT_TRUE(heard.Await(WatchEventType::kReleased, "light/h"));
  EXPECT_TRUE(heard.Await(WatchEventType::kAdmitted, "light/q"));
  (*w)->Stop();
}

// A view left by a light release may miss a light grant: the release
// compared only `meta` and its own seat. b's release misses a's release of
// s and grant of y into s's seat (both before the release's revision, so
// b's watch never applies them); its watch then brings q's grant and w's
// entry, and b's view shows every seat taken (by s and q) and a queue.
// There y joins the end of the queue with a Txn that leaves `meta` alone;
// it must compare the seats too (s's seat was put since b's view saw it),
// or y would wait in the queue while it holds a slot.
TEST_F(LightRelease, AJoinOnAViewLeftByALightReleaseQueuesNoRunThatHoldsASlot) {
  Repository repo{"light", "join", 2};
  AcquireOptions at0;
  at0.creation_time = clock.Now();
  conformance::EventLog heard;
  auto watch = b->WatchSlotAvailability(ctx, repo.Key(), heard.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  auto p = b->AcquireSlot(ctx, repo, "light/p", at0);
  auto s = b->AcquireSlot(ctx, repo, "light/s", at0);
  ASSERT_TRUE(p.ok() && p->acquired && s.ok() && s->acquired);
  mock->DrainDeliveriesForTest();
  mock->HoldDeliveriesForTest(true);
  ASSERT_TRUE(a->ReleaseSlot(ctx, "", "light/s", repo.Key())->released);
  auto y = a->AcquireSlot(ctx, repo, "light/y", at0);
  ASSERT_TRUE(y.ok() && y->acquired);
  const int64_t meta = MetaMod(repo);
  ASSERT_TRUE(b->ReleaseSlot(ctx, p->lease.lease_id, "", "")->released);
  ASSERT_EQ(MetaMod(repo), meta) << "b's release was not a light one";
  mock->HoldDeliveriesForTest(false);
  auto q = a->AcquireSlot(ctx, repo, "light/q", at0);
  clock.Advance(absl::Seconds(1));
  AcquireOptions at1;
  at1.creation_time = clock.Now();
  auto w = a->AcquireSlot(ctx, repo, "light/w", at1);
  ASSERT_TRUE(q.ok() && q->acquired && w.ok() && !w->acquired);
  mock->DrainDeliveriesForTest();
  ASSERT_TRUE(heard.Await(WatchEventType::kAdmitted, "light/q"));

  clock.Advance(absl::Seconds(1));
  AcquireOptions at2;
  at2.creation_time = clock.Now();
  const size_t before = kv->Sent();
  auto again = b->AcquireSlot(ctx, repo, "light/y", at2);
  {
    // b took the join's path: its first Txn puts a queue entry, not `meta`.
    std::lock_guard<std::mutex> lock(kv->mu);
    ASSERT_GT(kv->txns.size(), before);
    const internal::etcdpb::TxnRequest& join = kv->txns[before];
    ASSERT_EQ(join.success_size(), 1);
    EXPECT_TRUE(
        absl::StrContains(join.success(0).request_put().key(), "/queue/"));
  }
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->acquired)
      << "queued at " << again->position << " while it holds a slot";
  EXPECT_EQ(again->lease.lease_id, y->lease.lease_id);
  auto queued = a->GetQueuedPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(queued->size(), 1u);
  EXPECT_EQ((*queued)[0].pipeline_run_key, "light/w");
  EXPECT_EQ(*a->GetCurrentSlots(ctx, repo.Key()), 2);
  (*watch)->Stop();
}

// Issue 20 (8): two processes release one young grant; b's Txn is lost
// (never sent) after a's committed, so b proves "released" from the slot
// gone and the lease alive, which a's release also explains. Only the
// release that knows it committed may reuse the etcd lease: were both to
// put it in their spare pools, two later grants would share one etcd
// lease, and one holder's renewals would keep the other's slot alive.
TEST_F(LightRelease, ADoubleReleaseDoesNotPutTheLeaseInTwoPools) {
  Repository repo{"double", "repo", 2};
  auto x = a->AcquireSlot(ctx, repo, "double/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  kv->lose_next_release = true;
  kv->before_loss = [&] {
    auto first = a->ReleaseSlot(ctx, x->lease.lease_id, "", "");
    ASSERT_TRUE(first.ok() && first->released);
  };
  auto second = b->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(second.ok()) << second.status();
  auto p = a->AcquireSlot(ctx, repo, "double/p");
  auto q = b->AcquireSlot(ctx, repo, "double/q");
  ASSERT_TRUE(p.ok() && p->acquired);
  ASSERT_TRUE(q.ok() && q->acquired);
  const std::string lp =
      p->lease.lease_id.substr(0, p->lease.lease_id.find('-'));
  const std::string lq =
      q->lease.lease_id.substr(0, q->lease.lease_id.find('-'));
  EXPECT_NE(lp, lq) << "two slots share one etcd lease";
}

}  // namespace
}  // namespace pac::concurrency
