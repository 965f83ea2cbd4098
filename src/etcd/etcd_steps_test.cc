// The etcd driver's steps on the mock store, as two processes sharing one
// etcd would take them: hand-offs and lease ids, joins at the end of the
// queue while the watch lags, releases grouped into one Txn, and Txns
// whose answers are lost. Light releases and grants are in
// etcd_light_test.cc; the real-server cases in etcd_driver_test.cc.
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
#include "absl/strings/str_format.h"
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

// The etcd lease part of a Lease id ("<lease>-<slot revision>:<keys>").
std::string EtcdLeaseOf(const std::string& lease_id) {
  return lease_id.substr(0, lease_id.find('-'));
}

// Two mock-mode drivers on one store and manual clock, as two processes
// sharing one etcd; `mock` is the store (its test hooks hold the watches).
class TwoMockDrivers : public ::testing::Test {
 protected:
  void SetUp() override {
    EtcdConfig c;
    c.mode = "mock";
    c.lease_ttl = absl::Seconds(60);
    DriverOptions o;
    o.clock = &clock;
    auto da = NewEtcdDriver(c, o);
    auto db = NewEtcdDriver(c, o);
    ASSERT_TRUE(da.ok()) << da.status();
    ASSERT_TRUE(db.ok()) << db.status();
    a = *std::move(da);
    b = *std::move(db);
    mock = std::dynamic_pointer_cast<internal::MockEtcd>(
        internal::SharedMockEtcd(&clock));
    ASSERT_TRUE(mock != nullptr);
  }
  ManualClock clock;
  std::unique_ptr<Driver> a, b;
  std::shared_ptr<internal::MockEtcd> mock;
  Context ctx;
};

TEST_F(TwoMockDrivers, AHandOffPassesAYoungLeaseToTheAdmittedRunOnly) {
  Repository repo{"handoff", "repo", 1};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto x = a->AcquireSlot(ctx, repo, "handoff/x", opts);
  ASSERT_TRUE(x.ok() && x->acquired);
  auto h = b->AcquireSlot(ctx, repo, "handoff/h", opts);
  ASSERT_TRUE(h.ok() && !h->acquired);
  // Released while young: the next run's slot rides on the same etcd
  // lease, under a Lease id of its own.
  auto rel = a->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok() && rel->released);
  ASSERT_EQ(rel->admitted.size(), 1u);
  const Lease handed = rel->admitted[0];
  EXPECT_EQ(handed.pipeline_run_key, "handoff/h");
  EXPECT_EQ(EtcdLeaseOf(handed.lease_id), EtcdLeaseOf(x->lease.lease_id));
  EXPECT_NE(handed.lease_id, x->lease.lease_id);
  // The old id names nothing any more, in either process.
  EXPECT_TRUE(IsLeaseLost(a->RenewLease(ctx, x->lease.lease_id).status()));
  auto stale = b->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(stale->released);
  auto running = b->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].lease_id, handed.lease_id);
  // The new id works from the process that did not grant it.
  EXPECT_TRUE(b->RenewLease(ctx, handed.lease_id).ok());
  // An old lease is not passed on: the next run gets a lease of its own.
  auto n = a->AcquireSlot(ctx, repo, "handoff/n", opts);
  ASSERT_TRUE(n.ok() && !n->acquired);
  clock.Advance(absl::Seconds(7));  // past a tenth of the TTL
  auto rel2 = b->ReleaseSlot(ctx, handed.lease_id, "", "");
  ASSERT_TRUE(rel2.ok() && rel2->released);
  ASSERT_EQ(rel2->admitted.size(), 1u);
  EXPECT_EQ(rel2->admitted[0].pipeline_run_key, "handoff/n");
  EXPECT_NE(EtcdLeaseOf(rel2->admitted[0].lease_id),
            EtcdLeaseOf(handed.lease_id));
  EXPECT_TRUE(
      a->ReleaseSlot(ctx, rel2->admitted[0].lease_id, "", "")->released);
}

