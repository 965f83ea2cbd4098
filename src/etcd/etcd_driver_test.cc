// The etcd driver: the conformance suite in "mock" mode (in-process store,
// manual clock) and against a real etcd 3.4 server, plus TLS, auth, a
// 3-node cluster losing its leader, a watch whose endpoint goes away,
// compaction during a watch, and a holder killed with SIGKILL.
#include "src/etcd/etcd_driver.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/etcd/etcd_rpc.pb.h"
#include "src/etcd/grpc_etcd.h"
#include "src/etcd/mock_etcd.h"
#include "tests/conformance/driver_conformance.h"
#include "tests/conformance/etcd_test_env.h"
#include "tests/conformance/multiprocess.h"
#include "tests/conformance/tcp_forwarder.h"

namespace pac::concurrency {
namespace {

using conformance::EnvOr;
using conformance::ReadFileOrEmpty;
using conformance::TestEtcdConfig;
using ::testing::HasSubstr;
using ::testing::Not;

conformance::DriverFactory MockFactory() {
  conformance::DriverFactory f;
  f.name = "etcd_mock";
  f.manual_clock = true;
  f.make = [](const conformance::ConformanceEnv& env)
      -> absl::StatusOr<std::unique_ptr<Driver>> {
    EtcdConfig c;
    c.mode = "mock";
    c.lease_ttl = env.lease_ttl;
    DriverOptions o;
    o.clock = env.clock;
    o.background_cleanup = env.background_cleanup;
    return NewEtcdDriver(c, o);
  };
  return f;
}

conformance::DriverFactory RealFactory() {
  conformance::DriverFactory f;
  f.name = "etcd";
  f.manual_clock = false;
  f.real_ttl = absl::Seconds(2);
  f.make = [](const conformance::ConformanceEnv& env)
      -> absl::StatusOr<std::unique_ptr<Driver>> {
    auto c = TestEtcdConfig();
    if (!c.ok()) return c.status();
    c->lease_ttl = env.lease_ttl;
    DriverOptions o;
    o.background_cleanup = env.background_cleanup;
    return NewEtcdDriver(*c, o);
  };
  return f;
}

using conformance::DriverConformanceTest;
INSTANTIATE_TEST_SUITE_P(Etcd, DriverConformanceTest,
                         ::testing::Values(MockFactory(), RealFactory()),
                         [](const auto& info) { return info.param.name; });

std::string UniqueNs(const char* what) {
  static std::atomic<int> n{0};
  return absl::StrCat(what, "-", getpid(), "-", n++);
}

EtcdConfig SecureConfig() {
  EtcdConfig c;
  c.mode = "etcd";
  c.endpoints = {EnvOr("PAC_TEST_ETCD_SECURE_ENDPOINT")};
  c.dial_timeout = absl::Seconds(3);
  c.lease_ttl = absl::Seconds(2);
  c.username = EnvOr("PAC_TEST_ETCD_USER");
  c.password = ReadFileOrEmpty(EnvOr("PAC_TEST_ETCD_PASSWORD_FILE"));
  c.tls = TLSConfig{EnvOr("PAC_TEST_ETCD_CLIENT_CERT"),
                    EnvOr("PAC_TEST_ETCD_CLIENT_KEY"),
                    EnvOr("PAC_TEST_ETCD_CA"), "etcd.test"};
  return c;
}

TEST(EtcdDriverTest, TlsClientCertAndAuthWork) {
  ASSERT_FALSE(EnvOr("PAC_TEST_ETCD_SECURE_ENDPOINT").empty());
  auto d = NewEtcdDriver(SecureConfig());
  ASSERT_TRUE(d.ok()) << d.status();
  Context ctx;
  std::string ns = UniqueNs("tls");
  auto r = (*d)->AcquireSlot(ctx, Repository{ns, "repo", 1}, ns + "/run");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->acquired);
}

TEST(EtcdDriverTest, WrongCaFails) {
  EtcdConfig c = SecureConfig();
  c.tls->ca_file = EnvOr("PAC_TEST_ETCD_OTHER_CA");
  auto d = NewEtcdDriver(c);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(absl::IsUnavailable(d.status())) << d.status();
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("TLS"));
}

