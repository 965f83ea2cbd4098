// The run of pac-torture: backend, worker processes (or threads) and
// mixed-mode servers started and stopped, the drain, and the check of the
// history. The faults are in faults.cc.
#include "src/torture/torture.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/concurrency.h"
#include "pac/concurrency/status.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"
#include "src/torture/checker.h"
#include "src/torture/history.h"
#include "src/torture/http_target.h"
#include "src/torture/worker.h"
#include "tests/conformance/etcd_process.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/tcp_forwarder.h"

extern char** environ;

namespace pac::concurrency::torture {
namespace {}  // namespace

void Say(const std::string& text) {
  std::printf("pac-torture: %s\n", text.c_str());
  std::fflush(stdout);
}

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
    e.endpoints = absl::StrSplit(endpoint, ',');
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
  std::atomic<bool> stop{false}, abandon{false};
  std::atomic<int64_t> pause{0};
  std::thread([&stop, term] {
    int sig = 0;
    sigwait(&term, &sig);
    stop = true;
  }).detach();
  // The driver's log goes to this worker's log file (stderr).
  std::unique_ptr<Driver> driver;
  std::unique_ptr<Target> target;
  if (!f.server.empty()) {
    target = NewHttpTarget(f.server);
  } else {
    DriverOptions options;
    options.logger = spdlog::stderr_logger_mt("pac");
    options.logger->set_level(spdlog::level::info);
    // A worker started while the backend is down (a fault in effect, or
    // one injected while it starts) waits for it, as a controller would.
    while (driver == nullptr) {
      auto d = NewDriver(*config, options);
      if (d.ok()) {
        driver = *std::move(d);
      } else if (!IsRetryable(d.status()) &&
                 d.status().code() != absl::StatusCode::kDeadlineExceeded) {
        Say(d.status().ToString());
        return 2;
      } else if (stop.load()) {
        return 0;
      } else {
        absl::SleepFor(absl::Milliseconds(200));
      }
    }
    target = NewDriverTarget(*driver);
  }
  TortureRepos repos(f.ns);
  Recorder rec(*target, **out, f.tag);
  Worker w(rec, repos,
           WorkerOptions{f.tag, f.ttl, f.base_creation_us, f.seed, f.policies});
  w.Run(stop, abandon, pause);
  if (driver != nullptr) (void)driver->Close();
  return 0;
}

int Torture::Run() {
  std::filesystem::create_directories(f_.out);
  f_.ns = absl::StrCat("t", getpid(), "-", f_.seed % 100000);
  f_.base_creation_us = absl::ToUnixMicros(absl::Now());
  Say(absl::StrCat("backend ", f_.backend,
                   f_.backend == "etcd"
                       ? absl::StrCat(" (", f_.etcd_members, " members)")
                       : "",
                   ", ", f_.workers, " workers",
                   f_.mixed ? " (every second through serve)" : "", ", ",
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
  target_driver_ = NewDriverTarget(*driver_);
  rec_ = std::make_unique<Recorder>(*target_driver_, *out_, "torture");
  TortureRepos repos(f_.ns);
  repos_ = std::make_unique<TortureRepos>(repos);
  {
    Context ctx =
        Context::WithTimeout(Context::Background(), absl::Seconds(10));
    (void)rec_->SetLimit(ctx, repos.flex);
    // With the policies on, two fixed repositories (limits 3 and 200) draw
    // from a shared limit of 3: the checker's over_shared_limit counts
    // their holders together.
    if (f_.policies) {
      if (absl::Status s =
              rec_->Share(ctx, SharedLimit{absl::StrCat(f_.ns, "-pool"), 3},
                          {repos.fixed[2].Key(), repos.fixed[3].Key()});
          !s.ok()) {
        Say(s.ToString());
        return 2;
      }
    }
  }
  slots_.resize(static_cast<size_t>(f_.workers));
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].served = f_.mixed && i % 2 == 1;
  }
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

absl::Status Torture::StartBackend() {
  if (f_.backend == "postgresql") {
    auto pg = conformance::TestPostgreSQLConfig();
    if (!pg.ok()) return pg.status();
    target_ = absl::StrCat(pg->host, ":", pg->port);
  } else if (f_.backend == "etcd") {
    auto cluster = conformance::EtcdCluster::Start(f_.etcd_members);
    if (!cluster.ok()) return cluster.status();
    etcd_ = *std::move(cluster);
    target_ = absl::StrJoin(etcd_->endpoints(), ",");
  } else if (f_.backend != "memory") {
    return absl::InvalidArgumentError("--backend: memory, postgresql or etcd");
  }
  return absl::OkStatus();
}

absl::Status Torture::Spawn(size_t i) {
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
    s.rec = std::make_unique<Recorder>(*target_driver_, *s.out, tag);
    s.worker = std::make_unique<Worker>(
        *s.rec, *repos_,
        WorkerOptions{tag, f_.ttl, f_.base_creation_us, f_.seed * 1000 + i,
                      f_.policies});
    s.thread =
        std::thread([&s] { s.worker->Run(*s.stop, *s.abandon, *s.pause); });
    return absl::OkStatus();
  }
  if (s.fwds.empty()) {
    for (absl::string_view t : absl::StrSplit(target_, ',')) {
      auto fwd = conformance::TcpForwarder::Start(std::string(t));
      if (!fwd.ok()) return fwd.status();
      s.fwds.push_back(*std::move(fwd));
    }
  }
  std::vector<std::string> args = {
      "/proc/self/exe",
      "--worker",
      "--backend",
      f_.backend,
      "--tag",
      tag,
      "--endpoint",
      Via(s),
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
  if (f_.policies) args.push_back("--policies");
  if (s.served) {
    if (s.serve_pid <= 0) {
      if (absl::Status st = StartServe(i); !st.ok()) return st;
    }
    args.insert(args.end(),
                {"--server", absl::StrCat("http://127.0.0.1:", s.serve_port)});
  }
  auto pid = SpawnProcess(args, f_.out + "/" + tag + ".log");
  if (!pid.ok()) return pid.status();
  s.pid = *pid;
  return absl::OkStatus();
}

std::string Torture::Via(const Slot& s) {
  std::vector<std::string> via;
  for (const auto& fwd : s.fwds) via.push_back(fwd->endpoint());
  return absl::StrJoin(via, ",");
}

absl::StatusOr<pid_t> Torture::SpawnProcess(std::vector<std::string> args,
                                            const std::string& log) {
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot start ", args[0], ": ", std::strerror(rc)));
  }
  return pid;
}

