// TxnBatcher against the mock store and a real etcd (PAC_TEST_ETCD_ENDPOINTS,
// set by `make test`): concurrent Txns share requests only where that cannot
// change what any of them sees.
#include "src/etcd/txn_batcher.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pac/concurrency/clock.h"
#include "src/etcd/grpc_etcd.h"
#include "src/etcd/mock_etcd.h"
#include "tests/conformance/etcd_test_env.h"

namespace pac::concurrency::internal {
namespace {

// Makes every Txn slow, so that concurrent callers pile up behind the ones
// in flight and batches form; counts the nested Txns of each request.
class SlowTxns final : public ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    int nested = 0;
    bool puts = false, ranges = false;
    for (const auto& op : req.success()) {
      if (!op.has_request_txn()) continue;
      ++nested;
      for (const auto& inner : op.request_txn().success()) {
        puts = puts || inner.has_request_put();
        ranges = ranges || inner.has_request_range();
      }
    }
    if (nested > 1) ++multi_;
    if (puts && ranges) ++mixed_;
    return inner_->Txn(ctx, req);
  }
  int multi() const { return multi_.load(); }
  // Requests in which one nested Txn puts and another ranges.
  int mixed() const { return mixed_.load(); }

 private:
  std::atomic<int> multi_{0}, mixed_{0};
};

class TxnBatcherTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::shared_ptr<EtcdKV> store;
    if (GetParam() == "mock") {
      store = std::make_shared<MockEtcd>(Clock::Real());
    } else {
      auto c = conformance::TestEtcdConfig();
      ASSERT_TRUE(c.ok()) << c.status();
      auto kv = NewGrpcEtcd(*c, nullptr);
      ASSERT_TRUE(kv.ok()) << kv.status();
      store = *kv;
    }
    slow_ = std::make_shared<SlowTxns>(store);
    batcher_ = NewTxnBatcher(slow_);
    // Unique per run of a test too (--gtest_repeat reuses the server).
    static int runs = 0;
    prefix_ = absl::StrCat(
        "/batcher-test/", getpid(), "/",
        ::testing::UnitTest::GetInstance()->current_test_info()->name(), "/",
        runs++, "/");
  }

  // Adds one to `key` by compare-and-swap on its mod revision, retrying a
  // lost compare. The read goes past the batcher; the write through it.
  absl::Status Increment(const std::string& key) {
    Context ctx =
        Context::WithTimeout(Context::Background(), absl::Seconds(30));
    while (true) {
      etcdpb::RangeRequest get;
      get.set_key(key);
      auto r = batcher_->Range(ctx, get);
      if (!r.ok()) return r.status();
      int64_t mod = 0, value = 0;
      if (r->kvs_size() > 0) {
        mod = r->kvs(0).mod_revision();
        value = std::stoll(r->kvs(0).value());
      }
      etcdpb::TxnRequest txn;
      auto* c = txn.add_compare();
      c->set_key(key);
      c->set_target(etcdpb::Compare::MOD);
      c->set_result(etcdpb::Compare::EQUAL);
      c->set_mod_revision(mod);
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key(key);
      put->set_value(std::to_string(value + 1));
      auto t = batcher_->Txn(ctx, txn);
      if (!t.ok()) return t.status();
      if (t->succeeded()) return absl::OkStatus();
    }
  }

  int64_t Value(const std::string& key) {
    etcdpb::RangeRequest get;
    get.set_key(key);
    auto r = batcher_->Range(Context(), get);
    if (!r.ok() || r->kvs_size() == 0) return -1;
    return std::stoll(r->kvs(0).value());
  }

  std::shared_ptr<SlowTxns> slow_;
  std::shared_ptr<TxnBatcher> batcher_;
  std::string prefix_;
};

// Each thread increments its own key: the Txns are disjoint and share
// requests, and every caller gets its own Txn's answer.
TEST_P(TxnBatcherTest, DisjointTxnsShareRequestsAndEachGetsItsAnswer) {
  constexpr int kThreads = 8, kEach = 25;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (!Increment(absl::StrCat(prefix_, "k", t)).ok()) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(Value(absl::StrCat(prefix_, "k", t)), kEach) << t;
  }
  auto stats = batcher_->stats();
  EXPECT_EQ(stats.txns, kThreads * kEach);  // each one succeeded first time
  EXPECT_LT(stats.batches, stats.txns);
  EXPECT_GT(slow_->multi(), 0);
}

