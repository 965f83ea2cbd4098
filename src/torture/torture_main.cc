// pac-torture: runs workers against one backend while injecting faults,
// records every call (history.h), drains the queues, and checks the
// history offline (checker.h). docs/testing.md says what it injects and
// checks.
//
//   pac-torture --backend memory|postgresql|etcd [--workers 4]
//               [--seconds 20] [--seed S] [--ttl 3s] [--out DIR]
//   pac-torture --check --out DIR   # check a recorded history again
//
// PostgreSQL: the server of scripts/pg-test-server.sh (PAC_TEST_PG_*; its
// restart, kill and start-again commands are the backend faults). etcd: a
// node of the torture's own (tests/conformance/etcd_process.h), killed and
// started again, and compacted. Workers are processes of this binary
// (--worker), each reaching the backend through a TCP forwarder of its own
// that the torture cuts or stalls; on the memory driver they are threads
// beside one driver, and a "kill" abandons a worker's leases. Exit 0: no
// violation; 1: violations (each printed with its window of history);
// 2: the run itself failed.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/concurrency.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"
#include "src/etcd/etcd_rpc.pb.h"
#include "src/etcd/grpc_etcd.h"
#include "src/torture/checker.h"
#include "src/torture/history.h"
#include "src/torture/worker.h"
#include "tests/conformance/etcd_process.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/tcp_forwarder.h"

extern char** environ;

namespace pac::concurrency::torture {
namespace {

struct Flags {
  std::string backend = "memory";
  int workers = 4;
  int seconds = 20;
  uint64_t seed = 0;
  std::string ttl_text = "3s";
  absl::Duration ttl = absl::Seconds(3);
  std::string out;
  // A worker process (set by the torture when it starts one).
  bool worker = false;
  std::string tag, endpoint, ns;
  int64_t base_creation_us = 0;
};

void Say(const std::string& text) {
  std::printf("pac-torture: %s\n", text.c_str());
  std::fflush(stdout);
}

// The driver configuration of `backend` reaching it at `endpoint`.
absl::StatusOr<DriverConfig> BackendConfig(const Flags& f,
                                           const std::string& endpoint) {
  DriverConfig c;
  c.driver = f.backend;
  if (f.backend == "postgresql") {
    auto pg = conformance::TestPostgreSQLConfig();
    if (!pg.ok()) return pg.status();
    pg->host = endpoint.substr(0, endpoint.rfind(':'));
    pg->port = std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
    pg->ssl_mode = "disable";
    pg->connection_timeout = absl::Seconds(3);
    pg->max_connections = 4;
    pg->lease_ttl = f.ttl;
    c.postgresql = *pg;
  } else if (f.backend == "etcd") {
    EtcdConfig e;
    e.mode = "etcd";
    e.endpoints = {endpoint};
    e.dial_timeout = absl::Seconds(2);
    e.prefix = "/torture/" + f.ns + "/";
    e.lease_ttl = f.ttl;
    c.etcd = e;
  } else {
    MemoryConfig m;
    m.lease_ttl = f.ttl;
    c.memory = m;
  }
  return c;
}

// --worker: one worker process until SIGTERM.
int RunWorkerProcess(const Flags& f) {
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);
  auto config = BackendConfig(f, f.endpoint);
  if (!config.ok()) {
    Say(config.status().ToString());
    return 2;
  }
  auto out = HistoryWriter::Open(f.out + "/" + f.tag + ".jsonl");
  if (!out.ok()) {
    Say(out.status().ToString());
    return 2;
  }
  // The driver's log goes to this worker's log file (stderr).
  DriverOptions options;
  options.logger = spdlog::stderr_logger_mt("pac");
  options.logger->set_level(spdlog::level::info);
  auto driver = NewDriver(*config, options);
  if (!driver.ok()) {
    Say(driver.status().ToString());
    return 2;
  }
  std::atomic<bool> stop{false}, abandon{false};
  std::atomic<int64_t> pause{0};
  std::thread([&stop, term] {
    int sig = 0;
    sigwait(&term, &sig);
    stop = true;
  }).detach();
  TortureRepos repos(f.ns);
  Recorder rec(**driver, **out, f.tag);
  Worker w(rec, repos, WorkerOptions{f.tag, f.ttl, f.base_creation_us, f.seed});
  w.Run(stop, abandon, pause);
  (void)(*driver)->Close();
  return 0;
}

// A worker process the torture started.
struct Slot {
  pid_t pid = -1;
  int generation = 0;
  std::unique_ptr<conformance::TcpForwarder> fwd;  // process mode
  // Memory mode: a thread and its controls.
  std::thread thread;
  std::unique_ptr<std::atomic<bool>> stop, abandon;
  std::unique_ptr<std::atomic<int64_t>> pause;
  std::unique_ptr<HistoryWriter> out;
  std::unique_ptr<Recorder> rec;
  std::unique_ptr<Worker> worker;
};

class Torture {
 public:
  explicit Torture(Flags f) : f_(std::move(f)), rng_(f_.seed) {}