// A Lease id names its grant: the etcd lease, the slot's revision, the
// repository and the run, so a release or renewal by id alone goes to the
// slot with no index key. An id changed in any part names nothing.
TEST_F(TwoMockDrivers, ALeaseIdNamesItsGrantAndNothingElse) {
  Repository repo{"ids", "repo", 2};
  auto x = a->AcquireSlot(ctx, repo, "ids/x");
  auto y = a->AcquireSlot(ctx, repo, "ids/y");
  ASSERT_TRUE(x.ok() && x->acquired && y.ok() && y->acquired);
  const std::string id = x->lease.lease_id;
  EXPECT_EQ(id.find('/'), std::string::npos) << id;  // fits an HTTP path
  const std::string grant = id.substr(0, id.find(':'));
  EXPECT_EQ(id, grant + ":ids:repo:ids:x");
  // x's grant with y's name, another repository, the old form without
  // keys, a broken key: none is released or renewed, from either driver.
  for (const std::string& forged :
       {grant + ":ids:repo:ids:y", grant + ":ids:other:ids:x", grant,
        grant + ":ids:repo:ids", grant + ":ids:repo:ids:X!"}) {
    auto r = b->ReleaseSlot(ctx, forged, "", "");
    ASSERT_TRUE(r.ok()) << forged << ": " << r.status();
    EXPECT_FALSE(r->released) << forged;
    EXPECT_TRUE(IsLeaseLost(a->RenewLease(ctx, forged).status())) << forged;
  }
  // The right id with another run or repository named beside it.
  EXPECT_FALSE(b->ReleaseSlot(ctx, id, "ids/y", "")->released);
  EXPECT_FALSE(b->ReleaseSlot(ctx, id, "", "ids/other")->released);
  auto slots = a->GetCurrentSlots(ctx, repo.Key());
  ASSERT_TRUE(slots.ok());
  EXPECT_EQ(*slots, 2);
  // No key maps etcd leases to slots.
  internal::etcdpb::RangeRequest all;
  all.set_key("/");
  all.set_range_end(std::string(1, '\0'));
  auto keys = mock->Range(ctx, all);
  ASSERT_TRUE(keys.ok());
  for (const auto& kv : keys->kvs()) {
    EXPECT_EQ(kv.key().find("/lease/"), std::string::npos) << kv.key();
  }
  // The id itself works from the driver that did not grant it.
  EXPECT_TRUE(b->RenewLease(ctx, id).ok());
  auto rel = b->ReleaseSlot(ctx, id, "ids/x", repo.Key());
  ASSERT_TRUE(rel.ok());
  EXPECT_TRUE(rel->released);
  EXPECT_TRUE(IsLeaseLost(a->RenewLease(ctx, id).status()));
  EXPECT_TRUE(a->RenewLease(ctx, y->lease.lease_id).ok());
  // Names with dots and dashes, and long ones, go through the id intact.
  Repository dotted{"team-a", "my.repo-1", 1};
  const std::string long_run = "team-a/" + std::string(60, 'r') + ".x-1";
  auto z = a->AcquireSlot(ctx, dotted, long_run);
  ASSERT_TRUE(z.ok() && z->acquired) << z.status();
  EXPECT_TRUE(b->RenewLease(ctx, z->lease.lease_id).ok());
  auto zr = b->ReleaseSlot(ctx, z->lease.lease_id, "", "");
  ASSERT_TRUE(zr.ok());
  EXPECT_TRUE(zr->released);
  EXPECT_EQ(*a->GetCurrentSlots(ctx, dotted.Key()), 0);
}

// A run joins the end of the queue without touching `meta`, so a driver
// whose view predates it still plans with a passing `meta` compare. Its
// admissions must not skip the unseen run: raising the limit admits both.
TEST_F(TwoMockDrivers, AdmittingPastTheHeadSeesARunJoinedUnseen) {
  Repository repo{"unseen", "repo", 2};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  for (const char* run : {"unseen/a1", "unseen/a2"}) {
    ASSERT_TRUE(a->AcquireSlot(ctx, repo, run, opts)->acquired);
  }
  auto q1 = a->AcquireSlot(ctx, repo, "unseen/q1", opts);
  ASSERT_TRUE(q1.ok() && !q1->acquired);
  // Driver a hears nothing from now on: its cached view stays as it is.
  auto probe = internal::SharedMockEtcd(&clock)->Range(ctx, [] {
    internal::etcdpb::RangeRequest r;
    r.set_key("/");
    r.set_count_only(true);
    return r;
  }());
  ASSERT_TRUE(probe.ok());
  static_cast<internal::EtcdDriver&>(*a).ResumeWatchForTest(
      probe->header().revision() + 1000);
  opts.creation_time = clock.Now() + absl::Seconds(1);
  auto q2 = b->AcquireSlot(ctx, repo, "unseen/q2", opts);
  ASSERT_TRUE(q2.ok() && !q2->acquired);
  EXPECT_EQ(q2->position, 2);
  // Limit 4: two free slots for q1 and the run a has not seen.
  repo.concurrency_limit = 4;
  auto admitted = a->SetRepositoryLimit(ctx, repo);
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  std::vector<std::string> runs;
  for (const Lease& l : *admitted) runs.push_back(l.pipeline_run_key);
  EXPECT_THAT(runs, ::testing::UnorderedElementsAre("unseen/q1", "unseen/q2"));
  auto queued = b->GetQueuedPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(queued.ok());
  EXPECT_TRUE(queued->empty());
}

// While a's watch lags (held), another process joins the end of the queue,
// and a's release admits the head it knows. a's cached views must not lose
// the run that joined: re-submitting it finds it queued, writing nothing.
TEST_F(TwoMockDrivers, ARunJoinedWhileTheWatchLagsIsNotQueuedTwice) {
  Repository repo{"gap", "repo", 1};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto x = a->AcquireSlot(ctx, repo, "gap/x", opts);
  ASSERT_TRUE(x.ok() && x->acquired);
  opts.creation_time = clock.Now() + absl::Microseconds(1);
  auto q2 = a->AcquireSlot(ctx, repo, "gap/q2", opts);
  ASSERT_TRUE(q2.ok() && !q2->acquired);
  mock->DrainDeliveriesForTest();  // a's watch has caught up
  mock->HoldDeliveriesForTest(true);
  AcquireOptions q3_opts;
  q3_opts.creation_time = clock.Now() + absl::Microseconds(2);
  auto q3 = b->AcquireSlot(ctx, repo, "gap/q3", q3_opts);
  ASSERT_TRUE(q3.ok() && !q3->acquired);
  EXPECT_EQ(q3->position, 2);
  auto q3_key = [&] {
    internal::etcdpb::RangeRequest r;
    r.set_key("/pac-concurrency/repo/gap/repo/queue/");
    r.set_range_end(internal::PrefixEnd(r.key()));
    auto got = mock->Range(ctx, r);
    EXPECT_TRUE(got.ok());
    for (const auto& kv : got->kvs()) {
      if (absl::EndsWith(kv.key(), "/gap/q3")) return kv;
    }
    return internal::etcdpb::KeyValue();
  };
  const int64_t q3_mod = q3_key().mod_revision();
  ASSERT_GT(q3_mod, 0);
  // a has not heard of q3; its release admits q2.
  auto rel = a->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok() && rel->released);
  ASSERT_EQ(rel->admitted.size(), 1u);
  EXPECT_EQ(rel->admitted[0].pipeline_run_key, "gap/q2");
  mock->HoldDeliveriesForTest(false);
  mock->DrainDeliveriesForTest();
  // a knows of q3 now: it answers, writing nothing.
  auto again = a->AcquireSlot(ctx, repo, "gap/q3", q3_opts);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->acquired);
  EXPECT_EQ(again->position, 1);
  EXPECT_EQ(q3_key().mod_revision(), q3_mod);
}