// All threads increment one key. Two of these Txns in one request would both
// pass their compare on the state before it and lose an increment: the
// batcher must keep them apart.
TEST_P(TxnBatcherTest, OverlappingTxnsNeverShareARequest) {
  constexpr int kThreads = 8, kEach = 15;
  const std::string shared = prefix_ + "shared";
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        // A disjoint key too, so that batches do form.
        if (!Increment(shared).ok()) ++errors;
        if (!Increment(absl::StrCat(prefix_, "own", t)).ok()) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(Value(shared), kThreads * kEach);
  EXPECT_GT(slow_->multi(), 0);
}

// Txns that only read one key (a compare and a range, as the driver's
// confirmations) are independent: they share requests, and each sees the
// key as it is.
TEST_P(TxnBatcherTest, ReadOnlyTxnsOfOneKeyShareRequests) {
  const std::string key = prefix_ + "read";
  ASSERT_TRUE(Increment(key).ok());
  constexpr int kThreads = 8, kEach = 20;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0}, wrong{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        etcdpb::TxnRequest txn;
        auto* c = txn.add_compare();
        c->set_key(key);
        c->set_target(etcdpb::Compare::VALUE);
        c->set_result(etcdpb::Compare::EQUAL);
        c->set_value("1");
        txn.add_success()->mutable_request_range()->set_key(key);
        auto r = batcher_->Txn(Context(), txn);
        if (!r.ok()) {
          ++errors;
        } else if (!r->succeeded() ||
                   r->responses(0).response_range().kvs_size() != 1 ||
                   r->responses(0).response_range().kvs(0).value() != "1") {
          ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(slow_->multi(), 0);
}

// A range compare over a prefix overlaps every key under it. Readers check
// that nothing under `dir` changed since their read and, in the same Txn,
// read it again: the two sums must agree. A writer's Txn batched after such
// a reader's would pass the reader's compare (decided before any write) and
// change what its second read sees.
TEST_P(TxnBatcherTest, ARangeOverlapsTheKeysUnderIt) {
  constexpr int kThreads = 6, kEach = 20;
  const std::string dir = prefix_ + "dir/";
  std::vector<std::thread> threads;
  std::atomic<int> errors{0}, torn{0}, checked{0};
  auto sum_of = [](const etcdpb::RangeResponse& r) {
    int64_t sum = 0;
    for (const auto& kv : r.kvs()) sum += std::stoll(kv.value());
    return sum;
  };
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Context ctx;
      int mine = 0;  // this reader's successful checks
      // A reader goes on until one of its checks got through (writers
      // keep failing its compare while they run).
      for (int i = 0; i < kEach || (t % 2 == 1 && mine == 0 && i < 2000); ++i) {
        if (t % 2 == 0) {
          if (!Increment(absl::StrCat(dir, t)).ok()) ++errors;
          continue;
        }
        etcdpb::RangeRequest read;
        read.set_key(dir);
        read.set_range_end(PrefixEnd(dir));
        auto before = batcher_->Range(ctx, read);
        if (!before.ok()) {
          ++errors;
          continue;
        }
        etcdpb::TxnRequest txn;
        auto* c = txn.add_compare();
        c->set_key(dir);
        c->set_range_end(PrefixEnd(dir));
        c->set_target(etcdpb::Compare::MOD);
        c->set_result(etcdpb::Compare::LESS);
        c->set_mod_revision(before->header().revision() + 1);
        *txn.add_success()->mutable_request_range() = read;
        auto r = batcher_->Txn(ctx, txn);
        if (!r.ok()) {
          ++errors;
        } else if (r->succeeded()) {
          ++checked;
          ++mine;
          if (sum_of(r->responses(0).response_range()) != sum_of(*before)) {
            ++torn;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(torn.load(), 0);
  EXPECT_GE(checked.load(), kThreads / 2);
  int64_t total = 0;
  for (int t = 0; t < kThreads; t += 2) total += Value(absl::StrCat(dir, t));
  EXPECT_EQ(total, (kThreads / 2) * kEach);
}

// A Txn whose compares read nothing another writes may follow it in one
// request even if its range covers what that one writes: etcd runs the
// range after the earlier writes, so it shows the keys as they are at the
// request's revision. Checked on every answer: a key is in a range answered
// at revision H exactly when its put committed at H or before.
TEST_P(TxnBatcherTest, ARangeAfterAWriteInOneRequestSeesIt) {
  constexpr int kWriters = 4, kReaders = 4, kEach = 30;
  const std::string dir = prefix_ + "dir/";
  std::mutex mu;
  std::map<std::string, int64_t> committed;  // key -> revision of its put
  std::vector<std::pair<int64_t, std::set<std::string>>> answers;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kWriters + kReaders; ++t) {
    threads.emplace_back([&, t] {
      Context ctx;
      for (int i = 0; i < kEach; ++i) {
        etcdpb::TxnRequest txn;
        auto* c = txn.add_compare();
        c->set_target(etcdpb::Compare::CREATE);
        c->set_result(etcdpb::Compare::EQUAL);
        c->set_create_revision(0);
        if (t < kWriters) {
          const std::string key = absl::StrCat(dir, t, "-", i);
          c->set_key(key);
          auto* put = txn.add_success()->mutable_request_put();
          put->set_key(key);
          put->set_value("1");
          auto r = batcher_->Txn(ctx, txn);
          if (!r.ok() || !r->succeeded()) {
            ++errors;
            continue;
          }
          std::lock_guard<std::mutex> lock(mu);
          committed[key] = r->header().revision();
        } else {
          c->set_key(prefix_ + "never-written");
          auto* range = txn.add_success()->mutable_request_range();
          range->set_key(dir);
          range->set_range_end(PrefixEnd(dir));
          auto r = batcher_->Txn(ctx, txn);
          if (!r.ok() || !r->succeeded()) {
            ++errors;
            continue;
          }
          std::set<std::string> keys;
          for (const auto& kv : r->responses(0).response_range().kvs()) {
            keys.insert(kv.key());
          }
          std::lock_guard<std::mutex> lock(mu);
          answers.emplace_back(r->header().revision(), std::move(keys));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  ASSERT_EQ(committed.size(), static_cast<size_t>(kWriters * kEach));
  int wrong = 0;
  for (const auto& [rev, keys] : answers) {
    for (const auto& [key, put_rev] : committed) {
      if ((put_rev <= rev) != (keys.count(key) > 0)) ++wrong;
    }
  }
  EXPECT_EQ(wrong, 0);
  EXPECT_GT(slow_->mixed(), 0) << "no range shared a request with a put";
}

// A Txn etcd refuses (a put on a lease that does not exist) fails alone;
// the Txns it was batched with still commit.
TEST_P(TxnBatcherTest, ARefusedTxnFailsAloneItsBatchCommits) {
  constexpr int kThreads = 8, kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::thread> threads;
    std::vector<absl::Status> results(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        etcdpb::TxnRequest txn;
        auto* put = txn.add_success()->mutable_request_put();
        put->set_key(absl::StrCat(prefix_, round, "/k", t));
        put->set_value("v");
        if (t == 3) put->set_lease(0x7fffffff12345);  // never granted
        results[t] = batcher_->Txn(Context(), txn).status();
      });
    }
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) {
      if (t == 3) {
        EXPECT_TRUE(absl::IsNotFound(results[t])) << results[t];
        EXPECT_EQ(Value(absl::StrCat(prefix_, round, "/k", t)), -1);
      } else {
        EXPECT_TRUE(results[t].ok()) << t << ": " << results[t];
      }
    }
  }
  EXPECT_GT(slow_->multi(), 0);
}

// A caller whose context has ended is answered at once and its Txn is not
// sent.
TEST_P(TxnBatcherTest, AnEndedContextSendsNothing) {
  auto [ctx, cancel] = Context::WithCancel(Context::Background());
  cancel.Cancel();
  etcdpb::TxnRequest txn;
  auto* put = txn.add_success()->mutable_request_put();
  put->set_key(prefix_ + "never");
  put->set_value("1");
  auto r = batcher_->Txn(ctx, txn);
  EXPECT_TRUE(absl::IsCancelled(r.status())) << r.status();
  EXPECT_EQ(Value(prefix_ + "never"), -1);
  EXPECT_EQ(batcher_->stats().batches, 0);
}

// Holds every Txn that reaches the store until opened; counts them.
class GatedTxns final : public ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    lock.unlock();
    return inner_->Txn(ctx, req);
  }
  // Waits until `n` Txns have reached the store (false after 10 s).
  bool AwaitArrived(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10),
                        [&] { return arrived_ >= n; });
  }
  int arrived() {
    std::lock_guard<std::mutex> lock(mu_);
    return arrived_;
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  bool open_ = false;
};

etcdpb::TxnRequest PutTxn(const std::string& key) {
  etcdpb::TxnRequest txn;
  auto* put = txn.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value("1");
  return txn;
}

// A batcher over a gated mock store, and callers that each send a put of
// their own key on a thread of their own.
class TxnBatcherAdmittingTest : public ::testing::Test {
 protected:
  void Make(TxnBatchOptions options) {
    batcher_ = NewTxnBatcher(gate_, options);
  }
  void Send(int i, bool admitting) {
    threads_.emplace_back([this, i, admitting] {
      auto txn = PutTxn(absl::StrCat("/gated/", i));
      results_[i] = admitting ? batcher_->AdmittingTxn(ctx_, txn)
                              : batcher_->Txn(ctx_, txn);
    });
  }
  // Opens the gate, waits for every caller, and expects each Txn of the
  // `n` sent to have committed.
  void OpenAndJoin(int n) {
    gate_->Open();
    for (auto& t : threads_) t.join();
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(results_[i].ok() && results_[i]->succeeded()) << i;
    }
    EXPECT_EQ(batcher_->stats().txns, n);
  }

  std::shared_ptr<GatedTxns> gate_ =
      std::make_shared<GatedTxns>(std::make_shared<MockEtcd>(Clock::Real()));
  std::shared_ptr<TxnBatcher> batcher_;
  Context ctx_ = Context::WithTimeout(Context::Background(), absl::Seconds(30));
  std::array<absl::StatusOr<etcdpb::TxnResponse>, 8> results_;
  std::vector<std::thread> threads_;
};