  // --check: the history already in --out, checked again.
  int CheckOnly() { return CheckHistory(); }

  int Run() {
    std::filesystem::create_directories(f_.out);
    f_.ns = absl::StrCat("t", getpid(), "-", f_.seed % 100000);
    f_.base_creation_us = absl::ToUnixMicros(absl::Now());
    Say(absl::StrCat("backend ", f_.backend, ", ", f_.workers, " workers, ",
                     f_.seconds, " s, seed ", f_.seed, ", TTL ",
                     absl::FormatDuration(f_.ttl), ", history in ", f_.out));
    if (absl::Status s = StartBackend(); !s.ok()) {
      Say(s.ToString());
      return 2;
    }
    auto out = HistoryWriter::Open(f_.out + "/torture.jsonl");
    if (!out.ok()) {
      Say(out.status().ToString());
      return 2;
    }
    out_ = *std::move(out);
    auto config = BackendConfig(f_, target_);
    if (!config.ok()) {
      Say(config.status().ToString());
      return 2;
    }
    auto driver = NewDriver(*config);
    if (!driver.ok()) {
      Say(driver.status().ToString());
      return 2;
    }
    driver_ = *std::move(driver);
    rec_ = std::make_unique<Recorder>(*driver_, *out_, "torture");
    TortureRepos repos(f_.ns);
    repos_ = std::make_unique<TortureRepos>(repos);
    {
      Context ctx =
          Context::WithTimeout(Context::Background(), absl::Seconds(10));
      (void)rec_->SetLimit(ctx, repos.flex);
    }
    slots_.resize(static_cast<size_t>(f_.workers));
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (absl::Status s = Spawn(i); !s.ok()) {
        Say(s.ToString());
        StopAll();
        return 2;
      }
    }
    Chaos();
    StopAll();
    Drain();
    return CheckHistory();
  }

 private:
  bool processes() const { return f_.backend != "memory"; }

  absl::Status StartBackend() {
    if (f_.backend == "postgresql") {
      auto pg = conformance::TestPostgreSQLConfig();
      if (!pg.ok()) return pg.status();
      target_ = absl::StrCat(pg->host, ":", pg->port);
    } else if (f_.backend == "etcd") {
      auto node = conformance::EtcdProcess::Start();
      if (!node.ok()) return node.status();
      etcd_ = *std::move(node);
      target_ = etcd_->endpoint();
    } else if (f_.backend != "memory") {
      return absl::InvalidArgumentError(
          "--backend: memory, postgresql or etcd");
    }
    return absl::OkStatus();
  }