// While a's watch lags, a run joins the end of the queue and a's first
// release admits the head a knows. a's second release must admit the run
// that joined, not leave its slot free.
TEST_F(TwoMockDrivers, AReleaseAdmitsARunJoinedWhileTheWatchLags) {
  Repository repo{"gap2", "repo", 2};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto x1 = a->AcquireSlot(ctx, repo, "gap2/x1", opts);
  auto x2 = a->AcquireSlot(ctx, repo, "gap2/x2", opts);
  ASSERT_TRUE(x1.ok() && x1->acquired && x2.ok() && x2->acquired);
  opts.creation_time = clock.Now() + absl::Microseconds(1);
  auto q2 = a->AcquireSlot(ctx, repo, "gap2/q2", opts);
  ASSERT_TRUE(q2.ok() && !q2->acquired);
  mock->DrainDeliveriesForTest();
  mock->HoldDeliveriesForTest(true);  // a hears nothing until the end
  opts.creation_time = clock.Now() + absl::Microseconds(2);
  auto q3 = b->AcquireSlot(ctx, repo, "gap2/q3", opts);
  ASSERT_TRUE(q3.ok() && !q3->acquired);
  auto r1 = a->ReleaseSlot(ctx, x1->lease.lease_id, "", "");
  ASSERT_TRUE(r1.ok() && r1->released);
  ASSERT_EQ(r1->admitted.size(), 1u);
  EXPECT_EQ(r1->admitted[0].pipeline_run_key, "gap2/q2");
  // Still unheard of by a's watch: q3.
  auto r2 = a->ReleaseSlot(ctx, x2->lease.lease_id, "", "");
  ASSERT_TRUE(r2.ok() && r2->released);
  ASSERT_EQ(r2->admitted.size(), 1u);
  EXPECT_EQ(r2->admitted[0].pipeline_run_key, "gap2/q3");
  mock->HoldDeliveriesForTest(false);
}

// How many slots a Txn frees: each slot key it deletes, and, for a release
// that admits the queue head into the seat it frees (a put over the held
// seat, no delete), each queue entry it deletes beside a slot put. (A
// promotion into a free seat looks the same; these tests make none.)
int SlotsFreed(const internal::etcdpb::TxnRequest& req) {
  int deleted = 0, dequeued = 0;
  bool puts_slot = false;
  for (const auto& op : req.success()) {
    if (op.has_request_delete_range()) {
      const std::string& key = op.request_delete_range().key();
      if (absl::StrContains(key, "/slot/")) ++deleted;
      if (absl::StrContains(key, "/queue/")) ++dequeued;
    }
    if (op.has_request_put() &&
        absl::StrContains(op.request_put().key(), "/slot/")) {
      puts_slot = true;
    }
  }
  return deleted + (puts_slot ? dequeued : 0);
}

// Delays each Txn, so that releases of one repository pile up behind the
// one in flight; counts the Txns that free slots (and those of them sent
// as admitting queued runs), and can fail the first Txn that deletes more
// than one.
class SlowReleases final : public internal::ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<internal::etcdpb::TxnResponse> Txn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    const int slots = SlotsFreed(req);
    if (slots > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      ++release_txns;
      if (admitting) ++admitting_txns;
      if (slots > 1 && fail_first_group.exchange(false)) {
        return absl::PermissionDeniedError("injected: group refused");
      }
    }
    return inner_->Txn(ctx, req);
  }
  absl::StatusOr<internal::etcdpb::TxnResponse> AdmittingTxn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    admitting = true;
    auto r = Txn(ctx, req);
    admitting = false;
    return r;
  }
  std::atomic<int> release_txns{0}, admitting_txns{0};
  static thread_local bool admitting;
  std::atomic<bool> fail_first_group{false};
};
thread_local bool SlowReleases::admitting = false;

class GroupedReleases : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    slow = std::make_shared<SlowReleases>(
        std::make_shared<internal::MockEtcd>(&clock));
    driver = MockDriverOver(slow, &clock);
    ASSERT_NE(driver, nullptr);
  }
  ManualClock clock;
  std::shared_ptr<SlowReleases> slow;
  std::unique_ptr<Driver> driver;
  Context ctx;
};

