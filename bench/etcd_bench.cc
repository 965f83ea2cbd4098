// etcd driver benchmarks (make bench; needs PAC_TEST_ETCD_ENDPOINTS, which
// scripts/bench.sh provides with a throwaway single-node etcd).
//
//  * BM_Etcd_RawPut: the floor. A Put loop over the same gRPC client the
//    driver uses. A pair needs two replicated writes (the acquire Txn and the
//    release Txn), so 0.5x of the Put rate is the ceiling of pairs/s.
//  * BM_Etcd_RawTxnPair, BM_Etcd_RawTxnPairGrouped: the driver's acquire
//    and release Txns as etcd sees them, with no driver; alone, and with
//    the threads' Txns grouped into shared requests by the driver's batcher.
//  * BM_Etcd_AcquireRelease/repos/shared/threads: a pair is AcquireSlot (no
//    queueing) and, when granted, ReleaseSlot by lease id. Limit 2:
//    "granted_per_s" counts admitted pairs. shared:0 gives each thread its
//    own driver (as separate processes); shared:1 has the threads share one
//    (a controller's workers), whose Txns can share requests (group commit).
//  * BM_Etcd_HandOff/repo/shared: 16 clients (threads, with a driver and
//    watch each, or sharing one) queue on 1 repository with limit 2; a
//    client that is queued waits for its kAdmitted event, then releases at
//    once, which admits the next run in the releasing Txn. Counts admitted
//    pairs/s.
//  * BM_Etcd_ReleaseToWatcherAcrossProcesses: another process (this binary
//    re-executed with --release-child) releases; this process's watcher is
//    called. Latency from the child's release start to the callback
//    (CLOCK_MONOTONIC is shared by both processes).
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "pac/concurrency/concurrency.h"
#include "src/etcd/grpc_etcd.h"
#include "src/etcd/txn_batcher.h"
#include "tests/conformance/etcd_test_env.h"

extern char** environ;

