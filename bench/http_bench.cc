// The HTTP service on the memory driver: submit+release request pairs per
// second from keep-alive clients, and the latency the HTTP layer adds over
// a direct driver call. The server runs in this process (HttpServer, as
// `pac-concurrency serve` runs it) on 127.0.0.1; the clients are threads
// with one keep-alive connection each, so server and clients share the
// machine's cores, as they would on one box.
//
//   http_bench [seconds per point, default 5]
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "httplib.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/http_server.h"

using namespace pac::concurrency;

namespace {

struct Point {
  double pairs_per_second;
  double us_per_pair;
};

// One client thread's loop: POST a run, DELETE it, until `stop`.
void Client(const std::string& url, int id, std::atomic<bool>* stop,
            std::atomic<int64_t>* pairs, std::atomic<int>* errors) {
  httplib::Client c(url);
  c.set_keep_alive(true);
  c.set_tcp_nodelay(true);
  const std::string repo = "/v1/repositories/bench/r" + std::to_string(id);
  const std::string limit_body = R"({"concurrency_limit": 2})";
  if (auto r = c.Put(repo, limit_body, "application/json");
      !r || r->status != 200) {
    ++*errors;
    return;
  }
  int64_t n = 0;
  while (!stop->load(std::memory_order_relaxed)) {
    const std::string run = "bench/run-" + std::to_string(n % 1000);
    auto a = c.Post(repo + "/runs", R"({"pipeline_run": ")" + run + "\"}",
                    "application/json");
    if (!a || a->status != 200) {
      ++*errors;
      return;
    }
    auto d = c.Delete(repo + "/runs/" + run);
    if (!d || d->status != 200) {
      ++*errors;
      return;
    }
    ++n;
  }
  *pairs += n;
}

Point RunHttp(const std::string& url, int clients, double seconds) {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> pairs{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back(Client, url, i, &stop, &pairs, &errors);
  }
  absl::SleepFor(absl::Seconds(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double took = absl::ToDoubleSeconds(absl::Now() - start);
  if (errors > 0) {
    std::fprintf(stderr, "http_bench: %d client errors\n", errors.load());
    std::exit(1);
  }
  const double rate = pairs.load() / took;
  return Point{rate, clients * 1e6 / rate};
}

Point RunDirect(Driver& driver, double seconds) {
  Context ctx = Context::Background();
  Repository repo{"bench", "direct", 2};
  int64_t n = 0;
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  while (absl::Now() < end) {
    for (int i = 0; i < 1000; ++i, ++n) {
      const std::string run = "bench/run-" + std::to_string(n % 1000);
      auto a = driver.AcquireSlot(ctx, repo, run);
      auto r = driver.ReleaseSlot(ctx, "", run, repo.Key());
      if (!a.ok() || !a->acquired || !r.ok()) std::exit(1);
    }
  }
  const double took = absl::ToDoubleSeconds(absl::Now() - start);
  return Point{n / took, took * 1e6 / n};
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 5.0;
  auto driver = NewMemoryDriver(MemoryConfig{});
  if (!driver.ok()) return 1;
  server::Metrics metrics;
  server::Service service(driver->get(), nullptr, &metrics);
  server::HttpServerOptions options;
  options.port = 0;
  options.threads = 32;
  options.inline_handlers = true;  // as `serve` runs the memory driver
  server::HttpServer http(&service, &metrics, options);
  if (!http.Start().ok()) return 1;
  const std::string url = "http://127.0.0.1:" + std::to_string(http.port());

  Point direct = RunDirect(**driver, seconds);
  std::printf("direct driver call, 1 client:   %10.0f pairs/s  %8.2f us/pair\n",
              direct.pairs_per_second, direct.us_per_pair);
  Point one = RunHttp(url, 1, seconds);
  std::printf("HTTP, 1 keep-alive client:      %10.0f pairs/s  %8.2f us/pair\n",
              one.pairs_per_second, one.us_per_pair);
  std::printf("HTTP layer adds per request:    %10.2f us\n",
              (one.us_per_pair - direct.us_per_pair) / 2);
  for (int clients : {4, 16}) {
    Point p = RunHttp(url, clients, seconds);
    std::printf(
        "HTTP, %2d keep-alive clients:    %10.0f pairs/s  %8.2f us/pair\n",
        clients, p.pairs_per_second, p.us_per_pair);
  }
  http.Stop();
  (void)(*driver)->Close();
  return 0;
}
