// The etcd driver's shared limits on the mock store (etcd_shared.cc): what
// the conformance suite cannot reach from outside. etcd's 128 operations
// per Txn against a member of eight limits (grouped releases, joining with
// slots held, imports), and a member's run queued while a release frees a
// shared slot beside it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
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

namespace pac::concurrency {
namespace {

using ::testing::ElementsAre;
using testing_etcd::MockDriverOver;

int Deletes(const internal::etcdpb::TxnRequest& req, const char* part) {
  int n = 0;
  for (const auto& op : req.success()) {
    if (op.has_request_delete_range() &&
        absl::StrContains(op.request_delete_range().key(), part)) {
      ++n;
    }
  }
  return n;
}

// Slows down releases, so that those waiting for a turn form groups;
// records the largest group and the most operations of any Txn; runs a
// hook before the next Txn that puts a queue entry.
class SharedKV final : public internal::ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<internal::etcdpb::TxnResponse> Txn(
      const Context& ctx, const internal::etcdpb::TxnRequest& req) override {
    std::function<void()> hook;
    {
      std::lock_guard<std::mutex> lock(mu);
      most_ops = std::max(most_ops, req.success_size());
      const int slots = Deletes(req, "/slot/");
      most_released = std::max(most_released, slots);
      for (const auto& op : req.success()) {
        if (op.has_request_put() &&
            absl::StrContains(op.request_put().key(), "/queue/")) {
          hook = std::exchange(before_enqueue, nullptr);
        }
      }
    }
    for (const auto& op : req.success()) {
      if (op.has_request_range() &&
          absl::StrContains(op.request_range().key(), "/member/") &&
          fail_member_reads.fetch_sub(1) > 0) {
        return absl::UnavailableError("injected: etcd unreachable");
      }
    }
    if (slow_releases && Deletes(req, "/slot/") > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (hook) hook();
    return inner_->Txn(ctx, req);
  }
  std::mutex mu;
  int most_ops = 0, most_released = 0;
  std::function<void()> before_enqueue;
  std::atomic<bool> slow_releases{false};
  // The next reads of shared limits' members fail (Unavailable).
  std::atomic<int> fail_member_reads{0};
};

class EtcdShared : public ::testing::Test {
 protected:
  void SetUp() override {
    mock = std::make_shared<internal::MockEtcd>(&clock);
    kv = std::make_shared<SharedKV>(mock);
    a = MockDriverOver(kv, &clock);
    b = MockDriverOver(mock, &clock);
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
  }
  void TearDown() override {
    if (a != nullptr) EXPECT_TRUE(a->Close().ok());
    if (b != nullptr) EXPECT_TRUE(b->Close().ok());
  }
  void Join(const Repository& repo, std::vector<std::string> names) {
    RepositoryPolicy p;
    p.shared_limits = std::move(names);
    ASSERT_TRUE(a->SetRepositoryPolicy(ctx, repo.Key(), p).ok());
  }
  std::optional<SharedLimitStatus> Status(const std::string& name) {
    auto list = b->ListSharedLimits(ctx);
    EXPECT_TRUE(list.ok()) << list.status();
    if (!list.ok()) return std::nullopt;
    for (const SharedLimitStatus& s : *list) {
      if (s.name == name) return s;
    }
    return std::nullopt;
  }
  std::vector<std::string> Eight() {
    std::vector<std::string> names;
    for (int i = 0; i < 8; ++i) names.push_back(absl::StrCat("l", i));
    return names;
  }
  ManualClock clock;
  std::shared_ptr<internal::MockEtcd> mock;
  std::shared_ptr<SharedKV> kv;
  std::unique_ptr<Driver> a, b;  // a's requests go through kv
  Context ctx;
};

// Sixteen holders in a member of eight shared limits release at once. A
// group of sixteen would delete 16 seats and 128 `held` keys in one Txn,
// which etcd refuses: the groups are smaller, and every release lands.
TEST_F(EtcdShared, AMemberOfEightLimitsReleasesSixteenAtOnce) {
  for (const std::string& n : Eight()) {
    ASSERT_TRUE(a->SetSharedLimit(ctx, SharedLimit{n, 100}).ok());
  }
  Repository repo{"eight", "repo", 40};
  Join(repo, Eight());
  std::vector<std::string> held;
  for (int i = 0; i < 16; ++i) {
    auto r = a->AcquireSlot(ctx, repo, absl::StrCat("eight/r", i));
    ASSERT_TRUE(r.ok() && r->acquired) << r.status();
    held.push_back(r->lease.lease_id);
  }
  EXPECT_EQ(Status("l7")->running, 16);
  kv->slow_releases = true;
  std::vector<absl::StatusOr<ReleaseResult>> results(
      held.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < held.size(); ++i) {
    threads.emplace_back(
        [&, i] { results[i] = a->ReleaseSlot(ctx, held[i], "", ""); });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->released);
  }
  EXPECT_GT(kv->most_released, 1);  // groups formed
  EXPECT_LE(kv->most_ops, 128);
  for (const std::string& n : Eight()) EXPECT_EQ(Status(n)->running, 0) << n;
}

// Joining writes a `held` key per running slot and limit, in the one Txn
// that records the membership. When that is over etcd's 128 operations the
// join is refused whole, naming why; fewer limits at a time fit.
TEST_F(EtcdShared, AJoinTooBigForOneTxnIsRefusedAndWritesNothing) {
  Repository repo{"join", "repo", 30};
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(a->AcquireSlot(ctx, repo, absl::StrCat("join/r", i))->acquired);
  }
  RepositoryPolicy p;
  p.shared_limits = Eight();
  absl::Status s = a->SetRepositoryPolicy(ctx, repo.Key(), p);
  EXPECT_TRUE(absl::IsFailedPrecondition(s)) << s;
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("join fewer"));
  EXPECT_TRUE(b->GetRepositoryPolicy(ctx, repo.Key())->shared_limits.empty());
  EXPECT_TRUE(b->ListSharedLimits(ctx)->empty());
  p.shared_limits.resize(4);
  ASSERT_TRUE(a->SetRepositoryPolicy(ctx, repo.Key(), p).ok());
  EXPECT_EQ(Status("l0")->running, 20);
  EXPECT_EQ(Status("l3")->running, 20);
  p.shared_limits = Eight();  // four more: fits now
  ASSERT_TRUE(a->SetRepositoryPolicy(ctx, repo.Key(), p).ok());
  EXPECT_EQ(Status("l7")->running, 20);
  EXPECT_THAT(Status("l7")->members, ElementsAre(repo.Key()));
  // Leaving drops them all.
  p.shared_limits.clear();
  ASSERT_TRUE(a->SetRepositoryPolicy(ctx, repo.Key(), p).ok());
  EXPECT_TRUE(b->ListSharedLimits(ctx)->empty());
}

