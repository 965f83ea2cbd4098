// Memory driver benchmarks (make bench).
//
//  * BM_Floor_AcquireRelease: the floor. A bare std::mutex-protected hash map
//    doing the same bookkeeping as an acquire+release pair (find the
//    repository, check its count against the limit, record the run; then
//    erase it), and nothing else.
//  * BM_Memory_AcquireRelease: the same pair through the memory driver (key
//    validation, lease ids, fencing tokens, expiry, FIFO queue checks).
//  * BM_Memory_ReleaseToWatcher: time from the start of a release to the
//    watcher's callback on the dispatcher thread; p50/p99 as counters.
//
// Both pair benchmarks take (repositories, threads); each thread cycles over
// 64 run names of its own in a repository chosen round-robin.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmark/benchmark.h"
#include "pac/concurrency/concurrency.h"

namespace pac::concurrency {
namespace {

constexpr int kRunsPerThread = 64;
constexpr int32_t kLimit = 1'000'000;  // never reached: every acquire grants

std::vector<std::string> RepoKeys(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(absl::StrCat("bench/repo-", i));
  return out;
}

std::vector<std::string> RunKeys(int thread) {
  std::vector<std::string> out;
  for (int i = 0; i < kRunsPerThread; ++i) {
    out.push_back(absl::StrCat("bench/run-", thread, "-", i));
  }
  return out;
}

// --- The floor --------------------------------------------------------------

struct FloorBook {
  int64_t count = 0;
  int32_t limit = kLimit;
  std::unordered_set<std::string> runs;
};

struct Floor {
  std::mutex mu;
  std::unordered_map<std::string, FloorBook> repos;