// Eight holders release at once while eight runs wait: the releases that
// queue up behind one in flight go in one Txn, and every caller is answered
// for its own slot. Each queued run is admitted exactly once, told to one
// release. With the first group's Txn refused (GetParam()), its owner gets
// the error and the releases it took are handed back and done alone.
TEST_P(GroupedReleases, ReleasesWaitingForATurnShareATxn) {
  constexpr int kN = 8;
  Repository repo{"group", "repo", kN};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  std::vector<std::string> holders;
  for (int i = 0; i < kN; ++i) {
    auto a = driver->AcquireSlot(ctx, repo, absl::StrCat("group/h", i), opts);
    ASSERT_TRUE(a.ok() && a->acquired);
    holders.push_back(a->lease.lease_id);
  }
  for (int i = 0; i < kN; ++i) {
    auto a = driver->AcquireSlot(ctx, repo, absl::StrCat("group/q", i), opts);
    ASSERT_TRUE(a.ok() && !a->acquired);
  }
  slow->fail_first_group = GetParam();
  slow->release_txns = 0;
  std::vector<absl::StatusOr<ReleaseResult>> results(
      kN, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = driver->ReleaseSlot(ctx, holders[i], "", ""); });
  }
  for (auto& t : threads) t.join();
  int released = 0, refused = 0;
  std::multiset<std::string> admitted;
  for (const auto& r : results) {
    if (!r.ok()) {
      EXPECT_TRUE(absl::IsPermissionDenied(r.status())) << r.status();
      ++refused;
      continue;
    }
    released += r->released;
    for (const Lease& l : r->admitted) admitted.insert(l.pipeline_run_key);
  }
  EXPECT_EQ(refused, GetParam() ? 1 : 0);
  EXPECT_EQ(released, kN - refused);
  EXPECT_LT(slow->release_txns.load(), kN);  // some shared a Txn
  // Each release Txn admits queued runs, so none waits for a request.
  EXPECT_EQ(slow->admitting_txns.load(), slow->release_txns.load());
  auto running = driver->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  std::set<std::string> now_running;
  for (const Lease& l : *running) now_running.insert(l.pipeline_run_key);
  // The refused release's holder still runs, and one run still waits.
  EXPECT_EQ(static_cast<int>(running->size()), kN);
  EXPECT_EQ(static_cast<int>(admitted.size()), kN - refused);
  for (const std::string& q : admitted) {
    EXPECT_EQ(admitted.count(q), 1u) << q << " told to one release only";
    EXPECT_EQ(now_running.count(q), 1u) << q;
  }
  auto queued = driver->GetQueuedPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(static_cast<int>(queued->size()), refused);
}

INSTANTIATE_TEST_SUITE_P(Etcd, GroupedReleases, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "FirstGroupRefused"
                                             : "AllCommit";
                         });

// Loses the answer of the next Txn that releases a slot (and grants one,
// when `need_grant`: a release that admits a queued run), after it
// committed: either the client sends it again, as the gRPC client does
// after a broken connection (the second send loses its compare to the
// first), or the call fails with Unavailable.
class LostAnswers final : public internal::ForwardingEtcdKV {
 public:
  enum class Mode { kResent, kUnavailable };
  LostAnswers(std::shared_ptr<internal::EtcdKV> inner, Mode mode)
      : ForwardingEtcdKV(std::move(inner)), mode_(mode) {}
  absl::StatusOr<internal::etcdpb::TxnResponse> Txn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    if (SlotsFreed(req) == 0 ||
        (need_grant && !WritesASlot(req, /*put=*/true)) ||
        !armed.exchange(false)) {
      return inner_->Txn(ctx, req);
    }
    auto first = inner_->Txn(ctx, req);
    EXPECT_TRUE(first.ok() && first->succeeded());
    lost = true;
    if (mode_ == Mode::kUnavailable) {
      return absl::UnavailableError("injected: connection reset");
    }
    return inner_->Txn(ctx, req);
  }
  std::atomic<bool> armed{false}, lost{false}, need_grant{true};

 private:
  const Mode mode_;
};

class LostAnswer : public ::testing::TestWithParam<LostAnswers::Mode> {
 protected:
  void SetUp() override {
    kv = std::make_shared<LostAnswers>(
        std::make_shared<internal::MockEtcd>(&clock), GetParam());
    d = MockDriverOver(kv, &clock);
    ASSERT_NE(d, nullptr);
  }
  void TearDown() override {
    if (d != nullptr) EXPECT_TRUE(d->Close().ok());
  }
  ManualClock clock;
  std::shared_ptr<LostAnswers> kv;
  std::unique_ptr<Driver> d;
  Context ctx;
};