// A run of member x queues while the shared limit is full. Just before its
// entry is written, y's release frees the shared slot, and y's pass finds
// nobody queued. The run must not wait beside the free slot: its acquire
// sees the room after queueing, passes, and is granted.
TEST_F(EtcdShared, ARunQueuedAsASharedSlotFreesIsAdmitted) {
  ASSERT_TRUE(a->SetSharedLimit(ctx, SharedLimit{"team", 1}).ok());
  Repository x{"team", "x", 5}, y{"team", "y", 5};
  Join(x, {"team"});
  Join(y, {"team"});
  auto y1 = b->AcquireSlot(ctx, y, "team/y1");
  ASSERT_TRUE(y1.ok() && y1->acquired);
  bool released = false;
  kv->before_enqueue = [&] {
    auto r = b->ReleaseSlot(ctx, y1->lease.lease_id, "", "");
    released = r.ok() && r->released && r->admitted.empty();
  };
  auto x1 = a->AcquireSlot(ctx, x, "team/x1");
  ASSERT_TRUE(x1.ok()) << x1.status();
  EXPECT_TRUE(released);
  EXPECT_TRUE(x1->acquired);
  EXPECT_EQ(Status("team")->running, 1);
  EXPECT_EQ(Status("team")->queued, 0);
}

// The pass after a release fails (etcd unreachable as it reads the
// members): the release still answers, and the driver passes again by
// itself, so the freed shared slot goes to the waiting run with no new call.
TEST_F(EtcdShared, APassThatFailsIsRetriedWithoutACall) {
  ASSERT_TRUE(a->SetSharedLimit(ctx, SharedLimit{"team", 1}).ok());
  Repository x{"retry", "x", 5}, y{"retry", "y", 5};
  Join(x, {"team"});
  Join(y, {"team"});
  auto x1 = a->AcquireSlot(ctx, x, "retry/x1");
  ASSERT_TRUE(x1.ok() && x1->acquired);
  auto y1 = a->AcquireSlot(ctx, y, "retry/y1");
  ASSERT_TRUE(y1.ok() && !y1->acquired);
  kv->fail_member_reads = 2;
  auto r = a->ReleaseSlot(ctx, x1->lease.lease_id, "", "");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->released);
  EXPECT_TRUE(r->admitted.empty());  // its pass failed
  bool admitted = false;
  for (int i = 0; i < 100 && !admitted; ++i) {
    auto running = b->GetRunningPipelineRuns(ctx, y.Key());
    admitted = running.ok() && running->size() == 1;
    if (!admitted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(admitted);
  EXPECT_LE(kv->fail_member_reads.load(), 0);
}

// An import into a member: its running runs count in the shared limit at
// once (as adopted runs, even over it), and its waiting runs are admitted
// by the pass, within it. A large import of a member of eight limits is
// cut into Txns etcd takes.
TEST_F(EtcdShared, AnImportIntoAMemberCountsAndAdmitsWithinTheLimit) {
  ASSERT_TRUE(a->SetSharedLimit(ctx, SharedLimit{"team", 3}).ok());
  Repository m{"imp", "m", 10};
  Join(m, {"team"});
  ImportRequest req;
  req.running = {"imp/r1", "imp/r2"};
  for (int i = 1; i <= 3; ++i) {
    req.waiting.push_back(ImportRequest::Waiting{
        absl::StrCat("imp/w", i), clock.Now() + absl::Seconds(i)});
  }
  auto got = a->ImportRuns(ctx, m, req);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->running.size(), 2u);
  ASSERT_EQ(got->admitted.size(), 1u);
  EXPECT_EQ(got->admitted[0].pipeline_run_key, "imp/w1");
  EXPECT_EQ(got->queued.size(), 2u);
  EXPECT_EQ(Status("team")->running, 3);
  EXPECT_EQ(Status("team")->queued, 2);

  for (const std::string& n : Eight()) {
    ASSERT_TRUE(a->SetSharedLimit(ctx, SharedLimit{n, 1000}).ok());
  }
  Repository big{"imp", "big", 200};
  Join(big, Eight());
  ImportRequest many;
  for (int i = 0; i < 70; ++i) many.running.push_back(absl::StrCat("imp/b", i));
  for (int i = 0; i < 30; ++i) {
    many.waiting.push_back(
        ImportRequest::Waiting{absl::StrCat("imp/q", i), clock.Now()});
  }
  auto all = a->ImportRuns(ctx, big, many);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->running.size(), 70u);
  EXPECT_EQ(all->admitted.size(), 30u);
  EXPECT_EQ(Status("l5")->running, 100);
  EXPECT_LE(kv->most_ops, 128);
}

}  // namespace
}  // namespace pac::concurrency