absl::Status Torture::StartServe(size_t i) {
  Slot& s = slots_[i];
  if (s.serve_port < 0) s.serve_port = conformance::FreePort();
  const std::string config = absl::StrCat(f_.out, "/s", i, ".yaml");
  std::string yaml;
  if (f_.backend == "postgresql") {
    auto pg = conformance::TestPostgreSQLConfig();
    if (!pg.ok()) return pg.status();
    const std::string ep = Via(s);
    yaml = absl::StrCat(
        "concurrency-driver: postgresql\npostgresql-host: 127.0.0.1\n",
        "postgresql-port: ", ep.substr(ep.rfind(':') + 1), "\n",
        "postgresql-database: ", pg->database, "\n",
        "postgresql-username: ", pg->username, "\n",
        "postgresql-password-file: ",
        conformance::EnvOr("PAC_TEST_PG_PASSWORD_FILE"), "\n",
        "postgresql-ssl-mode: disable\n", "postgresql-connection-timeout: 3s\n",
        "postgresql-max-connections: 8\n",
        "postgresql-lease-ttl: ", f_.ttl_text, "\n");
  } else {
    yaml = absl::StrCat("concurrency-driver: etcd\netcd-endpoints: ", Via(s),
                        "\netcd-dial-timeout: 2s\netcd-prefix: /torture/",
                        f_.ns, "/\netcd-lease-ttl: ", f_.ttl_text, "\n");
  }
  if (FILE* fp = std::fopen(config.c_str(), "w")) {
    std::fputs(yaml.c_str(), fp);
    std::fclose(fp);
  } else {
    return absl::InternalError("cannot write " + config);
  }
  ++s.serve_generation;
  auto pid = SpawnProcess(
      {f_.serve_binary, "serve", "--listen",
       absl::StrCat("127.0.0.1:", s.serve_port), "--config", config,
       "--log-level", "warn"},
      absl::StrCat(f_.out, "/s", i, "g", s.serve_generation, ".log"));
  if (!pid.ok()) return pid.status();
  s.serve_pid = *pid;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!conformance::Listening(s.serve_port)) {
    if (waitpid(s.serve_pid, nullptr, WNOHANG) == s.serve_pid) {
      s.serve_pid = -1;
      return absl::FailedPreconditionError(
          absl::StrCat("serve of slot ", i, " exited; see ", f_.out, "/s", i,
                       "g", s.serve_generation, ".log"));
    }
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(
          absl::StrCat("serve of slot ", i, " did not listen within 10s"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::OkStatus();
}

void Torture::StopAll() {
  for (Slot& s : slots_) {
    for (const auto& fwd : s.fwds) {
      fwd->SetDown(false);
      fwd->BlackHole(false);
    }
    if (s.serve_pid > 0) kill(s.serve_pid, SIGCONT);
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
  // The servers once their clients are done (they end on SIGTERM).
  for (Slot& s : slots_) {
    if (s.serve_pid <= 0) continue;
    kill(s.serve_pid, SIGTERM);
    waitpid(s.serve_pid, nullptr, 0);
    s.serve_pid = -1;
  }
}

void Torture::Drain() {
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
        (void)rec_->Release(rctx, repo.Key(), l.lease_id, l.pipeline_run_key);
      }
    }
    if (empty) return;
    absl::SleepFor(absl::Milliseconds(20));
  }
  Broken("the drain gave up with runs still queued or running");
}

void Torture::Broken(const std::string& why) {
  Say(why);
  broken_ = true;
}

int Torture::CheckHistory() {
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
    Say(absl::StrCat("the wall clock stepped by ",
                     absl::FormatDuration(absl::Microseconds(r.clock_step_us)),
                     " against CLOCK_MONOTONIC during the run"));
  }
  for (const Violation& v : r.violations) {
    Say(absl::StrCat("VIOLATION ", v.kind, " in ", v.repo, ": ", v.what));
    std::printf("%s",
                Window(*history, v.repo, v.t_ns, absl::Seconds(2), 40).c_str());
  }
  if (!r.violations.empty()) {
    Say(absl::StrCat("replay with --seed ", f_.seed));
    return 1;
  }
  if (broken_) {
    Say("the run itself failed (above): its history proves nothing");
    return 2;
  }
  if (r.calls < std::max<int64_t>(100, f_.expect_calls)) {
    Say(absl::StrCat("too few calls: ", r.calls, " (wanted ",
                     std::max<int64_t>(100, f_.expect_calls), ")"));
    return 2;
  }
  for (const auto& [kind, n] : faults_) {
    if (n < f_.expect_faults) {
      Say(absl::StrCat("too few faults of kind ", kind, ": ", n, " (wanted ",
                       f_.expect_faults, ")"));
      return 2;
    }
  }
  return 0;
}

}  // namespace pac::concurrency::torture
