// What bench/scale_bench.cc and its etcd floors (scale_etcd_floors.cc)
// share: the sizes of a run, latency samples, timed loops on threads and
// their result, and how a wrong answer stops the bench.
#ifndef PAC_BENCH_SCALE_COMMON_H_
#define PAC_BENCH_SCALE_COMMON_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pac::concurrency::scale {

using SteadyClock = std::chrono::steady_clock;

inline double MsSince(SteadyClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - t0)
      .count();
}

[[noreturn]] inline void Fail(const std::string& what) {
  std::fprintf(stderr, "scale_bench: FAILED: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(absl::StatusOr<T> v, const std::string& what) {
  if (!v.ok()) Fail(what + ": " + v.status().ToString());
  return *std::move(v);
}

inline void MustOk(const absl::Status& s, const std::string& what) {
  if (!s.ok()) Fail(what + ": " + s.ToString());
}

struct Sizes {
  int repos = 10000;
  int per_repo = 10;
  int big = 3;
  int big_queue = 10000;
  int pair_repos = 100;
  int threads = 4;
  int head_releases = 100;
  int status_reads = 200;
  double seconds = 5;
};

// Latencies in milliseconds.
struct Latencies {
  std::vector<double> ms;
  [[nodiscard]] double Quantile(double q) const {
    if (ms.empty()) return 0;
    std::vector<double> s = ms;
    std::sort(s.begin(), s.end());
    size_t i = std::min(s.size() - 1, static_cast<size_t>(q * s.size()));
    return s[i];
  }
};

struct PairResult {
  double pairs_per_second = 0;
  double p99_ms = 0;
};

// `z.threads` threads for `z.seconds`: each calls `make(t)` once for its
// step, then calls the step with n = 0, 1, ... until the time is up,
// timing each call. Calls per second, and a call's p99.
template <typename Make>
PairResult TimedLoops(const Sizes& z, Make make) {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> total{0};
  std::vector<Latencies> lat(z.threads);
  std::vector<std::thread> ts;
  const auto t0 = SteadyClock::now();
  for (int t = 0; t < z.threads; ++t) {
    ts.emplace_back([&, t] {
      auto step = make(t);
      int64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        const auto p0 = SteadyClock::now();
        step(n);
        lat[t].ms.push_back(MsSince(p0));
        ++n;
      }
      total += n;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(z.seconds));
  stop = true;
  for (auto& th : ts) th.join();
  const double secs = MsSince(t0) / 1000;
  Latencies all;
  for (const Latencies& l : lat) {
    all.ms.insert(all.ms.end(), l.ms.begin(), l.ms.end());
  }
  return {total / secs, all.Quantile(0.99)};
}

}  // namespace pac::concurrency::scale

#endif  // PAC_BENCH_SCALE_COMMON_H_
