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
#include <optional>
#include <set>
#include <thread>
#include <tuple>
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
#include "tests/conformance/unique_ns.h"

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
        absl::SleepFor(absl::Milliseconds(5));  // an overlap would show here
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
  // And no replayed history: the compacted releases were not re-announced
  // (old-4's, at the compaction revision, which etcd keeps, may come again).
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [t, r] : events) {
    if (r == repo.ns + "/old-4") continue;
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

// GetRepositoryCounts (what /metrics reads) answers from a cache after
// its first read, kept current by the watch stream: what another driver
// changes (grants, queue entries, releases, limits, a cleanup) shows up as
// a fresh read of every key finds it. A compaction under the stream drops
// the cache; the next call reads again.
TEST(EtcdDriverTest, CountsFollowTheStreamAfterOneRead) {
  auto c = TestEtcdConfig();
  ASSERT_TRUE(c.ok()) << c.status();
  c->lease_ttl = absl::Minutes(1);  // no grant runs out during the test
  auto writer = NewEtcdDriver(*c);
  auto reader_driver = NewEtcdDriver(*c);
  ASSERT_TRUE(writer.ok() && reader_driver.ok());
  auto& reader = static_cast<internal::EtcdDriver&>(**reader_driver);
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(60));
  const std::string ns = UniqueNs("counts");
  using Row = std::tuple<std::string, std::optional<int32_t>, int64_t, int64_t>;
  auto ours = [&](Driver& d) {
    std::vector<Row> out;
    auto counts = d.GetRepositoryCounts(ctx);
    EXPECT_TRUE(counts.ok()) << counts.status();
    if (!counts.ok()) return out;
    for (const RepositoryCounts& r : *counts) {
      if (!absl::StartsWith(r.repository_key, ns + "/")) continue;
      out.emplace_back(r.repository_key, r.limit, r.running, r.queued);
    }
    return out;
  };
  auto fresh = [&] {
    auto d = NewEtcdDriver(*c);
    EXPECT_TRUE(d.ok());
    std::vector<Row> out = ours(**d);
    EXPECT_TRUE((*d)->Close().ok());
    return out;
  };
  // The stream is a few milliseconds behind a write.
  auto agree = [&] {
    const std::vector<Row> want = fresh();
    const absl::Time until = absl::Now() + absl::Seconds(10);
    std::vector<Row> got = ours(reader);
    while (got != want && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(20));
      got = ours(reader);
    }
    EXPECT_EQ(got, want);
    return got;
  };
  Repository a{ns, "a", 1}, b{ns, "b", 3};
  Driver& w = **writer;
  auto x = w.AcquireSlot(ctx, a, ns + "/x");
  ASSERT_TRUE(x.ok() && x->acquired);
  ASSERT_TRUE(w.AcquireSlot(ctx, a, ns + "/w1").ok());
  ASSERT_TRUE(w.AcquireSlot(ctx, a, ns + "/w2").ok());
  EXPECT_FALSE(reader.CountsCachedForTest());
  EXPECT_EQ(ours(reader), (std::vector<Row>{{a.Key(), 1, 1, 2}}));
  EXPECT_TRUE(reader.CountsCachedForTest());

  ASSERT_TRUE(w.ReleaseSlot(ctx, x->lease.lease_id, "", "").ok());  // w1 in
  ASSERT_TRUE(w.SetRepositoryLimit(ctx, b).ok());
  ASSERT_TRUE(w.AcquireSlot(ctx, b, ns + "/y")->acquired);
  EXPECT_EQ(agree(),
            (std::vector<Row>{{a.Key(), 1, 1, 1}, {b.Key(), 3, 1, 0}}));
  ASSERT_TRUE(w.ReleaseSlot(ctx, "", ns + "/w2", a.Key())->dequeued);
  ASSERT_TRUE(w.CleanupRepository(ctx, a.Key()).ok());
  EXPECT_EQ(agree(), (std::vector<Row>{{b.Key(), 3, 1, 0}}));
  EXPECT_TRUE(reader.CountsCachedForTest());

  // A compaction under the stream: dropped, then read again.
  auto kv = internal::NewGrpcEtcd(*c, nullptr);
  ASSERT_TRUE(kv.ok()) << kv.status();
  internal::etcdpb::RangeRequest probe;
  probe.set_key("/");
  probe.set_count_only(true);
  auto now = (*kv)->Range(ctx, probe);
  ASSERT_TRUE(now.ok()) << now.status();
  const int64_t revision = now->header().revision();
  ASSERT_TRUE((*kv)->Compact(ctx, revision).ok());
  reader.ResumeWatchForTest(revision - 1);
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (reader.CountsCachedForTest() && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(reader.CountsCachedForTest());
  ASSERT_TRUE(w.AcquireSlot(ctx, b, ns + "/z")->acquired);
  EXPECT_EQ(agree(), (std::vector<Row>{{b.Key(), 3, 2, 0}}));
  EXPECT_TRUE(reader.CountsCachedForTest());
  EXPECT_TRUE(w.Close().ok());
  EXPECT_TRUE(reader.Close().ok());
}

