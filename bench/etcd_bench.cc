// etcd driver benchmarks (make bench; needs PAC_TEST_ETCD_ENDPOINTS, which
// scripts/bench.sh provides with a throwaway single-node etcd).
//
//  * BM_Etcd_RawPut: the floor. A Put loop over the same gRPC client the
//    driver uses. A pair needs two replicated writes (the acquire Txn and the
//    release Txn), so 0.5x of the Put rate is the ceiling of pairs/s.
//  * BM_Etcd_AcquireRelease/repos/threads: each thread a client with its own
//    driver; a pair is AcquireSlot (no queueing) and, when granted,
//    ReleaseSlot by lease id. Limit 2: "granted_per_s" counts admitted pairs.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "pac/concurrency/concurrency.h"
#include "src/etcd/grpc_etcd.h"
#include "tests/conformance/etcd_test_env.h"

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

void BM_Etcd_RawPut(benchmark::State& state) {
  auto kv = internal::NewGrpcEtcd(ConfigOrDie(), nullptr);
  if (!kv.ok()) std::abort();
  Context ctx;
  internal::etcdpb::PutRequest req;
  req.set_key(absl::StrCat("/bench/raw/", state.thread_index()));
  req.set_value("x");
  int64_t errors = 0;
  for (auto _ : state) {
    if (!(*kv)->Put(ctx, req).ok()) ++errors;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["errors"] = static_cast<double>(errors);
}
BENCHMARK(BM_Etcd_RawPut)->Threads(1)->Threads(16)->MinTime(3)->UseRealTime();

void BM_Etcd_AcquireRelease(benchmark::State& state) {
  const int repos = static_cast<int>(state.range(0));
  auto driver = NewEtcdDriver(ConfigOrDie());
  if (!driver.ok()) std::abort();
  Context ctx;
  AcquireOptions no_queue;
  no_queue.enqueue = false;
  int64_t granted = 0, errors = 0;
  size_t i = state.thread_index();
  for (auto _ : state) {
    Repository repo{"bench", absl::StrCat("repo-", i % repos), 2};
    std::string run = absl::StrCat("bench/run-", state.thread_index(), "-", i);
    auto a = (*driver)->AcquireSlot(ctx, repo, run, no_queue);
    if (!a.ok()) {
      ++errors;
    } else if (a->acquired) {
      ++granted;
      if (!(*driver)->ReleaseSlot(ctx, a->lease.lease_id, "", "").ok())
        ++errors;
    }
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["granted_per_s"] = benchmark::Counter(
      static_cast<double>(granted), benchmark::Counter::kIsRate);
  state.counters["errors"] = static_cast<double>(errors);
  (void)(*driver)->Close();
}
BENCHMARK(BM_Etcd_AcquireRelease)
    ->ArgNames({"repos"})
    ->Arg(1)
    ->Arg(100)
    ->Threads(1)
    ->Threads(16)
    ->MinTime(3)
    ->UseRealTime();

}  // namespace
}  // namespace pac::concurrency

BENCHMARK_MAIN();