TEST(EtcdDriverTest, WrongPasswordIsUnauthenticatedAndNotEchoed) {
  EtcdConfig c = SecureConfig();
  c.password = "not-the-secret-42";
  auto d = NewEtcdDriver(c);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(absl::IsUnauthenticated(d.status())) << d.status();
  EXPECT_THAT(std::string(d.status().message()), Not(HasSubstr("secret-42")));
}

TEST(EtcdDriverTest, UnreachableEndpointsAreUnavailable) {
  EtcdConfig c;
  c.endpoints = {"127.0.0.1:1", "127.0.0.1:2"};
  c.dial_timeout = absl::Seconds(1);
  auto d = NewEtcdDriver(c);
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(absl::IsUnavailable(d.status())) << d.status();
}

// The test server's config (`direct`) and one whose first endpoint is a
// forwarder in front of it (`via`), followed by the server itself if
// `then_direct`.
struct Forwarded {
  std::unique_ptr<conformance::TcpForwarder> fwd;
  EtcdConfig direct, via;
};
absl::StatusOr<Forwarded> Forward(bool then_direct) {
  Forwarded f;
  auto c = TestEtcdConfig();
  if (!c.ok()) return c.status();
  auto fwd = conformance::TcpForwarder::Start(c->endpoints[0]);
  if (!fwd.ok()) return fwd.status();
  f.fwd = *std::move(fwd);
  f.direct = f.via = *c;
  f.via.endpoints = {f.fwd->endpoint()};
  if (then_direct) f.via.endpoints.push_back(c->endpoints[0]);
  return f;
}

// A watch whose endpoint goes away moves on to the next endpoint by itself.
// The driver makes no other call here that would move it (its watcher hears
// of writes another driver makes, straight to the server): a watch that
// came back to the dead endpoint would hear nothing more.
TEST(EtcdDriverTest, AWatchWhoseEndpointDiesMovesToTheNext) {
  auto f = Forward(/*then_direct=*/true);
  ASSERT_TRUE(f.ok()) << f.status();
  DriverOptions quiet;
  quiet.background_cleanup = false;       // no promotion step after a resync
  auto d = NewEtcdDriver(f->via, quiet);  // on the forwarder first
  ASSERT_TRUE(d.ok()) << d.status();
  auto writer = NewEtcdDriver(f->direct);
  ASSERT_TRUE(writer.ok()) << writer.status();
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  const std::string ns = UniqueNs("failover");
  Repository repo{ns, "repo", 1};
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::string> released;
  auto w =
      (*d)->WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kReleased) return;
        std::lock_guard<std::mutex> lock(mu);
        released.insert(e.pipeline_run_key);
        cv.notify_all();
      });
  ASSERT_TRUE(w.ok()) << w.status();
  auto hand_off = [&](const std::string& run) {
    auto a = (*writer)->AcquireSlot(ctx, repo, run, {});
    ASSERT_TRUE(a.ok() && a->acquired) << a.status();
    auto r = (*writer)->ReleaseSlot(ctx, a->lease.lease_id, "", "");
    ASSERT_TRUE(r.ok() && r->released) << r.status();
  };
  auto heard = [&](const std::string& run) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(15),
                       [&] { return released.count(run) > 0; });
  };
  hand_off(ns + "/before");
  ASSERT_TRUE(heard(ns + "/before"));
  f->fwd->Close();  // the first endpoint is gone
  hand_off(ns + "/after");
  EXPECT_TRUE(heard(ns + "/after")) << "the watch stayed on the dead endpoint";
  (*w)->Stop();
}