// The mock store refuses what etcd 3.4 refuses, with the same code: a Txn
// with more than 128 compares, success ops or failure ops (the budget of a
// nested Txn is what its parent leaves), and a request over 1.5 MiB. The
// driver's steps are tested on the mock, so a step that etcd would refuse
// must fail there too.
void RefusesWhatEtcdRefuses(internal::EtcdKV& kv, const std::string& prefix) {
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(10));
  auto puts = [&](int n) {
    internal::etcdpb::TxnRequest txn;
    for (int i = 0; i < n; ++i) {
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key(absl::StrCat(prefix, "k", i));
      put->set_value("v");
    }
    return txn;
  };
  auto at_limit = kv.Txn(ctx, puts(128));
  ASSERT_TRUE(at_limit.ok()) << at_limit.status();
  EXPECT_TRUE(at_limit->succeeded());
  auto over = kv.Txn(ctx, puts(129));
  EXPECT_TRUE(absl::IsInvalidArgument(over.status())) << over.status();
  EXPECT_THAT(over.status().message(), HasSubstr("too many operations"));
  internal::etcdpb::TxnRequest compares;
  for (int i = 0; i < 129; ++i) {
    auto* cmp = compares.add_compare();
    cmp->set_key(absl::StrCat(prefix, "k", i));
    cmp->set_target(internal::etcdpb::Compare::VERSION);
    cmp->set_version(1);
  }
  EXPECT_TRUE(absl::IsInvalidArgument(kv.Txn(ctx, compares).status()));
  // A nested Txn may use what its parent leaves: 64 + 64 fits, 64 + 65 not.
  auto nested = [&](int inner) {
    internal::etcdpb::TxnRequest outer;
    for (int i = 0; i < 64; ++i) {
      *outer.add_success()->mutable_request_txn() =
          i == 0 ? puts(inner) : internal::etcdpb::TxnRequest();
    }
    return outer;
  };
  EXPECT_TRUE(kv.Txn(ctx, nested(64)).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(kv.Txn(ctx, nested(65)).status()));
  internal::etcdpb::PutRequest big;
  big.set_key(prefix + "big");
  big.set_value(std::string(1600 * 1024, 'x'));
  auto too_large = kv.Put(ctx, big);
  EXPECT_TRUE(absl::IsInvalidArgument(too_large.status()))
      << too_large.status();
  EXPECT_THAT(too_large.status().message(), HasSubstr("too large"));
  big.set_value(std::string(1400 * 1024, 'x'));
  EXPECT_TRUE(kv.Put(ctx, big).ok());
}

// Issue 20 (7), end to end: etcd goes away (every connection cut, new ones
// refused) while a slot's lease runs out on the server; once it is back,
// the queue drains with no new call. (The watch resumes from the last
// revision it saw and hears the expiry; a promotion that fails is retried:
// EtcdPromotionTest.AnExpiryPromotionThatFailsIsRetriedAfterTheOutage.)
TEST(EtcdDriverTest, AQueueDrainsAfterAnOutageDuringWhichASlotExpired) {
  auto c = TestEtcdConfig();
  ASSERT_TRUE(c.ok()) << c.status();
  auto fwd = conformance::TcpForwarder::Start(c->endpoints[0]);
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  EtcdConfig through = *c;
  through.endpoints = {(*fwd)->endpoint()};
  through.lease_ttl = absl::Seconds(2);
  through.dial_timeout = absl::Seconds(2);
  auto d = NewEtcdDriver(through);
  ASSERT_TRUE(d.ok()) << d.status();
  Context ctx = Context::WithTimeout(Context(), absl::Seconds(30));
  Repository repo{UniqueNs("outage"), "repo", 1};
  auto x = (*d)->AcquireSlot(ctx, repo, repo.ns + "/x");
  ASSERT_TRUE(x.ok() && x->acquired);  // nobody renews it
  auto w = (*d)->AcquireSlot(ctx, repo, repo.ns + "/w");
  ASSERT_TRUE(w.ok() && !w->acquired);
  (*fwd)->SetDown(true);
  absl::SleepFor(absl::Seconds(4));  // x's lease (2 s) runs out meanwhile
  (*fwd)->SetDown(false);
  auto direct = NewEtcdDriver(*c);
  ASSERT_TRUE(direct.ok());
  bool admitted = false;
  for (absl::Time until = absl::Now() + absl::Seconds(20);
       !admitted && absl::Now() < until;) {
    auto running = (*direct)->GetRunningPipelineRuns(ctx, repo.Key());
    admitted = running.ok() && running->size() == 1 &&
               (*running)[0].pipeline_run_key == repo.ns + "/w";
    if (!admitted) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(admitted) << "the queue did not drain after the outage";
}

TEST(EtcdStoreLimits, ARealServerRefusesOversizedRequests) {
  auto c = TestEtcdConfig();
  ASSERT_TRUE(c.ok()) << c.status();
  auto kv = internal::NewGrpcEtcd(*c, nullptr);
  ASSERT_TRUE(kv.ok()) << kv.status();
  RefusesWhatEtcdRefuses(**kv, absl::StrCat(UniqueNs("limits"), "/"));
}

TEST(EtcdStoreLimits, TheMockRefusesWhatARealServerRefuses) {
  ManualClock clock;
  internal::MockEtcd kv(&clock);
  RefusesWhatEtcdRefuses(kv, "limits/");
}

}  // namespace
}  // namespace pac::concurrency