// With every request in flight taken (two Txns held by the store), a Txn
// that admits queued runs still goes at once, in a request of its own. A
// second one while the first is in flight waits as any other Txn does.
TEST_F(TxnBatcherAdmittingTest, AnAdmittingTxnDoesNotWaitForARequest) {
  Make({.max_batch = 64, .max_in_flight = 2});
  Send(0, false);
  Send(1, false);
  ASSERT_TRUE(gate_->AwaitArrived(2));
  Send(2, false);  // waits: both requests are in flight
  Send(3, true);   // goes
  ASSERT_TRUE(gate_->AwaitArrived(3)) << "the admitting Txn waited";
  Send(4, true);  // the admitting request is taken: waits
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(gate_->arrived(), 3);
  OpenAndJoin(5);
}

// By default one plain batch is in flight: while it is, further Txns wait
// (an admitting one still goes), and then the waiting ones share a request.
TEST_F(TxnBatcherAdmittingTest, ByDefaultOneBatchIsInFlightAndTheRestWait) {
  Make({});
  Send(0, false);
  ASSERT_TRUE(gate_->AwaitArrived(1));
  for (int i = 1; i <= 4; ++i) Send(i, false);
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(gate_->arrived(), 1) << "a second plain batch went while one was "
                                    "in flight";
  Send(5, true);
  ASSERT_TRUE(gate_->AwaitArrived(2)) << "the admitting Txn waited";
  OpenAndJoin(6);
  // Txn 0 and the admitting one alone; the four that waited together (one
  // more request should a thread have come late).
  EXPECT_LE(batcher_->stats().batches, 4);
}

INSTANTIATE_TEST_SUITE_P(Mock, TxnBatcherTest, ::testing::Values("mock"));
INSTANTIATE_TEST_SUITE_P(Etcd, TxnBatcherTest, ::testing::Values("etcd"));

}  // namespace
}  // namespace pac::concurrency::internal