  absl::Status Spawn(size_t i) {
    Slot& s = slots_[i];
    ++s.generation;
    const std::string tag = absl::StrCat("w", i, "g", s.generation);
    if (!processes()) {
      s.stop = std::make_unique<std::atomic<bool>>(false);
      s.abandon = std::make_unique<std::atomic<bool>>(false);
      s.pause = std::make_unique<std::atomic<int64_t>>(0);
      auto out = HistoryWriter::Open(f_.out + "/" + tag + ".jsonl");
      if (!out.ok()) return out.status();
      s.out = *std::move(out);
      s.rec = std::make_unique<Recorder>(*driver_, *s.out, tag);
      s.worker = std::make_unique<Worker>(
          *s.rec, *repos_,
          WorkerOptions{tag, f_.ttl, f_.base_creation_us, f_.seed * 1000 + i});
      s.thread =
          std::thread([&s] { s.worker->Run(*s.stop, *s.abandon, *s.pause); });
      return absl::OkStatus();
    }
    if (s.fwd == nullptr) {
      auto fwd = conformance::TcpForwarder::Start(target_);
      if (!fwd.ok()) return fwd.status();
      s.fwd = *std::move(fwd);
    }
    std::vector<std::string> args = {
        "/proc/self/exe",
        "--worker",
        "--backend",
        f_.backend,
        "--tag",
        tag,
        "--endpoint",
        s.fwd->endpoint(),
        "--ns",
        f_.ns,
        "--out",
        f_.out,
        "--ttl",
        f_.ttl_text,
        "--seed",
        absl::StrCat(f_.seed * 1000 + i * 10 + s.generation),
        "--base-creation",
        absl::StrCat(f_.base_creation_us)};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const std::string log = f_.out + "/" + tag + ".log";
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = -1;
    const int rc =
        posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      return absl::InternalError(absl::StrCat("cannot start a worker: ", rc));
    }
    s.pid = pid;
    return absl::OkStatus();
  }

  absl::Duration Between(absl::Duration lo, absl::Duration hi) {
    std::uniform_int_distribution<int64_t> d(absl::ToInt64Milliseconds(lo),
                                             absl::ToInt64Milliseconds(hi));
    return absl::Milliseconds(d(rng_));
  }

  void Fault(const std::string& what) {
    ++faults_[what.substr(0, what.find(' '))];
    rec_->Mark("fault", what);
  }

  // Faults one after another until the time is up; each heals before the
  // next.
  void Chaos() {
    std::vector<std::string> kinds = {"kill", "stop"};
    if (processes()) {
      kinds.insert(kinds.end(),
                   {"cut", "stall", "backend-restart", "backend-kill"});
      if (f_.backend == "etcd") kinds.push_back("compact");
    }
    const absl::Time end = absl::Now() + absl::Seconds(f_.seconds);
    while (absl::Now() < end) {
      absl::SleepFor(
          Between(absl::Milliseconds(300), absl::Milliseconds(1500)));
      if (absl::Now() >= end) break;
      const std::string kind = kinds[rng_() % kinds.size()];
      const size_t i = rng_() % slots_.size();
      Slot& s = slots_[i];
      if (kind == "kill") {
        Fault(absl::StrCat("kill w", i, "g", s.generation));
        if (processes()) {
          kill(s.pid, SIGKILL);
          waitpid(s.pid, nullptr, 0);
        } else {
          *s.abandon = true;
          *s.stop = true;
          s.thread.join();
        }
        absl::SleepFor(
            Between(absl::Milliseconds(50), absl::Milliseconds(500)));
        if (absl::Status st = Spawn(i); !st.ok()) Broken(st.ToString());
      } else if (kind == "stop") {
        // Paused past its TTL or not: a holder that wakes up may have lost
        // its slot and must learn it on its next renewal.
        const absl::Duration d = Between(f_.ttl / 4, f_.ttl * 3 / 2);
        Fault(absl::StrCat("stop w", i, "g", s.generation, " for ",
                           absl::FormatDuration(d)));
        if (processes()) {
          kill(s.pid, SIGSTOP);
          absl::SleepFor(d);
          kill(s.pid, SIGCONT);
        } else {
          *s.pause = MonotonicNanos() + absl::ToInt64Nanoseconds(d);
          absl::SleepFor(d);
        }
      } else if (kind == "cut" || kind == "stall") {
        const absl::Duration d = Between(absl::Milliseconds(300), f_.ttl);
        Fault(absl::StrCat(kind, " w", i, "g", s.generation, " for ",
                           absl::FormatDuration(d)));
        if (kind == "cut") {
          s.fwd->SetDown(true);
        } else {
          s.fwd->BlackHole(true);
        }
        absl::SleepFor(d);
        s.fwd->SetDown(false);
        s.fwd->BlackHole(false);
      } else if (kind == "backend-restart" || kind == "backend-kill") {
        BackendFault(kind);
      } else if (kind == "compact") {
        Compact();
      }
      // Every worker must be answered again soon (checker: stalled).
      rec_->Mark("heal", kind);
    }
  }

  void BackendFault(const std::string& kind) {
    if (f_.backend == "postgresql") {
      if (kind == "backend-restart") {
        const std::string cmd = conformance::EnvOr("PAC_TEST_PG_CTL");
        Fault("backend-restart postgresql (fast)");
        if (cmd.empty() || std::system(cmd.c_str()) != 0) {
          Broken("PostgreSQL restart failed");
        }
        return;
      }
      const std::string kill_cmd = conformance::EnvOr("PAC_TEST_PG_KILL");
      const std::string start_cmd = conformance::EnvOr("PAC_TEST_PG_START");
      const absl::Duration d = Between(absl::Milliseconds(200), f_.ttl / 2);
      Fault(absl::StrCat("backend-kill postgresql for ",
                         absl::FormatDuration(d)));
      if (kill_cmd.empty() || std::system(kill_cmd.c_str()) != 0) {
        Broken("PostgreSQL kill failed");
      }
      absl::SleepFor(d);
      if (start_cmd.empty() || std::system(start_cmd.c_str()) != 0) {
        Broken("PostgreSQL start failed");
      }
      return;
    }
    const absl::Duration d = kind == "backend-restart"
                                 ? absl::ZeroDuration()
                                 : Between(absl::Milliseconds(200), f_.ttl / 2);
    Fault(absl::StrCat(kind, " etcd for ", absl::FormatDuration(d)));
    etcd_->Kill();
    absl::SleepFor(d);
    if (absl::Status s = etcd_->Restart(); !s.ok()) Broken(s.ToString());
  }

  void Compact() {
    EtcdConfig c;
    c.mode = "etcd";
    c.endpoints = {target_};
    auto kv = internal::NewGrpcEtcd(c, nullptr);
    if (!kv.ok()) return;
    Context ctx = Context::WithTimeout(Context::Background(), absl::Seconds(2));
    internal::etcdpb::PutRequest put;
    put.set_key("/torture-compact");
    put.set_value("x");
    auto r = (*kv)->Put(ctx, put);
    if (!r.ok()) return;
    Fault(absl::StrCat("compact etcd at ", r->header().revision()));
    (void)(*kv)->Compact(ctx, r->header().revision());
  }

  void StopAll() {
    for (Slot& s : slots_) {
      if (s.fwd != nullptr) {
        s.fwd->SetDown(false);
        s.fwd->BlackHole(false);
      }
      if (processes() && s.pid > 0) {
        kill(s.pid, SIGCONT);
        kill(s.pid, SIGTERM);
      } else if (!processes() && s.stop != nullptr) {
        *s.pause = 0;
        *s.stop = true;
      }
    }
    for (Slot& s : slots_) {
      if (processes() && s.pid > 0) {
        const absl::Time give_up = absl::Now() + absl::Seconds(20);
        int status = 0;
        while (waitpid(s.pid, &status, WNOHANG) == 0) {
          if (absl::Now() > give_up) {
            kill(s.pid, SIGKILL);
            waitpid(s.pid, &status, 0);
            break;
          }
          absl::SleepFor(absl::Milliseconds(20));
        }
        s.pid = -1;
      } else if (s.thread.joinable()) {
        s.thread.join();
      }
    }
  }

  // Holders are gone: release whatever runs until every queue is empty.
  void Drain() {
    rec_->Mark("drain", "");
    const absl::Time give_up = absl::Now() + f_.ttl + absl::Seconds(30);
    while (absl::Now() < give_up) {
      bool empty = true;
      for (const Repository& repo : repos_->All()) {
        Context ctx =
            Context::WithTimeout(Context::Background(), absl::Seconds(5));
        auto snap = rec_->Snapshot(ctx, repo.Key());
        if (!snap.ok()) {
          empty = false;
          continue;
        }
        if (!snap->queued.empty() || !snap->running.empty()) empty = false;
        for (const Lease& l : snap->running) {
          Context rctx =
              Context::WithTimeout(Context::Background(), absl::Seconds(5));
          (void)rec_->Release(rctx, repo.Key(), l.lease_id, "");
        }
      }
      if (empty) return;
      absl::SleepFor(absl::Milliseconds(20));
    }
    Broken("the drain gave up with runs still queued or running");
  }

  // The run itself went wrong (a fault could not be injected or healed):
  // its result says nothing, and it ends with status 2.
  void Broken(const std::string& why) {
    Say(why);
    broken_ = true;
  }

  int CheckHistory() {
    if (driver_ != nullptr) (void)driver_->Close();
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(f_.out)) {
      if (e.path().extension() == ".jsonl") files.push_back(e.path());
    }
    auto history = ReadHistory(files);
    if (!history.ok()) {
      Say(history.status().ToString());
      return 2;
    }
    CheckOptions o;
    o.ttl = f_.ttl;
    // An etcd lease may have started up to a tenth of the TTL before the
    // call that took it (the driver's spare leases).
    o.margin = f_.ttl / 10 + absl::Milliseconds(100);
    o.drain_bound = f_.ttl + absl::Seconds(10);
    o.recovery_bound = absl::Seconds(5);
    Report r = Check(*history, o);
    std::string faults;
    for (const auto& [k, n] : faults_) {
      absl::StrAppend(&faults, faults.empty() ? "" : ", ", k, " ", n);
    }
    Say(absl::StrCat("calls ", r.calls, " (", r.failed, " failed, ", r.unknown,
                     " unknown), leases ", r.grants, ", faults ", r.faults,
                     faults.empty() ? "" : " (" + faults + ")", ", violations ",
                     r.violations.size()));
    if (std::llabs(r.clock_step_us) > 100'000) {
      Say(absl::StrCat(
          "the wall clock stepped by ",
          absl::FormatDuration(absl::Microseconds(r.clock_step_us)),
          " against CLOCK_MONOTONIC during the run"));
    }
    for (const Violation& v : r.violations) {
      Say(absl::StrCat("VIOLATION ", v.kind, " in ", v.repo, ": ", v.what));
      std::printf(
          "%s", Window(*history, v.repo, v.t_ns, absl::Seconds(2), 40).c_str());
    }
    if (!r.violations.empty()) {
      Say(absl::StrCat("replay with --seed ", f_.seed));
      return 1;
    }
    if (broken_) {
      Say("the run itself failed (above): its history proves nothing");
      return 2;
    }
    if (r.calls < 100) {
      Say("too few calls to mean anything");
      return 2;
    }
    return 0;
  }

  Flags f_;
  std::mt19937_64 rng_;
  std::string target_;
  std::unique_ptr<conformance::EtcdProcess> etcd_;
  std::unique_ptr<HistoryWriter> out_;
  std::unique_ptr<Driver> driver_;
  std::unique_ptr<Recorder> rec_;
  std::unique_ptr<TortureRepos> repos_;
  std::vector<Slot> slots_;
  std::map<std::string, int> faults_;
  bool broken_ = false;
};

}  // namespace
}  // namespace pac::concurrency::torture