// The run a release admitted is reported by that release, even when the
// release's answer was lost after it committed; nothing is admitted twice.
TEST_P(LostAnswer, AReleaseWhoseAnswerWasLostReportsWhatItAdmitted) {
  Repository repo{"lost", "repo", 1};
  AcquireOptions opts;
  opts.creation_time = clock.Now();
  auto a = d->AcquireSlot(ctx, repo, "lost/a", opts);
  ASSERT_TRUE(a.ok() && a->acquired);
  auto b = d->AcquireSlot(ctx, repo, "lost/b", opts);
  ASSERT_TRUE(b.ok() && !b->acquired);
  kv->armed = true;
  auto r = d->ReleaseSlot(ctx, a->lease.lease_id, "", "");
  ASSERT_TRUE(kv->lost.load()) << "the release admitted nobody";
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->released);
  ASSERT_EQ(r->admitted.size(), 1u);
  EXPECT_EQ(r->admitted[0].pipeline_run_key, "lost/b");
  auto running = d->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ((*running)[0].pipeline_run_key, "lost/b");
  EXPECT_EQ((*running)[0].fencing_token, r->admitted[0].fencing_token);
  EXPECT_TRUE(d->GetQueuedPipelineRuns(ctx, repo.Key())->empty());
  // The lease it reported is the slot's: renewing and releasing by it work.
  EXPECT_TRUE(d->RenewLease(ctx, r->admitted[0].lease_id).ok());
  auto rb = d->ReleaseSlot(ctx, r->admitted[0].lease_id, "", "");
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_TRUE(rb->released);
  EXPECT_EQ(*d->GetCurrentSlots(ctx, repo.Key()), 0);
}

// A release that admits nobody, whose answer was lost, still says that it
// released. With nobody queued it is a light release, which writes no
// commit id: its slot gone while `meta` stayed and its lease lives proves
// it (LightCommitted).
TEST_P(LostAnswer, AReleaseThatAdmitsNobodySaysItReleased) {
  kv->need_grant = false;
  Repository repo{"lost", "alone", 2};
  auto a = d->AcquireSlot(ctx, repo, "lost/a");
  ASSERT_TRUE(a.ok() && a->acquired);
  kv->armed = true;
  auto r = d->ReleaseSlot(ctx, a->lease.lease_id, "", "");
  ASSERT_TRUE(kv->lost.load()) << "the release was not sent";
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->released);
  EXPECT_TRUE(r->admitted.empty());
  EXPECT_EQ(*d->GetCurrentSlots(ctx, repo.Key()), 0);
  // Released once: a second release finds nothing.
  EXPECT_FALSE(d->ReleaseSlot(ctx, a->lease.lease_id, "", "")->released);
}

INSTANTIATE_TEST_SUITE_P(Etcd, LostAnswer,
                         ::testing::Values(LostAnswers::Mode::kResent,
                                           LostAnswers::Mode::kUnavailable),
                         [](const auto& info) {
                           return info.param == LostAnswers::Mode::kResent
                                      ? "SentAgain"
                                      : "Unavailable";
                         });

// Records the Txns sent through it, counts every request after `counting`
// is set, and runs `before_enqueue` once, before the first Txn that puts a
// queue key is sent.

// Puts a queue entry for `run` into `repo` directly, as a second join of
// the run by another process (at another creation time) leaves it.
void InjectQueueEntry(internal::MockEtcd& mock, const Repository& repo,
                      const std::string& run, absl::Time created) {
  internal::etcdpb::PutRequest put;
  put.set_key(absl::StrCat(
      "/pac-concurrency/repo/", repo.Key(), "/queue/",
      absl::StrFormat("%020d", absl::ToUnixMicros(created)), "/", run));
  put.set_value(absl::StrCat(absl::ToUnixMicros(created)));
  ASSERT_TRUE(mock.Put(Context(), put).ok());
}

// Issue 20 (3): a run that holds a slot and has a stale queue entry (a
// second join) is released; the entry must go with it, not come back as a
// live entry that admits a finished run. Before: `w` was queued behind the
// released `r`, whose entry was admitted.
TEST_F(TwoMockDrivers, AReleasedRunsSecondQueueEntryDoesNotComeBack) {
  Repository repo{"stale", "repo", 1};
  auto r = a->AcquireSlot(ctx, repo, "stale/r");
  ASSERT_TRUE(r.ok() && r->acquired);
  InjectQueueEntry(*mock, repo, "stale/r", clock.Now() + absl::Seconds(1));
  // Holding a slot, it is not shown as queued.
  EXPECT_TRUE(a->GetQueuedPipelineRuns(ctx, repo.Key())->empty());
  auto rel = a->ReleaseSlot(ctx, "", "stale/r", repo.Key());
  ASSERT_TRUE(rel.ok() && rel->released);
  EXPECT_TRUE(rel->admitted.empty());
  EXPECT_TRUE(a->GetQueuedPipelineRuns(ctx, repo.Key())->empty());
  auto w = b->AcquireSlot(ctx, repo, "stale/w");
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->acquired);
  EXPECT_TRUE(w->admitted.empty());
}

// Issue 20 (3): with both of a run's entries present, adopting it grants
// it once, and releasing it leaves neither entry.
TEST_F(TwoMockDrivers, ARunQueuedTwiceIsAdoptedOnceAndLeavesNoEntry) {
  Repository repo{"twice", "repo", 1};
  ASSERT_TRUE(a->AcquireSlot(ctx, repo, "twice/x")->acquired);
  auto q = a->AcquireSlot(ctx, repo, "twice/r");
  ASSERT_TRUE(q.ok() && !q->acquired);
  InjectQueueEntry(*mock, repo, "twice/r", clock.Now() + absl::Seconds(5));
  auto queued = b->GetQueuedPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->size(), 1u);  // one run, one place
  AcquireOptions adopt;
  adopt.adopt_running = true;
  auto r = b->AcquireSlot(ctx, repo, "twice/r", adopt);
  ASSERT_TRUE(r.ok() && r->acquired);
  auto running = a->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(running->size(), 2u);  // x and r, r once
  ASSERT_TRUE(b->ReleaseSlot(ctx, r->lease.lease_id, "", "")->released);
  ASSERT_TRUE(a->ReleaseSlot(ctx, "", "twice/x", repo.Key())->released);
  EXPECT_TRUE(a->GetQueuedPipelineRuns(ctx, repo.Key())->empty());
  EXPECT_EQ(*a->GetCurrentSlots(ctx, repo.Key()), 0);
}