// Counts the watch streams opened through it.
class CountedWatches final : public internal::ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  absl::StatusOr<std::unique_ptr<internal::EtcdWatch>> Watch(
      const std::string& key, const std::string& range_end,
      int64_t start_revision, internal::WatchFn fn) override {
    ++opened;
    return inner_->Watch(key, range_end, start_revision, std::move(fn));
  }
  std::atomic<int> opened{0};
};

// With its only endpoint gone, the watch is opened again after pauses that
// grow (0.1 s, doubling, up to 5 s), not in a busy loop: two seconds hold
// a handful of attempts, where a loop made thousands.
TEST(EtcdDriverTest, AWatchWithNoEndpointLeftRetriesWithPauses) {
  auto f = Forward(/*then_direct=*/false);
  ASSERT_TRUE(f.ok()) << f.status();
  auto grpc = internal::NewGrpcEtcd(f->via, nullptr);
  ASSERT_TRUE(grpc.ok()) << grpc.status();
  auto counted = std::make_shared<CountedWatches>(*grpc);
  DriverOptions quiet;
  quiet.background_cleanup = false;
  auto d = internal::EtcdDriver::Create(counted, f->via, quiet);
  ASSERT_TRUE(d.ok()) << d.status();
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  Repository repo{UniqueNs("nowhere"), "repo", 1};
  auto w =
      (*d)->WatchSlotAvailability(ctx, repo.Key(), [](const WatchEvent&) {});
  ASSERT_TRUE(w.ok()) << w.status();
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_EQ(counted->opened.load(), 1);
  f->fwd->Close();
  absl::SleepFor(absl::Seconds(2));
  EXPECT_LE(counted->opened.load(), 12);
  EXPECT_GE(counted->opened.load(), 2);  // it does try again
  (*w)->Stop();
}

