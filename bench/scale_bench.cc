// What a large installation costs, per driver: the same operations on a
// nearly empty backend and on one loaded with 10,000 repositories of 10
// queued runs each plus 3 repositories of 10,000 queued runs each (130,000
// queued runs), in the same run, on the same backend, with their ratio.
//
//   scale_bench --driver memory|postgresql|etcd [--small] [--seconds S]
//               [--settle S] [--cleanup]
//
// Measured in both phases:
//   pairs     acquire+release pairs/s and p99 through the driver, 4 threads
//             on 100 repositories of limit 2 (new run names each pair);
//   head      a release that admits the head of a 10,000-long queue (limit
//             1; each release hands the slot to the next run, checked to be
//             the oldest);
//   status    GET /v1/repositories/{ns}/{name} of a repository with 10
//             queued runs, and of one with 10,000;
//   listing   GET /v1/repositories in pages of 500: every page, and the
//             walk over all of them (checked to list each of ours once);
//   metrics   GET /metrics: time and size (checked to hold a gauge of a
//             repository this server never served);
// and once loaded:
//   restart   a new driver, service and HTTP server on the loaded backend:
//             time until a status answers, until a watch of a big
//             repository and its snapshot are in hand (a complete view),
//             and until that watch hears a release made elsewhere;
//   memory    resident memory of this process (the server) and of the
//             backend (PostgreSQL: database size; etcd: the server's RSS)
//             per 1,000 queued runs.
// On etcd, floors beside the pairs in each phase: raw Puts, and raw pairs
// of the driver's two Txns without the driver (RawEtcdTxnPairs), and
// beside the status, its raw reads.
//
// The servers are the throwaway ones of scripts/pg-test-server.sh and
// scripts/etcd-test-server.sh (PAC_TEST_* settings). --small (make test)
// loads 200 repositories and checks that every step still works, not its
// speed. Any wrong answer exits 1.
#include <libpq-fe.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/scale_common.h"
#include "bench/scale_etcd_floors.h"
#include "httplib.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/http_server.h"
#include "src/server/metrics.h"
#include "src/server/service.h"
#include "tests/conformance/etcd_test_env.h"
#include "tests/conformance/pg_test_env.h"

using namespace pac::concurrency;
using namespace pac::concurrency::scale;
using Json = nlohmann::json;

namespace {

int64_t RssKb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

int64_t SelfRssKb() { return RssKb(getpid()); }

// The backend's own footprint: PostgreSQL's database size, etcd's RSS
// (kB); -1 for the memory driver (it is this process).
int64_t BackendKb(const std::string& driver) {
  using conformance::EnvOr;
  if (driver == "postgresql") {
    const std::string port = EnvOr("PAC_TEST_PG_PORT");
    const std::string db = EnvOr("PAC_TEST_PG_DATABASE", "pac_concurrency");
    const std::string user = EnvOr("PAC_TEST_PG_USER", "pac_user");
    const std::string password =
        conformance::ReadFileOrEmpty(EnvOr("PAC_TEST_PG_PASSWORD_FILE"));
    const char* keys[] = {"host",     "port",    "dbname", "user",
                          "password", "sslmode", nullptr};
    const char* values[] = {"127.0.0.1",  port.c_str(),     db.c_str(),
                            user.c_str(), password.c_str(), "disable",
                            nullptr};
    PGconn* conn = PQconnectdbParams(keys, values, 0);
    int64_t kb = -1;
    if (PQstatus(conn) == CONNECTION_OK) {
      PGresult* r =
          PQexec(conn, "SELECT pg_database_size(current_database()) / 1024");
      if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        kb = std::stoll(PQgetvalue(r, 0, 0));
      }
      PQclear(r);
    }
    PQfinish(conn);
    return kb;
  }
  if (driver == "etcd") {
    std::ifstream pids(EnvOr("PAC_TEST_ETCD_PIDS"));
    pid_t pid = 0;
    if (pids >> pid) return RssKb(pid);
  }
  return -1;
}