  bool Acquire(const std::string& repo, const std::string& run) {
    std::lock_guard<std::mutex> lock(mu);
    FloorBook& b = repos[repo];
    if (b.count >= b.limit) return false;
    if (!b.runs.insert(run).second) return true;
    ++b.count;
    return true;
  }
  void Release(const std::string& repo, const std::string& run) {
    std::lock_guard<std::mutex> lock(mu);
    FloorBook& b = repos[repo];
    if (b.runs.erase(run) > 0) --b.count;
  }
};

Floor* g_floor = nullptr;

void BM_Floor_AcquireRelease(benchmark::State& state) {
  const int repos = static_cast<int>(state.range(0));
  if (state.thread_index() == 0) g_floor = new Floor();
  std::vector<std::string> repo_keys = RepoKeys(repos);
  std::vector<std::string> runs = RunKeys(state.thread_index());
  size_t i = state.thread_index();
  for (auto _ : state) {
    const std::string& repo = repo_keys[i % repo_keys.size()];
    const std::string& run = runs[i % runs.size()];
    bool ok = g_floor->Acquire(repo, run);
    benchmark::DoNotOptimize(ok);
    g_floor->Release(repo, run);
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
  // The floor is leaked on purpose: other threads may still be in their last
  // iteration when thread 0 leaves the loop.
}
BENCHMARK(BM_Floor_AcquireRelease)
    ->ArgNames({"repos"})
    ->Arg(1)
    ->Arg(100)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

// The floor with the driver's bookkeeping: a lease record per run (id,
// acquired/expires time from the clock, fencing token) and an index from
// lease id to run for release by id. No key checks, no queue, no expiry
// sweep, no watchers.
struct BookFloor {
  struct LeaseRec {
    std::string id;
    absl::Time acquired_at, expires_at;
    int64_t token;
  };
  struct Repo {
    int32_t limit = kLimit;
    std::unordered_map<std::string, LeaseRec> running;
  };
  std::mutex mu;
  std::unordered_map<std::string, Repo> repos;
  std::unordered_map<std::string, std::pair<std::string, std::string>> index;
  int64_t next = 0;

  // Returns the lease id, or "" when the repository is full.
  std::string Acquire(const std::string& repo, const std::string& run) {
    absl::Time now = Clock::Real()->Now();
    std::lock_guard<std::mutex> lock(mu);
    Repo& r = repos[repo];
    if (auto it = r.running.find(run); it != r.running.end()) {
      return it->second.id;
    }
    if (static_cast<int64_t>(r.running.size()) >= r.limit) return "";
    std::string id = absl::StrCat("f", ++next);
    r.running[run] = LeaseRec{id, now, now + absl::Minutes(30), next};
    index[id] = {repo, run};
    return id;
  }
  void Release(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = index.find(id);
    if (it == index.end()) return;
    repos[it->second.first].running.erase(it->second.second);
    index.erase(it);
  }
};

BookFloor* g_book = nullptr;

void BM_FloorWithLeases_AcquireRelease(benchmark::State& state) {
  const int repos = static_cast<int>(state.range(0));
  if (state.thread_index() == 0) g_book = new BookFloor();
  std::vector<std::string> repo_keys = RepoKeys(repos);
  std::vector<std::string> runs = RunKeys(state.thread_index());
  size_t i = state.thread_index();
  for (auto _ : state) {
    const std::string& run = runs[i % runs.size()];
    std::string id = g_book->Acquire(repo_keys[i % repo_keys.size()], run);
    benchmark::DoNotOptimize(id);
    g_book->Release(id);
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FloorWithLeases_AcquireRelease)
    ->ArgNames({"repos"})
    ->Arg(1)
    ->Arg(100)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

// --- The memory driver -----------------------------------------------------

Driver* g_driver = nullptr;

// Pairs on g_driver over `repos` repositories until the state stops.
void RunPairs(benchmark::State& state, int repos) {
  std::vector<Repository> repo_list;
  for (const std::string& key : RepoKeys(repos)) {
    repo_list.push_back(*Repository::FromKey(key, kLimit));
  }
  std::vector<std::string> repo_keys = RepoKeys(repos);
  std::vector<std::string> runs = RunKeys(state.thread_index());
  Context ctx = Context::Background();
  size_t i = state.thread_index();
  int64_t failures = 0;
  for (auto _ : state) {
    size_t r = i % repo_list.size();
    const std::string& run = runs[i % runs.size()];
    auto acquired = g_driver->AcquireSlot(ctx, repo_list[r], run);
    if (!acquired.ok() || !acquired->acquired) {
      ++failures;
    } else {
      auto released = g_driver->ReleaseSlot(ctx, acquired->lease.lease_id, run,
                                            repo_keys[r]);
      if (!released.ok()) ++failures;
    }
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["failures"] = static_cast<double>(failures);
}

void BM_Memory_AcquireRelease(benchmark::State& state) {
  if (state.thread_index() == 0) {
    g_driver = NewMemoryDriver(MemoryConfig{absl::Minutes(30)})->release();
  }
  RunPairs(state, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_Memory_AcquireRelease)
    ->ArgNames({"repos"})
    ->Arg(1)
    ->Arg(100)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

// The cost of a shared limit: the pair on 100 repositories that all draw
// from one shared limit too high to hold a run, against
// BM_Memory_AcquireRelease/repos:100 (a member's grant takes every shard's
// lock and counts the members' leases).
void BM_Memory_AcquireRelease_SharedLimit(benchmark::State& state) {
  constexpr int kRepos = 100;
  if (state.thread_index() == 0) {
    g_driver = NewMemoryDriver(MemoryConfig{absl::Minutes(30)})->release();
    Context ctx = Context::Background();
    if (!g_driver->SetSharedLimit(ctx, SharedLimit{"bench-team", 1000000})
             .ok()) {
      std::abort();
    }
    RepositoryPolicy p;
    p.shared_limits = {"bench-team"};
    for (const std::string& key : RepoKeys(kRepos)) {
      if (!g_driver->SetRepositoryPolicy(ctx, key, p).ok()) std::abort();
    }
  }
  RunPairs(state, kRepos);
}
BENCHMARK(BM_Memory_AcquireRelease_SharedLimit)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

void BM_Memory_ReleaseToWatcher(benchmark::State& state) {
  auto driver = NewMemoryDriver(MemoryConfig{absl::Minutes(30)});
  Repository repo = *Repository::FromKey("bench/watched", 1);
  Context ctx = Context::Background();
  std::atomic<int64_t> seen_at{0};
  std::atomic<int64_t> releases_seen{0};
  auto watch = (*driver)->WatchSlotAvailability(
      ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kReleased) return;
        seen_at.store(absl::GetCurrentTimeNanos(), std::memory_order_release);
        releases_seen.fetch_add(1, std::memory_order_release);
      });
  std::vector<double> latencies_us;
  latencies_us.reserve(state.max_iterations);
  int64_t expected = 0;
  for (auto _ : state) {
    auto a = (*driver)->AcquireSlot(ctx, repo, "bench/w");
    int64_t start = absl::GetCurrentTimeNanos();
    (void)(*driver)->ReleaseSlot(ctx, a->lease.lease_id, "", "");
    ++expected;
    while (releases_seen.load(std::memory_order_acquire) < expected) {
    }
    latencies_us.push_back((seen_at.load(std::memory_order_acquire) - start) /
                           1000.0);
  }
  (*watch)->Stop();
  std::sort(latencies_us.begin(), latencies_us.end());
  auto pct = [&](double p) {
    if (latencies_us.empty()) return 0.0;
    size_t idx = std::min(latencies_us.size() - 1,
                          static_cast<size_t>(p * latencies_us.size()));
    return latencies_us[idx];
  };
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["max_us"] = latencies_us.empty() ? 0 : latencies_us.back();
}
BENCHMARK(BM_Memory_ReleaseToWatcher)->Iterations(20000)->UseRealTime();

}  // namespace
}  // namespace pac::concurrency

BENCHMARK_MAIN();