std::vector<pid_t> Pids(const std::string& path) {
  std::vector<pid_t> out;
  std::ifstream in(path);
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

// The index (in endpoint order) of the cluster's leader, asked of etcdctl.
int LeaderIndex(const std::string& endpoints) {
  std::string cmd = "ETCDCTL_API=3 etcdctl --endpoints=" + endpoints +
                    " endpoint status -w fields 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  std::vector<std::string> eps = absl::StrSplit(endpoints, ',');
  char line[512];
  std::string member, leader;
  int found = -1;
  while (fgets(line, sizeof(line), p) != nullptr) {
    std::string l(line);
    auto value = [&] {
      std::string v = l.substr(l.find(':') + 1);
      v.erase(std::remove_if(
                  v.begin(), v.end(),
                  [](char c) { return c == ' ' || c == '"' || c == '\n'; }),
              v.end());
      return v;
    };
    if (l.rfind("\"MemberID\"", 0) == 0) member = value();
    if (l.rfind("\"Leader\"", 0) == 0) leader = value();
    if (l.rfind("\"Endpoint\"", 0) == 0 && !member.empty() &&
        member == leader) {
      std::string ep = value();
      for (size_t i = 0; i < eps.size(); ++i) {
        if (eps[i] == ep) found = static_cast<int>(i);
      }
    }
  }
  pclose(p);
  return found;
}

// Kills the leader of the 3-node cluster with SIGKILL while threads work;
// after the election the work continues on the other members.
TEST(EtcdDriverTest, ClusterLeaderKilledDuringOperations) {
  auto c = TestEtcdConfig("PAC_TEST_ETCD_CLUSTER_ENDPOINTS");
  ASSERT_TRUE(c.ok()) << c.status();
  int leader = LeaderIndex(EnvOr("PAC_TEST_ETCD_CLUSTER_ENDPOINTS"));
  ASSERT_GE(leader, 0) << "could not find the leader";
  ASSERT_EQ(c->endpoints.size(), 3u);
  // The driver talks to a follower first, which forwards its writes to the
  // leader: the case where killing the leader strands writes in flight.
  std::rotate(c->endpoints.begin(), c->endpoints.begin() + (leader + 1) % 3,
              c->endpoints.end());
  auto d = NewEtcdDriver(*c);
  ASSERT_TRUE(d.ok()) << d.status();
  std::string ns = UniqueNs("cluster");
  Repository repo{ns, "repo", 2};
  std::atomic<bool> stop{false};
  std::atomic<int> ok_ops{0}, failures{0}, inflight{0}, max_inflight{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop.load(); ++i) {
        Context ctx = Context::WithTimeout(Context(), absl::Seconds(5));
        std::string run = absl::StrCat(ns, "/t", t, "-", i);
        auto a = (*d)->AcquireSlot(ctx, repo, run, {.enqueue = false});
        if (!a.ok()) {
          // Its outcome is unknown (it may have committed): as a controller
          // would, release the run by key before going on.
          ++failures;
          for (int k = 0; k < 20; ++k) {
            Context rctx = Context::WithTimeout(Context(), absl::Seconds(5));
            if ((*d)->ReleaseSlot(rctx, "", run, repo.Key()).ok()) break;
          }
          continue;
        }
        if (!a->acquired) continue;
        int now = ++inflight;
        int prev = max_inflight.load();
        while (now > prev && !max_inflight.compare_exchange_weak(prev, now)) {
        }
        --inflight;
        for (int k = 0; k < 20; ++k) {
          Context rctx = Context::WithTimeout(Context(), absl::Seconds(5));
          if ((*d)->ReleaseSlot(rctx, a->lease.lease_id, "", "").ok()) break;
        }
        ++ok_ops;
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  int before = ok_ops.load();
  auto pids = Pids(EnvOr("PAC_TEST_ETCD_CLUSTER_PIDS"));
  ASSERT_EQ(pids.size(), 3u);
  ASSERT_EQ(leader, LeaderIndex(EnvOr("PAC_TEST_ETCD_CLUSTER_ENDPOINTS")));
  ASSERT_EQ(kill(pids[leader], SIGKILL), 0);
  const int at_kill = ok_ops.load();
  // Work must go on: wait (bounded) for ten more completed pairs.
  absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (ok_ops.load() < at_kill + 10 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_GT(before, 0);
  EXPECT_GE(ok_ops.load(), at_kill + 10) << "no progress after the kill";
  // A write that a follower forwarded to the dead leader is lost, and the
  // follower would answer only after its own request timeout (6 s here):
  // past these calls' 5 s deadlines. The client sends it again after its
  // attempt timeout (2 s) instead, so no call fails.
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(max_inflight.load(), 2);
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(5));
  // (A cluster without a quorum, as when the test runs twice against one
  // cluster, fails here instead of crashing the binary.)
  auto slots = (*d)->GetCurrentSlots(ctx, repo.Key());
  ASSERT_TRUE(slots.ok()) << slots.status();
  EXPECT_EQ(*slots, 0);
}

// The driver's watch resumes from a revision the store has compacted away
// (as after a broken stream during which the cluster compacted). The store
// answers with a compaction; the driver tells watchers to resync and keeps
// watching from now, without replaying history.
void CompactionDuringAWatch(Driver& d, internal::EtcdKV& kv) {
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  auto revision = [&]() -> int64_t {
    internal::etcdpb::RangeRequest req;
    req.set_key("/");
    req.set_count_only(true);
    auto r = kv.Range(ctx, req);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->header().revision() : 0;
  };
  Repository repo{UniqueNs("compact"), "repo", 1};
  std::mutex mu;
  std::vector<std::pair<WatchEventType, std::string>> events;
  auto w = d.WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    events.emplace_back(e.type, e.pipeline_run_key);
  });
  ASSERT_TRUE(w.ok());
  auto seen = [&](WatchEventType type, const std::string& run) {
    absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (absl::Now() < give_up) {
      {
        std::lock_guard<std::mutex> lock(mu);
        for (const auto& [t, r] : events) {
          if (t == type && r == run) return true;
        }
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  };
  const int64_t old_revision = revision();
  for (int i = 0; i < 5; ++i) {
    auto a = d.AcquireSlot(ctx, repo, repo.ns + "/old-" + std::to_string(i));
    ASSERT_TRUE(a.ok() && a->acquired);
    ASSERT_TRUE(d.ReleaseSlot(ctx, a->lease.lease_id, "", "")->released);
  }
  ASSERT_TRUE(seen(WatchEventType::kReleased, repo.ns + "/old-4"));
  ASSERT_TRUE(kv.Compact(ctx, revision()).ok());
  // Twice: the second compaction answer comes within a second of the
  // first, so the driver pauses before reopening the stream (as for a
  // stream that keeps breaking), and the release below is made while no
  // stream is open. Watchers re-read at kResync, so the reopened stream
  // must bring every change after the compaction, not start from "now".
  for (int round = 0; round < 2; ++round) {
    {
      std::lock_guard<std::mutex> lock(mu);
      events.clear();
    }
    static_cast<internal::EtcdDriver&>(d).ResumeWatchForTest(old_revision + 1);
    EXPECT_TRUE(seen(WatchEventType::kResync, ""));
  }
  // The watch goes on after the compaction: a later release is heard.
  auto b = d.AcquireSlot(ctx, repo, repo.ns + "/after");
  ASSERT_TRUE(b.ok() && b->acquired);
  ASSERT_TRUE(d.ReleaseSlot(ctx, b->lease.lease_id, "", "")->released);
  EXPECT_TRUE(seen(WatchEventType::kReleased, repo.ns + "/after"));
  // And no replayed history: the compacted releases were not re-announced.
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [t, r] : events) {
    EXPECT_EQ(r.find("/old-"), std::string::npos) << r;
  }
}

TEST(EtcdDriverTest, CompactionDuringAWatchResyncsOnARealServer) {
  auto c = TestEtcdConfig();
  ASSERT_TRUE(c.ok()) << c.status();
  auto d = NewEtcdDriver(*c);
  ASSERT_TRUE(d.ok()) << d.status();
  auto kv = internal::NewGrpcEtcd(*c, nullptr);
  ASSERT_TRUE(kv.ok()) << kv.status();
  CompactionDuringAWatch(**d, **kv);
}

TEST(EtcdDriverTest, CompactionDuringAWatchResyncsInMockMode) {
  auto c = TestEtcdConfig();
  ASSERT_TRUE(c.ok()) << c.status();
  c->mode = "mock";
  ManualClock clock;
  DriverOptions o;
  o.clock = &clock;
  auto d = NewEtcdDriver(*c, o);
  ASSERT_TRUE(d.ok());
  // Drivers of the mock mode with this clock share this store.
  std::shared_ptr<internal::EtcdKV> kv = internal::SharedMockEtcd(&clock);
  CompactionDuringAWatch(**d, *kv);
}

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

// A mock-mode driver over `kv` (a wrapper around a MockEtcd), with a 60 s
// lease TTL on `clock`.
std::unique_ptr<Driver> MockDriverOver(std::shared_ptr<internal::EtcdKV> kv,
                                       ManualClock* clock) {
  EtcdConfig c;
  c.mode = "mock";
  c.lease_ttl = absl::Seconds(60);
  DriverOptions o;
  o.clock = clock;
  auto d = internal::EtcdDriver::Create(std::move(kv), c, o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *std::move(d) : nullptr;
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
// committed: either the client
// sends it again, as the gRPC client does after a broken connection (the
// second send loses its compare to the first), or the call fails with
// Unavailable.
// Whether `req` succeeds with a put (`put`) or a delete of a slot key.
bool WritesASlot(const internal::etcdpb::TxnRequest& req, bool put) {
  for (const auto& op : req.success()) {
    const std::string& key =
        put ? op.request_put().key() : op.request_delete_range().key();
    if ((put ? op.has_request_put() : op.has_request_delete_range()) &&
        absl::StrContains(key, "/slot/")) {
      return true;
    }
  }
  return false;
}

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

}  // namespace
}  // namespace pac::concurrency
