// PostgreSQL driver benchmarks (make bench; needs the test server's
// PAC_TEST_PG_* settings, which scripts/bench.sh provides).
//
//  * BM_PG_AcquireRelease/repos/threads: each benchmark thread is one client
//    with its own driver (its own connection). A pair is AcquireSlot (no
//    queueing) and, when granted, ReleaseSlot by lease id. Repositories have
//    limit 2, so with many clients on one repository some acquires are
//    refused: "granted" counts the admitted pairs. The floor is pgbench
//    running the same two server-side functions (bench/pg_pair.sql),
//    measured by scripts/bench.sh in the same run.
//  * BM_PG_AcquireRelease_SharedLimit: the same pair on 100 repositories
//    of one shared limit (too high to hold anyone): the feature's cost.
//  * BM_PG_ReleaseToWatcherAcrossProcesses: a child process releases; the
//    parent's watcher is called; latency from the child's release start to
//    the parent's callback (CLOCK_MONOTONIC is shared by both processes).
//    The child's driver is warmed first (see the child's comment).
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "pac/concurrency/concurrency.h"
#include "tests/conformance/pg_test_env.h"

namespace pac::concurrency {
namespace {

int64_t MonoNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::unique_ptr<Driver> NewDriverOrDie(int pool) {
  auto config = conformance::TestPostgreSQLConfig();
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    std::abort();
  }
  config->max_connections = pool;
  config->ssl_mode = "disable";  // as pgbench connects
  auto d = NewPostgreSQLDriver(*config);
  if (!d.ok()) {
    std::fprintf(stderr, "%s\n", d.status().ToString().c_str());
    std::abort();
  }
  return std::move(*d);
}

// Pairs through a driver of its own on `repos` repositories of namespace
// `ns` until the state stops.
void RunPairs(benchmark::State& state, const std::string& ns, int repos) {
  std::unique_ptr<Driver> driver = NewDriverOrDie(1);
  std::vector<Repository> repo_list;
  for (int i = 1; i <= repos; ++i) {
    repo_list.push_back(Repository{ns, absl::StrCat("repo-", i), 2});
  }
  Context ctx;
  AcquireOptions no_queue;
  no_queue.enqueue = false;
  // Warmed before the clock starts, as a long-lived controller's driver
  // is: two pairs on a repository of its own run each function once in
  // this session (PL/pgSQL compiles and plans it, about 10 ms each) and
  // prepare the statements (at their second use), work a 3 s round of
  // sixteen fresh sessions would otherwise count against the driver.
  const Repository warm{ns, absl::StrCat("warm-", state.thread_index()), 2};
  for (int w = 0; w < 2; ++w) {
    auto a = driver->AcquireSlot(
        ctx, warm, absl::StrCat(ns, "/warm-", state.thread_index(), "-", w),
        no_queue);
    if (a.ok() && a->acquired) {
      (void)driver->ReleaseSlot(ctx, a->lease.lease_id, "", "");
    }
  }
  int64_t granted = 0, errors = 0;
  size_t i = state.thread_index();
  for (auto _ : state) {
    const Repository& repo = repo_list[i % repo_list.size()];
    std::string run = absl::StrCat(ns, "/run-", state.thread_index(), "-", i);
    auto a = driver->AcquireSlot(ctx, repo, run, no_queue);
    if (!a.ok()) {
      ++errors;
    } else if (a->acquired) {
      ++granted;
      auto r = driver->ReleaseSlot(ctx, a->lease.lease_id, "", "");
      if (!r.ok()) ++errors;
    }
    ++i;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["granted_per_s"] = benchmark::Counter(
      static_cast<double>(granted), benchmark::Counter::kIsRate);
  state.counters["errors"] = static_cast<double>(errors);
  (void)driver->Close();
}

void BM_PG_AcquireRelease(benchmark::State& state) {
  RunPairs(state, "bench", static_cast<int>(state.range(0)));
}
BENCHMARK(BM_PG_AcquireRelease)
    ->ArgNames({"repos"})
    ->Arg(1)
    ->Arg(100)
    ->Threads(1)
    ->Threads(4)
    ->Threads(16)
    ->UseRealTime();

// The cost of a shared limit: the same pair on 100 repositories that all
// draw from one shared limit, high enough never to hold a run (the pair
// pays for the limit's lock and count, not for waiting), against
// BM_PG_AcquireRelease/repos:100 of the same run.
void BM_PG_AcquireRelease_SharedLimit(benchmark::State& state) {
  static std::once_flag once;
  std::call_once(once, [] {
    std::unique_ptr<Driver> d = NewDriverOrDie(1);
    Context ctx;
    if (!d->SetSharedLimit(ctx, SharedLimit{"bench-team", 100000}).ok()) {
      std::abort();
    }
    RepositoryPolicy p;
    p.shared_limits = {"bench-team"};
    for (int i = 1; i <= 100; ++i) {
      if (!d->SetRepositoryPolicy(ctx, absl::StrCat("bench-shared/repo-", i), p)
               .ok()) {
        std::abort();
      }
    }
    (void)d->Close();
  });
  RunPairs(state, "bench-shared", 100);
}
BENCHMARK(BM_PG_AcquireRelease_SharedLimit)
    ->Threads(1)
    ->Threads(16)
    ->UseRealTime();

void BM_PG_ReleaseToWatcherAcrossProcesses(benchmark::State& state) {
  std::unique_ptr<Driver> driver = NewDriverOrDie(2);
  Context ctx;
  Repository repo{"bench", absl::StrCat("watched-", getpid()), 1};
  std::atomic<int64_t> seen_ns{0};
  std::atomic<int> seen{0};
  auto watch =
      driver->WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kReleased) return;
        seen_ns.store(MonoNanos());
        seen.fetch_add(1);
      });
  if (!watch.ok()) std::abort();
  absl::SleepFor(absl::Milliseconds(200));  // LISTEN is up
  std::vector<double> latencies_ms;
  int expected = 0;
  for (auto _ : state) {
    auto a = driver->AcquireSlot(ctx, repo, "bench/w");
    if (!a.ok() || !a->acquired) {
      std::fprintf(stderr, "the watcher's run was not granted: %s\n",
                   a.ok() ? "queued" : a.status().ToString().c_str());
      std::abort();
    }
    int fds[2];
    if (pipe(fds) != 0) std::abort();
    pid_t pid = fork();
    if (pid == 0) {
      // The child: its own driver, created and warmed before the clock
      // starts, as a long-lived controller's is: its connection is open
      // and has run the acquire and release functions once (a session's
      // first call of a PL/pgSQL function compiles and plans it: about
      // 10 ms, which a fresh process would otherwise measure).
      close(fds[0]);
      std::unique_ptr<Driver> other = NewDriverOrDie(1);
      Repository warm{"bench", absl::StrCat("warm-", getpid()), 1};
      auto w = other->AcquireSlot(Context(), warm, "bench/warm");
      if (!w.ok() || !w->acquired ||
          !other->ReleaseSlot(Context(), w->lease.lease_id, "", "").ok()) {
        _exit(1);
      }
      int64_t start = MonoNanos();
      auto r = other->ReleaseSlot(Context(), a->lease.lease_id, "", "");
      (void)!write(fds[1], &start, sizeof(start));
      _exit(r.ok() && r->released ? 0 : 1);
    }
    close(fds[1]);
    int64_t start = 0;
    (void)!read(fds[0], &start, sizeof(start));
    close(fds[0]);
    ++expected;
    absl::Time give_up = absl::Now() + absl::Seconds(5);
    while (seen.load() < expected && absl::Now() < give_up) {
    }
    int status = 0;
    waitpid(pid, &status, 0);
    // A release that failed, or an event that never came, makes the run
    // worthless: it stops with an error rather than report a latency.
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      state.SkipWithError("the child's release failed");
      break;
    }
    if (seen.load() < expected) {
      state.SkipWithError("the release event never arrived (5 s)");
      break;
    }
    latencies_ms.push_back((seen_ns.load() - start) / 1e6);
  }
  (*watch)->Stop();
  if (latencies_ms.empty()) {
    (void)driver->Close();
    return;
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto pct = [&](double p) {
    size_t idx = std::min(latencies_ms.size() - 1,
                          static_cast<size_t>(p * latencies_ms.size()));
    return latencies_ms[idx];
  };
  state.counters["p50_ms"] = pct(0.5);
  state.counters["p99_ms"] = pct(0.99);
  state.counters["max_ms"] = latencies_ms.back();
  (void)driver->Close();
}
BENCHMARK(BM_PG_ReleaseToWatcherAcrossProcesses)
    ->Iterations(200)
    ->UseRealTime();

}  // namespace
}  // namespace pac::concurrency

BENCHMARK_MAIN();