// Issue 20 (4): a stale entry (of a run that holds a slot) does not make
// a new caller wait beside a free slot. Before: `w` was queued at
// position 1 with one of two slots free, and nothing promoted it.
TEST_F(TwoMockDrivers, AStaleEntryDoesNotQueueANewCallerBesideAFreeSlot) {
  Repository repo{"beside", "repo", 2};
  ASSERT_TRUE(a->AcquireSlot(ctx, repo, "beside/r")->acquired);
  InjectQueueEntry(*mock, repo, "beside/r", clock.Now() + absl::Seconds(1));
  auto w = b->AcquireSlot(ctx, repo, "beside/w");
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->acquired);
  EXPECT_EQ(*a->GetCurrentSlots(ctx, repo.Key()), 2);
}

// Issue 20 (2): two processes adopting runs into a full repository (light
// grants, nobody queued) each take a seat at or above the limit; neither
// may overwrite the other's. Before: both took seat 1 and the second
// overwrote the first, whose renewals then failed.
TEST_F(TwoMockDrivers, TwoAdoptionsIntoAFullRepositoryKeepBothSlots) {
  Repository repo{"adopt", "repo", 1};
  ASSERT_TRUE(a->AcquireSlot(ctx, repo, "adopt/x")->acquired);
  // b caches a view of the full repository (no queue: no watch keeps it).
  ASSERT_TRUE(b->AcquireSlot(ctx, repo, "adopt/x")->acquired);
  AcquireOptions adopt;
  adopt.adopt_running = true;
  auto r1 = a->AcquireSlot(ctx, repo, "adopt/r1", adopt);
  ASSERT_TRUE(r1.ok() && r1->acquired);
  auto r2 = b->AcquireSlot(ctx, repo, "adopt/r2", adopt);
  ASSERT_TRUE(r2.ok() && r2->acquired);
  auto running = a->GetRunningPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(running.ok());
  EXPECT_EQ(running->size(), 3u);
  EXPECT_TRUE(a->RenewLease(ctx, r1->lease.lease_id).ok());
  EXPECT_TRUE(b->RenewLease(ctx, r2->lease.lease_id).ok());
  // Adopting one run from both processes gives both the one grant.
  auto s1 = a->AcquireSlot(ctx, repo, "adopt/s", adopt);
  auto s2 = b->AcquireSlot(ctx, repo, "adopt/s", adopt);
  ASSERT_TRUE(s1.ok() && s1->acquired);
  ASSERT_TRUE(s2.ok() && s2->acquired);
  EXPECT_EQ(s1->lease.lease_id, s2->lease.lease_id);
  EXPECT_TRUE(a->RenewLease(ctx, s1->lease.lease_id).ok());
  EXPECT_EQ(*a->GetCurrentSlots(ctx, repo.Key()), 4);
}

// Every request but the watch fails with Unavailable while `down` is set:
// an outage of the store as the promotion loop sees it after an expiry.
class Outage final : public internal::ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<internal::etcdpb::RangeResponse> Range(
      const Context& ctx, const internal::etcdpb::RangeRequest& req) override {
    if (down.load()) return absl::UnavailableError("injected: etcd is down");
    return inner_->Range(ctx, req);
  }
  absl::StatusOr<internal::etcdpb::TxnResponse> Txn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    if (down.load()) return absl::UnavailableError("injected: etcd is down");
    return inner_->Txn(ctx, req);
  }
  absl::StatusOr<internal::etcdpb::TxnResponse> AdmittingTxn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    return Txn(ctx, req);
  }
  absl::StatusOr<int64_t> LeaseGrant(const Context& ctx,
                                     int64_t ttl_seconds) override {
    if (down.load()) return absl::UnavailableError("injected: etcd is down");
    return inner_->LeaseGrant(ctx, ttl_seconds);
  }
  std::atomic<bool> down{false};
};