namespace pac::concurrency {
namespace {

EtcdConfig ConfigOrDie() {
  auto c = conformance::TestEtcdConfig();
  if (!c.ok()) {
    std::fprintf(stderr, "%s\n", c.status().ToString().c_str());
    std::abort();
  }
  c->lease_ttl = absl::Seconds(60);
  return *c;
}

// etcd keeps every revision until compacted, and an operator's etcd
// compacts (its auto-compaction, or Kubernetes every five minutes). Every
// benchmark starts on a compacted server, so one benchmark's history (run
// names are new every time: their tombstones stay in etcd's index until a
// compaction) does not slow the next, floors included. Thread 0 compacts
// before the loop, which the other threads wait for.
void CompactServer(const benchmark::State& state) {
  if (state.thread_index() != 0) return;
  auto kv = internal::NewGrpcEtcd(ConfigOrDie(), nullptr);
  if (!kv.ok()) std::abort();
  internal::etcdpb::RangeRequest req;
  req.set_key("/");
  auto r = (*kv)->Range(Context(), req);
  if (!r.ok()) std::abort();
  // (Fails only if that revision is compacted already.)
  (void)(*kv)->Compact(Context(), r->header().revision());
}

void BM_Etcd_RawPut(benchmark::State& state) {
  auto kv = internal::NewGrpcEtcd(ConfigOrDie(), nullptr);
  if (!kv.ok()) std::abort();
  Context ctx;
  internal::etcdpb::PutRequest req;
  req.set_key(absl::StrCat("/bench/raw/", state.thread_index()));
  req.set_value("x");
  int64_t errors = 0;
  CompactServer(state);
  for (auto _ : state) {
    if (!(*kv)->Put(ctx, req).ok()) ++errors;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["errors"] = static_cast<double>(errors);
}
BENCHMARK(BM_Etcd_RawPut)->Threads(1)->Threads(16)->MinTime(3)->UseRealTime();

// A second floor: the driver's Txn pair without the driver. The acquire
// with nobody queued under limit 2 (a light grant, docs/etcd.md): compares
// on a `meta` key's mod revision and on both seats, a put of seat 0 (and,
// if a compare fails, a range of the repository's keys), as one Txn. The
// release with nobody queued (a light release): compares on `meta` and on
// the seat's revision, a delete of the seat, and the same range on
// failure. No leases, no cache, no planning: what etcd itself charges for
// the pair.
void RawTxnPairLoop(benchmark::State& state, internal::EtcdKV* kv) {
  Context ctx;
  namespace pb = internal::etcdpb;
  const std::string p =
      absl::StrCat("/bench/rawtxn/", state.thread_index(), "/");
  int64_t meta_mod = 0, errors = 0;
  auto op_put = [](const std::string& k, const std::string& v) {
    pb::RequestOp op;
    op.mutable_request_put()->set_key(k);
    op.mutable_request_put()->set_value(v);
    return op;
  };
  auto op_del = [](const std::string& k) {
    pb::RequestOp op;
    op.mutable_request_delete_range()->set_key(k);
    return op;
  };
  int64_t slot_rev = 0;  // the seat's grant revision (its mod revision)
  // acquire (a light grant under limit 2): compare both seats free, put
  // seat 0; release: compare seat 0, delete it. `meta` is compared by both
  // and written by neither (it stays absent here: mod revision 0).
  auto txn_with = [&](bool acquire) {
    pb::TxnRequest t;
    auto* c = t.add_compare();
    c->set_key(p + "meta");
    c->set_target(pb::Compare::MOD);
    c->set_result(pb::Compare::EQUAL);
    c->set_mod_revision(meta_mod);
    if (acquire) {
      for (const char* seat : {"slot/0", "slot/1"}) {
        c = t.add_compare();
        c->set_key(p + seat);
        c->set_target(pb::Compare::MOD);
        c->set_result(pb::Compare::LESS);
        c->set_mod_revision(1);
      }
      *t.add_success() = op_put(p + "slot/0", "lease/0/commit/bench/run");
    } else {
      c = t.add_compare();
      c->set_key(p + "slot/0");
      c->set_target(pb::Compare::MOD);
      c->set_result(pb::Compare::EQUAL);
      c->set_mod_revision(slot_rev);
      *t.add_success() = op_del(p + "slot/0");
    }
    pb::RequestOp range;
    range.mutable_request_range()->set_key(p);
    range.mutable_request_range()->set_range_end(p.substr(0, p.size() - 1) +
                                                 "0");
    *t.add_failure() = range;  // as the driver: a range on failure only
    auto r = kv->Txn(ctx, t);
    if (!r.ok() || !r->succeeded()) {
      ++errors;
      meta_mod = slot_rev = 0;
      for (const auto& x :
           r.ok() ? r->responses(0).response_range().kvs()
                  : decltype(r->responses(0).response_range().kvs()){}) {
        if (x.key() == p + "meta") meta_mod = x.mod_revision();
        if (x.key() == p + "slot/0") slot_rev = x.mod_revision();
      }
      return;
    }
    slot_rev = acquire ? r->header().revision() : 0;
  };
  CompactServer(state);
  for (auto _ : state) {
    txn_with(/*acquire=*/true);
    txn_with(/*acquire=*/false);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["errors"] = static_cast<double>(errors);
}

void BM_Etcd_RawTxnPair(benchmark::State& state) {
  auto kv = internal::NewGrpcEtcd(ConfigOrDie(), nullptr);
  if (!kv.ok()) std::abort();
  RawTxnPairLoop(state, kv->get());
}
BENCHMARK(BM_Etcd_RawTxnPair)
    ->Threads(1)
    ->Threads(16)
    ->MinTime(3)
    ->UseRealTime();

// The same pairs, the threads' Txns grouped into shared requests by the
// driver's own batcher (group commit) over one gRPC client: what etcd
// gives Txns of this shape when they share requests, the floor of the
// one-driver points at 16 clients.
void BM_Etcd_RawTxnPairGrouped(benchmark::State& state) {
  // Shared by the threads and never destroyed, as SharedDriver() below.
  static internal::TxnBatcher* const batcher = [] {
    auto kv = internal::NewGrpcEtcd(ConfigOrDie(), nullptr);
    if (!kv.ok()) std::abort();
    auto* owner = new std::shared_ptr<internal::TxnBatcher>(
        internal::NewTxnBatcher(*std::move(kv)));
    return owner->get();
  }();
  RawTxnPairLoop(state, batcher);
}
BENCHMARK(BM_Etcd_RawTxnPairGrouped)->Threads(16)->MinTime(3)->UseRealTime();

// One driver per process, shared by the threads of the "shared" variants
// (a controller with many workers); created on first use, never closed.
Driver* SharedDriver() {
  static Driver* const d = [] {
    auto driver = NewEtcdDriver(ConfigOrDie());
    if (!driver.ok()) std::abort();
    return driver->release();
  }();
  return d;
}

// state.range(1) set: the threads share one driver.
std::unique_ptr<Driver> OwnDriverUnlessShared(benchmark::State& state,
                                              Driver** d) {
  if (state.range(1) != 0) {
    *d = SharedDriver();
    return nullptr;
  }
  auto driver = NewEtcdDriver(ConfigOrDie());
  if (!driver.ok()) std::abort();
  *d = driver->get();
  return std::move(*driver);
}

void BM_Etcd_AcquireRelease(benchmark::State& state) {
  const int repos = static_cast<int>(state.range(0));
  Driver* driver = nullptr;
  auto own = OwnDriverUnlessShared(state, &driver);
  Context ctx;
  AcquireOptions no_queue;
  no_queue.enqueue = false;
  int64_t granted = 0, errors = 0;
  size_t i = state.thread_index();
  CompactServer(state);
  for (auto _ : state) {
    Repository repo{"bench", absl::StrCat("repo-", i % repos), 2};
    std::string run = absl::StrCat("bench/run-", state.thread_index(), "-", i);
    auto a = driver->AcquireSlot(ctx, repo, run, no_queue);
    if (!a.ok()) {
      ++errors;
    } else if (a->acquired) {
      ++granted;
      if (!driver->ReleaseSlot(ctx, a->lease.lease_id, "", "").ok()) ++errors;
    }
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["granted_per_s"] = benchmark::Counter(
      static_cast<double>(granted), benchmark::Counter::kIsRate);
  state.counters["errors"] = static_cast<double>(errors);
  if (own) (void)own->Close();
}
BENCHMARK(BM_Etcd_AcquireRelease)
    ->ArgNames({"repos", "shared"})
    ->Args({1, 0})
    ->Args({100, 0})
    ->Threads(1)
    ->Threads(16)
    ->MinTime(3)
    ->UseRealTime();
BENCHMARK(BM_Etcd_AcquireRelease)
    ->ArgNames({"repos", "shared"})
    ->Args({1, 1})
    ->Args({100, 1})
    ->Threads(16)
    ->MinTime(3)
    ->UseRealTime();

// The cost of a shared limit: the pair of BM_Etcd_AcquireRelease/repos:100
// (a driver each), in 100 repositories that all draw from one shared limit
// too high to hold a run. A member's grant reads the limit's count and
// rewrites its `meta`, and its release passes the limit (docs/etcd.md).
void BM_Etcd_AcquireRelease_SharedLimit(benchmark::State& state) {
  constexpr int kRepos = 100;
  auto driver = NewEtcdDriver(ConfigOrDie());
  if (!driver.ok()) std::abort();
  Context ctx;
  if (state.thread_index() == 0) {
    if (!(*driver)
             ->SetSharedLimit(ctx, SharedLimit{"bench-team", 1000000})
             .ok()) {
      std::abort();
    }
    RepositoryPolicy p;
    p.shared_limits = {"bench-team"};
    for (int r = 0; r < kRepos; ++r) {
      if (!(*driver)
               ->SetRepositoryPolicy(ctx, absl::StrCat("bench/repo-", r), p)
               .ok()) {
        std::abort();
      }
    }
  }
  AcquireOptions no_queue;
  no_queue.enqueue = false;
  int64_t granted = 0, errors = 0;
  size_t i = state.thread_index();
  for (auto _ : state) {
    Repository repo{"bench", absl::StrCat("repo-", i % kRepos), 2};
    std::string run = absl::StrCat("bench/run-", state.thread_index(), "-", i);
    auto a = (*driver)->AcquireSlot(ctx, repo, run, no_queue);
    if (!a.ok()) {
      ++errors;
    } else if (a->acquired) {
      ++granted;
      if (!(*driver)->ReleaseSlot(ctx, a->lease.lease_id, "", "").ok()) {
        ++errors;
      }
    }
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["granted_per_s"] = benchmark::Counter(
      static_cast<double>(granted), benchmark::Counter::kIsRate);
  state.counters["errors"] = static_cast<double>(errors);
  if (state.thread_index() == 0) {
    RepositoryPolicy none;  // the other benchmarks' repositories again
    for (int r = 0; r < kRepos; ++r) {
      (void)(*driver)->SetRepositoryPolicy(ctx, absl::StrCat("bench/repo-", r),
                                           none);
    }
  }
  (void)(*driver)->Close();
}
BENCHMARK(BM_Etcd_AcquireRelease_SharedLimit)
    ->Threads(1)
    ->Threads(16)
    ->MinTime(3)
    ->UseRealTime();

void BM_Etcd_HandOff(benchmark::State& state) {
  Driver* driver = nullptr;
  auto own = OwnDriverUnlessShared(state, &driver);
  Context ctx;
  // The same for every thread of one run (a repetition reuses it: leftover
  // runs are released by then).
  const std::string ns =
      absl::StrCat("handoff-", getpid(), "-", state.range(1));
  Repository repo{ns, "repo", 2};
  // Each waiting client is woken alone, by its own condition variable, as
  // a controller's watch hands each admitted run to its worker. (One
  // variable notified for all woke 14 threads per admission: the harness
  // cost more context switches than the driver.)
  std::mutex mu;
  std::set<std::string> admitted;
  std::map<std::string, std::condition_variable*> waiting;
  auto watch =
      driver->WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kAdmitted) return;
        std::lock_guard<std::mutex> lock(mu);
        admitted.insert(e.pipeline_run_key);
        if (auto it = waiting.find(e.pipeline_run_key); it != waiting.end()) {
          it->second->notify_one();
        }
      });
  if (!watch.ok()) std::abort();
  int64_t errors = 0, i = 0;
  CompactServer(state);
  for (auto _ : state) {
    std::string run = absl::StrCat(ns, "/run-", state.thread_index(), "-", i++);
    // As a controller submits: with the PipelineRun's creation time.
    AcquireOptions opts;
    opts.creation_time = absl::Now();
    auto a = driver->AcquireSlot(ctx, repo, run, opts);
    if (!a.ok()) {
      ++errors;
      continue;
    }
    std::string lease = a->lease.lease_id;
    if (!a->acquired) {
      std::condition_variable cv;
      std::unique_lock<std::mutex> lock(mu);
      waiting[run] = &cv;
      const bool ok = cv.wait_for(lock, std::chrono::seconds(30),
                                  [&] { return admitted.count(run) > 0; });
      waiting.erase(run);
      if (!ok) {
        ++errors;
        continue;
      }
      admitted.erase(run);
      lock.unlock();
      lease.clear();  // release by key: the lease was granted by another
    }
    auto r = driver->ReleaseSlot(ctx, lease, run, repo.Key());
    if (!r.ok() || !r->released) ++errors;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["errors"] = static_cast<double>(errors);
  (*watch)->Stop();
  if (own) (void)own->Close();
}
BENCHMARK(BM_Etcd_HandOff)
    ->ArgNames({"repo", "shared"})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Threads(16)
    ->MinTime(3)
    ->UseRealTime();

int64_t MonoNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The child of BM_Etcd_ReleaseToWatcherAcrossProcesses: reads lease ids,
// releases each, and answers when it started.
int ReleaseChild() {
  auto driver = NewEtcdDriver(ConfigOrDie());
  if (!driver.ok()) return 1;
  std::string id;
  while (std::getline(std::cin, id)) {
    int64_t start = MonoNanos();
    auto r = (*driver)->ReleaseSlot(Context(), id, "", "");
    std::cout << (r.ok() && r->released ? start : -1) << std::endl;
  }
  return 0;
}

void BM_Etcd_ReleaseToWatcherAcrossProcesses(benchmark::State& state) {
  auto driver = NewEtcdDriver(ConfigOrDie());
  if (!driver.ok()) std::abort();
  Context ctx;
  Repository repo{"bench", absl::StrCat("watched-", getpid()), 1};
  std::atomic<int64_t> seen_ns{0};
  std::atomic<int> seen{0};
  auto watch = (*driver)->WatchSlotAvailability(
      ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kReleased) return;
        seen_ns.store(MonoNanos());
        seen.fetch_add(1);
      });
  if (!watch.ok()) std::abort();
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) std::abort();
  // posix_spawn, not fork: gRPC's fork handlers must not run here.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_child[0], 0);
  posix_spawn_file_actions_adddup2(&actions, from_child[1], 1);
  posix_spawn_file_actions_addclose(&actions, to_child[1]);
  posix_spawn_file_actions_addclose(&actions, from_child[0]);
  char arg0[] = "etcd_bench", arg1[] = "--release-child";
  char* child_argv[] = {arg0, arg1, nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, child_argv,
                  environ) != 0) {
    std::abort();
  }
  posix_spawn_file_actions_destroy(&actions);
  close(to_child[0]);
  close(from_child[1]);
  FILE* out = fdopen(to_child[1], "w");
  FILE* in = fdopen(from_child[0], "r");
  std::vector<double> latencies_ms;
  int expected = 0;
  CompactServer(state);
  for (auto _ : state) {
    auto a = (*driver)->AcquireSlot(ctx, repo, "bench/w");
    if (!a.ok() || !a->acquired) std::abort();
    std::fprintf(out, "%s\n", a->lease.lease_id.c_str());
    std::fflush(out);
    long long start = -1;
    if (std::fscanf(in, "%lld", &start) != 1 || start < 0) std::abort();
    ++expected;
    absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (seen.load() < expected && absl::Now() < give_up) {
      absl::SleepFor(absl::Microseconds(50));
    }
    if (seen.load() < expected) std::abort();
    latencies_ms.push_back((seen_ns.load() - start) / 1e6);
  }
  std::fclose(out);
  std::fclose(in);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    state.SkipWithError("the releasing child process failed");
    return;
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto pct = [&](double p) {
    return latencies_ms[std::min(latencies_ms.size() - 1,
                                 static_cast<size_t>(p * latencies_ms.size()))];
  };
  state.counters["p50_ms"] = pct(0.50);
  state.counters["p99_ms"] = pct(0.99);
  state.counters["max_ms"] = latencies_ms.back();
  (*watch)->Stop();
  (void)(*driver)->Close();
}
BENCHMARK(BM_Etcd_ReleaseToWatcherAcrossProcesses)->Iterations(200);

}  // namespace
}  // namespace pac::concurrency

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--release-child") {
    return pac::concurrency::ReleaseChild();
  }
  // As pac-concurrency's main does (src/cli/main.cc).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