DriverConfig ConfigFor(const std::string& driver, const std::string& tag) {
  DriverConfig c;
  c.driver = driver;
  if (driver == "memory") {
    MemoryConfig m;
    m.lease_ttl = absl::Hours(1);
    c.memory = m;
  } else if (driver == "postgresql") {
    PostgreSQLConfig p =
        Must(conformance::TestPostgreSQLConfig(), "PostgreSQL");
    p.lease_ttl = absl::Hours(1);
    p.max_connections = 16;
    c.postgresql = p;
  } else if (driver == "etcd") {
    EtcdConfig e = Must(conformance::TestEtcdConfig(), "etcd");
    e.prefix = absl::StrCat("/pac-", tag, "/");
    e.lease_ttl = absl::Hours(1);
    c.etcd = e;
  } else {
    Fail("--driver: memory, postgresql or etcd, not " + driver);
  }
  return c;
}

// The driver, and the HTTP service over it on 127.0.0.1 (as `serve`).
struct Stack {
  std::unique_ptr<Driver> driver;
  std::unique_ptr<server::Metrics> metrics;
  std::unique_ptr<server::Service> service;
  std::unique_ptr<server::HttpServer> http;

  static std::unique_ptr<Stack> Start(const DriverConfig& config) {
    auto s = std::make_unique<Stack>();
    s->driver = Must(NewDriver(config), "driver");
    s->metrics = std::make_unique<server::Metrics>();
    s->service = std::make_unique<server::Service>(s->driver.get(), nullptr,
                                                   s->metrics.get());
    server::HttpServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.threads = 16;
    s->http = std::make_unique<server::HttpServer>(s->service.get(),
                                                   s->metrics.get(), o);
    MustOk(s->http->Start(), "HTTP server");
    return s;
  }
  ~Stack() {
    if (http) http->Stop();
    if (driver) (void)driver->Close();
  }
};

// Queues `queued` runs behind one running run in `repo` (limit 1), in
// parts the driver takes; returns the running run's lease.
Lease ImportQueue(Driver* d, const Repository& repo, int queued,
                  absl::Time base) {
  Lease running;
  // Parts of kMaxImportRuns runs; the first carries the running run.
  const size_t part = Driver::kMaxImportRuns;
  for (size_t from = 0, first = 1;
       from < static_cast<size_t>(queued) || first == 1; first = 0) {
    ImportRequest req;
    req.set_limit = true;
    if (first == 1) req.running.push_back(repo.Key() + "-run");
    const size_t to = std::min<size_t>(queued, from + part - first);
    for (size_t i = from; i < to; ++i) {
      req.waiting.push_back({absl::StrFormat("%s-q%06d", repo.Key(), i),
                             base + absl::Seconds(static_cast<int64_t>(i))});
    }
    from = to;
    auto r = Must(d->ImportRuns(Context::Background(), repo, req),
                  "import " + repo.Key());
    if (first == 1) {
      if (r.running.size() != 1 || r.queued.size() != req.waiting.size()) {
        Fail("import " + repo.Key() + ": not 1 running and all queued");
      }
      running = r.running[0];
    }
  }
  return running;
}

// `threads` threads, each on its own repositories, acquire a new run and
// release it by lease, for `seconds`.
PairResult Pairs(Driver* d, const std::string& ns, const Sizes& z,
                 const std::string& phase) {
  return TimedLoops(z, [&](int t) {
    return [&, t](int64_t n) {
      const Context ctx = Context::Background();
      const int r =
          t + z.threads * static_cast<int>(n % (z.pair_repos / z.threads));
      Repository repo{ns, absl::StrFormat("pair-%03d", r), 2};
      const std::string run = absl::StrCat(ns, "/p-", phase, "-", t, "-", n);
      auto a = Must(d->AcquireSlot(ctx, repo, run), "acquire " + run);
      if (!a.acquired) Fail("pair " + run + " was queued under limit 2");
      auto rel = Must(d->ReleaseSlot(ctx, a.lease.lease_id, run, repo.Key()),
                      "release " + run);
      if (!rel.released) Fail("pair " + run + " was not released");
    };
  });
}

// `count` releases in a row in `repo_key` (limit 1, queue named by
// ImportQueue): each must admit the oldest queued run. Returns the p99 in
// ms; `*lease` is the holder's lease, then the last admitted run's.
double HeadReleases(Driver* d, const std::string& repo_key, int first_index,
                    int count, Lease* lease) {
  Latencies lat;
  for (int i = 0; i < count; ++i) {
    const std::string expected =
        absl::StrFormat("%s-q%06d", repo_key, first_index + i);
    const auto t0 = SteadyClock::now();
    auto r = Must(d->ReleaseSlot(Context::Background(), lease->lease_id,
                                 lease->pipeline_run_key, repo_key),
                  "release in " + repo_key);
    lat.ms.push_back(MsSince(t0));
    if (!r.released || r.admitted.size() != 1 ||
        r.admitted[0].pipeline_run_key != expected) {
      Fail(absl::StrCat(
          "release in ", repo_key, " admitted ",
          r.admitted.empty() ? "nothing" : r.admitted[0].pipeline_run_key,
          ", not the head ", expected));
    }
    *lease = r.admitted[0];
  }
  return lat.Quantile(0.99);
}