// Issue 20 (7): a slot expires while the store refuses the promotion step
// that the expiry triggers. Once the store is back the queue must drain
// with no new call. Before: the failed step was logged and dropped, and
// the run waited beside a free slot until someone called.
TEST(EtcdPromotionTest, AnExpiryPromotionThatFailsIsRetriedAfterTheOutage) {
  ManualClock clock;
  auto mock = std::make_shared<internal::MockEtcd>(&clock);
  auto outage = std::make_shared<Outage>(mock);
  std::unique_ptr<Driver> d = MockDriverOver(outage, &clock);
  ASSERT_TRUE(d != nullptr);
  Context ctx;
  Repository repo{"outage", "repo", 1};
  ASSERT_TRUE(d->AcquireSlot(ctx, repo, "outage/x")->acquired);
  auto w = d->AcquireSlot(ctx, repo, "outage/w");
  ASSERT_TRUE(w.ok() && !w->acquired);
  outage->down = true;
  clock.Advance(absl::Seconds(61));  // x's lease runs out: the watch hears it
  absl::SleepFor(absl::Milliseconds(300));  // the promotion fails meanwhile
  outage->down = false;
  bool admitted = false;
  for (absl::Time until = absl::Now() + absl::Seconds(10);
       !admitted && absl::Now() < until;) {
    auto running = d->GetRunningPipelineRuns(ctx, repo.Key());
    admitted = running.ok() && running->size() == 1 &&
               (*running)[0].pipeline_run_key == "outage/w";
    if (!admitted) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(admitted) << "the queue did not drain after the outage";
}

// Issue 20 (9): two runs joined by one request (group commit nests their
// Txns in one) share a create revision, and Kubernetes creation times have
// one-second resolution: a tie on both. Every process must order them the
// same way, whether its view came from a Range (key order) or from watch
// events (the order of the Txn's ops). Before: the process whose cached
// view took the events admitted "ties/b" first, where a fresh read admits
// "ties/a" first.
TEST_F(TwoMockDrivers,
       RunsTiedOnCreationTimeAndRevisionHaveOneOrderEverywhere) {
  Repository repo{"ties", "repo", 1};
  AcquireOptions early;
  early.creation_time = clock.Now() - absl::Hours(1);
  auto x = a->AcquireSlot(ctx, repo, "ties/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  auto y = a->AcquireSlot(ctx, repo, "ties/y", early);  // a watches now
  ASSERT_TRUE(y.ok() && !y->acquired);
  const int64_t us = absl::ToUnixMicros(clock.Now());
  internal::etcdpb::TxnRequest join;
  for (const char* run : {"ties/b", "ties/a"}) {  // one revision, b first
    auto* put = join.add_success()->mutable_request_put();
    put->set_key(absl::StrCat("/pac-concurrency/repo/", repo.Key(), "/queue/",
                              absl::StrFormat("%020d", us), "/", run));
    put->set_value(absl::StrCat(us));
  }
  ASSERT_TRUE(mock->Txn(ctx, join).ok());
  mock->DrainDeliveriesForTest();
  auto queued = b->GetQueuedPipelineRuns(ctx, repo.Key());
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(queued->size(), 3u);
  const std::string first_tied = (*queued)[1].pipeline_run_key;
  auto rx = a->ReleaseSlot(ctx, x->lease.lease_id, "", "");
  ASSERT_TRUE(rx.ok() && rx->admitted.size() == 1u);
  EXPECT_EQ(rx->admitted[0].pipeline_run_key, "ties/y");
  mock->DrainDeliveriesForTest();
  auto ry = a->ReleaseSlot(ctx, rx->admitted[0].lease_id, "", "");
  ASSERT_TRUE(ry.ok() && ry->admitted.size() == 1u);
  EXPECT_EQ(ry->admitted[0].pipeline_run_key, first_tied);
  EXPECT_EQ(first_tied, "ties/a");
}

// Expires the oldest slot (advances the clock) right after the next read of
// a repository, and lets the watch deliver every event of a Txn before the
// Txn's caller goes on: a slot that expires one round trip before a join
// commits, heard by the watch before the joining driver caches its view.
class ExpiryAfterRead final : public internal::ForwardingEtcdKV {
 public:
  ExpiryAfterRead(std::shared_ptr<internal::MockEtcd> mock, ManualClock* clock)
      : ForwardingEtcdKV(mock), mock_(std::move(mock)), clock_(clock) {}
  absl::StatusOr<internal::etcdpb::RangeResponse> Range(
      const Context& ctx, const internal::etcdpb::RangeRequest& req) override {
    auto r = inner_->Range(ctx, req);
    if (armed.fetch_sub(1) == 1) clock_->Advance(advance);
    return r;
  }
  absl::StatusOr<internal::etcdpb::TxnResponse> Txn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    auto r = inner_->Txn(ctx, req);
    mock_->DrainDeliveriesForTest();
    return r;
  }
  // Counts reads down: the read that brings it to 0 advances the clock.
  std::atomic<int> armed{0};
  absl::Duration advance;

 private:
  std::shared_ptr<internal::MockEtcd> mock_;
  ManualClock* clock_;
};

// Issue 20 (5): under a limit above 64 a join compares no slots, so a slot
// that expired just before it commits is missed; the watch heard the
// expiry when the queue was still empty, and nothing promoted the run
// that joined. A join into a repository the watch shows with room is
// promoted. Before: the run waited beside a free slot (until a new call).
TEST(EtcdPromotionTest, ARunJoiningBesideASlotThatJustExpiredIsAdmitted) {
  ManualClock clock;
  auto mock = std::make_shared<internal::MockEtcd>(&clock);
  auto kv = std::make_shared<ExpiryAfterRead>(mock, &clock);
  std::unique_ptr<Driver> d = MockDriverOver(kv, &clock);
  ASSERT_TRUE(d != nullptr);
  Context ctx;
  Repository repo{"wide", "repo", 70};
  auto watch = d->WatchSlotAvailability(ctx, repo.Key(), [](auto) {});
  ASSERT_TRUE(watch.ok());
  ASSERT_TRUE(d->AcquireSlot(ctx, repo, "wide/s0")->acquired);
  clock.Advance(absl::Seconds(30));
  for (int i = 1; i < 70; ++i) {
    ASSERT_TRUE(d->AcquireSlot(ctx, repo, absl::StrCat("wide/s", i))->acquired);
  }
  kv->advance = absl::Seconds(31);  // s0's lease (60 s) runs out
  // After the step's second read: its first plan takes the repository's
  // turn and plans again on a fresh read, which is the one the join uses.
  kv->armed = 2;
  auto w = d->AcquireSlot(ctx, repo, "wide/w");
  ASSERT_TRUE(w.ok());
  bool admitted = w->acquired;
  for (absl::Time until = absl::Now() + absl::Seconds(5);
       !admitted && absl::Now() < until;) {
    auto running = d->GetRunningPipelineRuns(ctx, repo.Key());
    for (const Lease& l : running.ok() ? *running : std::vector<Lease>{}) {
      admitted = admitted || l.pipeline_run_key == "wide/w";
    }
    if (!admitted) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(admitted) << "the run waits beside a free slot";
  (*watch)->Stop();
}

// Issue 20 (6): etcd keeps the history from the compaction revision on. A
// stream resumed from before it gets a compaction answer and must start
// again at that revision, whose events are still there: here the release
// of x, made while the old stream's events were held. Before: the stream
// restarted one revision later and the release was never heard.
TEST_F(TwoMockDrivers,
       AStreamResumedPastACompactionHearsTheCompactionRevision) {
  Repository repo{"compacted", "repo", 1};
  std::mutex mu;
  std::vector<std::pair<WatchEventType, std::string>> events;
  auto w = a->WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.emplace_back(e.type, e.pipeline_run_key);
  });
  ASSERT_TRUE(w.ok());
  auto x = b->AcquireSlot(ctx, repo, "compacted/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  mock->DrainDeliveriesForTest();
  mock->HoldDeliveriesForTest(true);
  ASSERT_TRUE(b->ReleaseSlot(ctx, x->lease.lease_id, "", "")->released);
  internal::etcdpb::RangeRequest probe;
  probe.set_key("/");
  probe.set_count_only(true);
  const int64_t released_at = mock->Range(ctx, probe)->header().revision();
  ASSERT_TRUE(mock->Compact(ctx, released_at).ok());
  static_cast<internal::EtcdDriver*>(a.get())->ResumeWatchForTest(released_at -
                                                                  1);
  mock->HoldDeliveriesForTest(false);
  bool heard = false;
  for (absl::Time until = absl::Now() + absl::Seconds(5);
       !heard && absl::Now() < until;) {
    mock->DrainDeliveriesForTest();
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const auto& [type, run] : events) {
        heard = heard ||
                (type == WatchEventType::kReleased && run == "compacted/x");
      }
    }
    if (!heard) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(heard) << "the release at the compaction revision was missed";
  (*w)->Stop();
}