int main(int argc, char** argv) {
  using pac::concurrency::torture::Flags;
  Flags f;
  CLI::App app{"pac-torture: random calls and faults, then a history check"};
  app.add_option("--backend", f.backend, "memory, postgresql or etcd")
      ->capture_default_str();
  app.add_option("--workers", f.workers, "Worker processes (threads on memory)")
      ->capture_default_str();
  app.add_option("--seconds", f.seconds, "How long faults are injected")
      ->capture_default_str();
  app.add_option("--seed", f.seed, "Random seed (0: a random one, printed)");
  app.add_option("--ttl", f.ttl_text, "Lease TTL")->capture_default_str();
  app.add_option("--out", f.out,
                 "Directory for the history (default: a new "
                 "one under /tmp)");
  bool check_only = false;
  app.add_flag("--check", check_only,
               "Only check the history already in --out (same --ttl)");
  app.add_flag("--worker", f.worker)->group("");
  app.add_option("--tag", f.tag)->group("");
  app.add_option("--endpoint", f.endpoint)->group("");
  app.add_option("--ns", f.ns)->group("");
  app.add_option("--base-creation", f.base_creation_us)->group("");
  CLI11_PARSE(app, argc, argv);
  auto ttl = pac::concurrency::ParseDuration(f.ttl_text);
  if (!ttl.ok() || *ttl < absl::Seconds(1)) {
    std::fprintf(stderr, "--ttl: a duration of at least 1s, such as 3s\n");
    return 2;
  }
  f.ttl = *ttl;
  if (f.worker) return pac::concurrency::torture::RunWorkerProcess(f);
  if (check_only) {
    if (f.out.empty()) {
      std::fprintf(stderr, "--check needs --out DIR\n");
      return 2;
    }
    return pac::concurrency::torture::Torture(f).CheckOnly();
  }
  if (f.seed == 0) f.seed = std::random_device{}() % 1000000 + 1;
  if (f.workers < 1) {
    std::fprintf(stderr, "--workers: at least 1\n");
    return 2;
  }
  if (f.out.empty()) {
    char tmpl[] = "/tmp/pac-torture.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return 2;
    f.out = tmpl;
  }
  return pac::concurrency::torture::Torture(f).Run();
}