httplib::Client Client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_keep_alive(true);
  c.set_read_timeout(120, 0);
  return c;
}

// p99 of `count` GETs of a repository's status (ms); checks its sizes.
double StatusP99(int port, const std::string& repo_key, int count,
                 size_t want_queued) {
  httplib::Client c = Client(port);
  Latencies lat;
  for (int i = 0; i < count; ++i) {
    const auto t0 = SteadyClock::now();
    auto r = c.Get("/v1/repositories/" + repo_key);
    lat.ms.push_back(MsSince(t0));
    if (!r || r->status != 200) Fail("status of " + repo_key);
    if (i == 0) {
      Json j = Json::parse(r->body);
      if (j["queue_depth"].get<size_t>() != want_queued ||
          j["queued"].size() != want_queued || j["in_use"] != 1) {
        Fail(absl::StrCat("status of ", repo_key, ": ", j["queue_depth"].dump(),
                          " queued, want ", want_queued));
      }
    }
  }
  return lat.Quantile(0.99);
}

struct Listing {
  double total_ms = 0;
  double max_page_ms = 0;
  size_t pages = 0;
};

// Walks GET /v1/repositories in pages of 500; each repository of `ns`
// must be listed once, and there must be `want` of them.
Listing ListAll(int port, const std::string& ns, size_t want) {
  httplib::Client c = Client(port);
  Listing out;
  std::set<std::string> seen;
  std::string after;
  const auto t0 = SteadyClock::now();
  while (true) {
    std::string path = "/v1/repositories?limit=500";
    if (!after.empty()) path += "&after=" + after;
    const auto p0 = SteadyClock::now();
    auto r = c.Get(path);
    out.max_page_ms = std::max(out.max_page_ms, MsSince(p0));
    ++out.pages;
    if (!r || r->status != 200) Fail("listing page after " + after);
    Json j = Json::parse(r->body);
    for (const Json& repo : j["repositories"]) {
      const std::string key = repo["repository"];
      if (key.rfind(ns + "/", 0) != 0) continue;
      if (!seen.insert(key).second) Fail("listing: " + key + " twice");
    }
    if (!j.contains("next")) break;
    after = j["next"];
  }
  out.total_ms = MsSince(t0);
  if (seen.size() != want) {
    Fail(absl::StrCat("listing: ", seen.size(), " repositories of ", ns,
                      ", want ", want));
  }
  return out;
}

struct MetricsRead {
  double ms = 0;
  size_t bytes = 0;
};

// One scrape; it must hold a queue-depth gauge of `repo_key` at `depth`.
MetricsRead Scrape(int port, const std::string& repo_key, int depth) {
  httplib::Client c = Client(port);
  const auto t0 = SteadyClock::now();
  auto r = c.Get("/metrics");
  MetricsRead out{MsSince(t0), r ? r->body.size() : 0};
  const std::string line = absl::StrCat("pac_queue_depth{repository=\"",
                                        repo_key, "\"} ", depth, "\n");
  if (!r || r->status != 200 || r->body.find(line) == std::string::npos) {
    Fail("metrics: no line " + line);
  }
  return out;
}

struct Phase {
  PairResult raw_puts;                  // etcd only
  PairResult raw_txn_pairs;             // etcd only
  std::pair<double, double> raw_reads;  // etcd only: Range, TTL p99 (ms)
  PairResult pairs;
  double head_p99_ms = 0;
  double status_small_p99_ms = 0;
  double status_big_p99_ms = 0;
  Listing listing;
  MetricsRead metrics;
};