// Issue 20 (6): after a gap (a resync past a compaction) the watch still
// names x as the holder of seat 0, which y took meanwhile. A watcher that
// registers reads the seat's holder now; that must replace the stale name,
// or y's release is reported as x's. Before: it was reported as x's.
TEST_F(TwoMockDrivers, ARegistrationAfterAGapNamesTheSeatsCurrentHolder) {
  Repository repo{"gap-names", "repo", 1};
  std::mutex mu;
  std::vector<std::string> released;
  auto first = a->WatchSlotAvailability(ctx, repo.Key(), [](auto) {});
  ASSERT_TRUE(first.ok());
  auto x = b->AcquireSlot(ctx, repo, "gap-names/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  mock->DrainDeliveriesForTest();
  internal::etcdpb::RangeRequest probe;
  probe.set_key("/");
  probe.set_count_only(true);
  const int64_t before = mock->Range(ctx, probe)->header().revision();
  mock->HoldDeliveriesForTest(true);
  ASSERT_TRUE(b->ReleaseSlot(ctx, x->lease.lease_id, "", "")->released);
  auto y = b->AcquireSlot(ctx, repo, "gap-names/y");
  ASSERT_TRUE(y.ok() && y->acquired);
  ASSERT_TRUE(b->SetRepositoryState(ctx, repo, "moved on").ok());
  ASSERT_TRUE(
      mock->Compact(ctx, mock->Range(ctx, probe)->header().revision()).ok());
  static_cast<internal::EtcdDriver*>(a.get())->ResumeWatchForTest(before + 1);
  mock->HoldDeliveriesForTest(false);
  mock->DrainDeliveriesForTest();
  auto second =
      a->WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kReleased) return;
        std::lock_guard<std::mutex> lock(mu);
        released.push_back(e.pipeline_run_key);
      });
  ASSERT_TRUE(second.ok());
  ASSERT_TRUE(b->ReleaseSlot(ctx, y->lease.lease_id, "", "")->released);
  bool heard = false;
  for (absl::Time until = absl::Now() + absl::Seconds(5);
       !heard && absl::Now() < until;) {
    mock->DrainDeliveriesForTest();
    {
      std::lock_guard<std::mutex> lock(mu);
      heard = !released.empty();
    }
    if (!heard) absl::SleepFor(absl::Milliseconds(10));
  }
  // Stop the watches before reading what they heard: a callback takes mu,
  // and Stop waits for a running callback, so holding mu across Stop could
  // deadlock.
  (*first)->Stop();
  (*second)->Stop();
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_FALSE(released.empty());
  EXPECT_EQ(released[0], "gap-names/y");
}

}  // namespace
}  // namespace pac::concurrency