// Loads `z.repos` repositories of one running and `z.per_repo` queued
// runs, in batches as large as the driver takes, on 4 threads.
void LoadRepositories(Driver* d, const std::string& ns, const Sizes& z,
                      absl::Time base) {
  const ImportCapacity cap = d->GetImportCapacity();
  const size_t cost = cap.per_repository + 1 + z.per_repo;
  const int per_batch = std::max<int>(
      1, static_cast<int>(std::min<size_t>(cap.runs / cost, 1000)));
  std::atomic<int> next{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int from; (from = next.fetch_add(per_batch)) < z.repos;) {
        std::vector<RepositoryImport> parts;
        for (int i = from; i < std::min(z.repos, from + per_batch); ++i) {
          RepositoryImport p;
          p.repository = Repository{ns, absl::StrFormat("r%05d", i), 1};
          const std::string key = p.repository.Key();
          p.request.set_limit = true;
          p.request.running.push_back(key + "-run");
          for (int q = 0; q < z.per_repo; ++q) {
            p.request.waiting.push_back(
                {absl::StrFormat("%s-q%06d", key, q), base + absl::Seconds(q)});
          }
          parts.push_back(std::move(p));
        }
        auto r = Must(d->ImportBatch(Context::Background(), parts),
                      absl::StrCat("import batch at ", from));
        if (r.size() != parts.size()) Fail("import batch: answers missing");
      }
    });
  }
  for (auto& th : ts) th.join();
}

struct Restart {
  double answer_ms = 0;
  double view_ms = 0;
  double heard_ms = 0;
};

// A second stack on the loaded backend, as after a server restart.
Restart RestartOn(const DriverConfig& config, Driver* old_driver,
                  const std::string& big_key, Lease* big_lease,
                  size_t big_queued) {
  Restart out;
  const auto t0 = SteadyClock::now();
  auto s = Stack::Start(config);
  httplib::Client c = Client(s->http->port());
  while (true) {
    auto r = c.Get("/v1/repositories/" + big_key);
    if (r && r->status == 200) break;
    if (MsSince(t0) > 60000) Fail("restart: no status within 60 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  out.answer_ms = MsSince(t0);
  std::mutex mu;
  std::condition_variable cv;
  bool heard = false;
  auto watch = Must(s->driver->WatchSlotAvailability(
                        Context::Background(), big_key,
                        [&](const WatchEvent& e) {
                          if (e.type != WatchEventType::kReleased) return;
                          std::lock_guard<std::mutex> l(mu);
                          heard = true;
                          cv.notify_all();
                        }),
                    "restart: watch");
  auto snap =
      Must(s->driver->GetRepositorySnapshot(Context::Background(), big_key),
           "restart: snapshot");
  out.view_ms = MsSince(t0);
  if (snap.queued.size() != big_queued || snap.running.size() != 1) {
    Fail(absl::StrCat("restart: snapshot of ", big_key, " has ",
                      snap.queued.size(), " queued, want ", big_queued));
  }
  const auto r0 = SteadyClock::now();
  auto rel =
      Must(old_driver->ReleaseSlot(Context::Background(), big_lease->lease_id,
                                   big_lease->pipeline_run_key, big_key),
           "restart: release");
  if (rel.admitted.size() != 1) Fail("restart: release admitted nobody");
  *big_lease = rel.admitted[0];
  std::unique_lock<std::mutex> l(mu);
  if (!cv.wait_for(l, std::chrono::seconds(30), [&] { return heard; })) {
    Fail("restart: the new watch did not hear a release");
  }
  out.heard_ms = MsSince(r0);
  l.unlock();
  watch->Stop();
  return out;
}

std::string Ratio(double loaded, double empty) {
  if (empty <= 0) return "-";
  return absl::StrFormat("%.2f", loaded / empty);
}

}  // namespace

int main(int argc, char** argv) {
  std::string driver_name;
  Sizes z;
  bool small = false, cleanup = false;
  double settle = 0;  // seconds idle after the load, before measuring
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--driver" && i + 1 < argc) {
      driver_name = argv[++i];
    } else if (a == "--small") {
      small = true;
    } else if (a == "--cleanup") {
      cleanup = true;
    } else if (a == "--seconds" && i + 1 < argc) {
      z.seconds = std::stod(argv[++i]);
    } else if (a == "--settle" && i + 1 < argc) {
      settle = std::stod(argv[++i]);
    } else {
      Fail(
          "usage: scale_bench --driver memory|postgresql|etcd [--small] "
          "[--seconds S] [--settle S] [--cleanup]");
    }
  }
  if (small) {
    z.repos = 200;
    z.per_repo = 3;
    z.big = 1;
    z.big_queue = 300;
    z.pair_repos = 8;
    z.head_releases = 20;
    z.status_reads = 5;
    z.seconds = 0.3;
  }
  const std::string tag = absl::StrCat("scale-", getpid());
  const std::string ns = tag;
  const DriverConfig config = ConfigFor(driver_name, tag);
  auto stack = Stack::Start(config);
  Driver* d = stack->driver.get();
  const int port = stack->http->port();
  const absl::Time base = absl::Now() - absl::Hours(24);

  // The nearly empty backend: the control repositories, shaped as the
  // loaded ones, and the pair repositories.
  const Repository ctl_small{ns, "ctl-small", 1};
  const Repository ctl_big{ns, "ctl-big", 1};
  ImportQueue(d, ctl_small, z.per_repo, base);
  Lease ctl_lease =
      ImportQueue(d, ctl_big, z.big_queue + z.head_releases, base);
  const size_t fixed_repos = 2 + z.pair_repos;
  Phase empty;
  if (driver_name == "etcd") {
    empty.raw_puts = RawEtcdPuts(config, z, tag);
    empty.raw_txn_pairs = RawEtcdTxnPairs(config, z, tag);
  }
  empty.pairs = Pairs(d, ns, z, "e");
  empty.head_p99_ms =
      HeadReleases(d, ctl_big.Key(), 0, z.head_releases, &ctl_lease);
  empty.status_small_p99_ms =
      StatusP99(port, ctl_small.Key(), z.status_reads, z.per_repo);
  if (driver_name == "etcd") {
    empty.raw_reads = RawEtcdReads(config, d, ctl_small.Key(), z.status_reads);
  }
  empty.status_big_p99_ms = StatusP99(
      port, ctl_big.Key(), std::max(3, z.status_reads / 20), z.big_queue);
  empty.listing = ListAll(port, ns, fixed_repos);
  empty.metrics = Scrape(port, ctl_small.Key(), z.per_repo);

  // The load.
  const int64_t rss0 = SelfRssKb();
  const int64_t backend0 = BackendKb(driver_name);
  const auto l0 = SteadyClock::now();
  LoadRepositories(d, ns, z, base);
  std::vector<Lease> big_leases;
  for (int b = 0; b < z.big; ++b) {
    big_leases.push_back(
        ImportQueue(d, Repository{ns, absl::StrFormat("big-%d", b), 1},
                    z.big_queue + z.head_releases + 1, base));
  }
  const double load_s = MsSince(l0) / 1000;
  const int64_t queued_total =
      static_cast<int64_t>(z.repos) * z.per_repo +
      static_cast<int64_t>(z.big) * (z.big_queue + z.head_releases + 1);
  // The process's CPU while idle after the load (a watch still digesting
  // it shows here), then an optional wait.
  const auto cpu_now = [] {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec +
           (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  const double cpu0 = cpu_now();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const double idle_cpu = cpu_now() - cpu0;
  std::this_thread::sleep_for(std::chrono::duration<double>(settle));
  const int64_t rss1 = SelfRssKb();
  const int64_t backend1 = BackendKb(driver_name);

  const std::string big0 = absl::StrCat(ns, "/big-0");
  const std::string small0 =
      absl::StrCat(ns, "/r", absl::StrFormat("%05d", z.repos / 2));
  Phase loaded;
  if (driver_name == "etcd") {
    loaded.raw_puts = RawEtcdPuts(config, z, tag);
    loaded.raw_txn_pairs = RawEtcdTxnPairs(config, z, tag);
  }
  loaded.pairs = Pairs(d, ns, z, "l");
  loaded.head_p99_ms =
      HeadReleases(d, big0, 0, z.head_releases, &big_leases[0]);
  loaded.status_small_p99_ms =
      StatusP99(port, small0, z.status_reads, z.per_repo);
  if (driver_name == "etcd") {
    loaded.raw_reads = RawEtcdReads(config, d, small0, z.status_reads);
  }
  loaded.status_big_p99_ms =
      StatusP99(port, big0, std::max(3, z.status_reads / 20), z.big_queue + 1);
  loaded.listing = ListAll(port, ns, fixed_repos + z.repos + z.big);
  // A repository this server never served must have its gauge.
  const std::string last_small =
      absl::StrCat(ns, "/r", absl::StrFormat("%05d", z.repos - 1));
  loaded.metrics = Scrape(port, last_small, z.per_repo);

  Restart restart;
  if (driver_name != "memory") {
    restart = RestartOn(config, d, big0, &big_leases[0], z.big_queue + 1);
  }

  std::printf(
      "scale_bench %s: %d repositories x %d queued + %d x %d queued "
      "(%lld queued runs), loaded in %.1f s\n",
      driver_name.c_str(), z.repos, z.per_repo, z.big,
      z.big_queue + z.head_releases + 1, static_cast<long long>(queued_total),
      load_s);
  std::printf("CPU of this process in the second after the load: %.2f s\n",
              idle_cpu);
  std::printf("| %-34s | %12s | %12s | %6s |\n", "measure", "empty", "loaded",
              "ratio");
  std::printf("| %-34s | %12s | %12s | %6s |\n", "---", "---:", "---:", "---:");
  auto row = [](const char* what, double e, double l, int prec) {
    std::printf("| %-34s | %12s | %12s | %6s |\n", what,
                absl::StrFormat("%.*f", prec, e).c_str(),
                absl::StrFormat("%.*f", prec, l).c_str(), Ratio(l, e).c_str());
  };
  row("pairs/s (4 threads)", empty.pairs.pairs_per_second,
      loaded.pairs.pairs_per_second, 0);
  if (driver_name == "etcd") {
    row("floor: raw etcd Puts/s (4 threads)", empty.raw_puts.pairs_per_second,
        loaded.raw_puts.pairs_per_second, 0);
    row("floor: raw Txn pairs/s (4 threads)",
        empty.raw_txn_pairs.pairs_per_second,
        loaded.raw_txn_pairs.pairs_per_second, 0);
  }
  row("pair p99 (ms)", empty.pairs.p99_ms, loaded.pairs.p99_ms, 2);
  if (driver_name == "etcd") {
    row("floor: raw etcd Put p99 (ms)", empty.raw_puts.p99_ms,
        loaded.raw_puts.p99_ms, 2);
    row("floor: raw Txn pair p99 (ms)", empty.raw_txn_pairs.p99_ms,
        loaded.raw_txn_pairs.p99_ms, 2);
  }
  row("release admitting head p99 (ms)", empty.head_p99_ms, loaded.head_p99_ms,
      2);
  row("status, 10 queued, p99 (ms)", empty.status_small_p99_ms,
      loaded.status_small_p99_ms, 2);
  if (driver_name == "etcd") {
    row("floor: its raw Range p99 (ms)", empty.raw_reads.first,
        loaded.raw_reads.first, 2);
    row("floor: its lease TTL read p99 (ms)", empty.raw_reads.second,
        loaded.raw_reads.second, 2);
  }
  row("status, 10k queued, p99 (ms)", empty.status_big_p99_ms,
      loaded.status_big_p99_ms, 1);
  row("listing page of 500, max (ms)", empty.listing.max_page_ms,
      loaded.listing.max_page_ms, 1);
  row("listing, all pages (ms)", empty.listing.total_ms,
      loaded.listing.total_ms, 1);
  row("/metrics (ms)", empty.metrics.ms, loaded.metrics.ms, 1);
  row("/metrics (kB)", empty.metrics.bytes / 1024.0,
      loaded.metrics.bytes / 1024.0, 0);
  std::printf("listing pages: %zu; /metrics with %d+ repositories\n",
              loaded.listing.pages, z.repos);
  if (driver_name != "memory") {
    std::printf(
        "restart: answers in %.0f ms, watch + snapshot of a 10k queue in "
        "%.0f ms, a release heard in %.1f ms\n",
        restart.answer_ms, restart.view_ms, restart.heard_ms);
  }
  const double per_k = queued_total / 1000.0;
  std::printf("memory per 1,000 queued runs: server %.0f kB",
              (rss1 - rss0) / per_k);
  if (backend0 >= 0 && backend1 >= 0) {
    std::printf(", backend %.0f kB (%s)", (backend1 - backend0) / per_k,
                driver_name == "postgresql" ? "database size" : "etcd RSS");
  }
  std::printf("\n");

  if (cleanup) {
    std::vector<std::string> keys =
        Must(d->ListRepositories(Context::Background(), ns), "cleanup listing");
    for (const std::string& k : keys) {
      MustOk(d->CleanupRepository(Context::Background(), k), "cleanup " + k);
    }
  }
  return 0;
}
