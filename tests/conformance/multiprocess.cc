#include "tests/conformance/multiprocess.h"

#include <poll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "pac/concurrency/status.h"

namespace pac::concurrency::conformance {
namespace {

int64_t MonoNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// Makes a process's driver into `*driver`, says so on `ready` and waits
// for `go` to close, so the processes start together. 0, or the exit code
// of the failure: 2 no driver (printed, named by `who`), 7 `ready` broke.
int StartTogether(const DriverMaker& make, const std::string& who, int ready,
                  int go, std::unique_ptr<Driver>* driver,
                  const Repository* priority_repo = nullptr) {
  auto made = make();
  if (!made.ok()) {
    std::fprintf(stderr, "%s: %s\n", who.c_str(),
                 made.status().ToString().c_str());
    return 2;
  }
  *driver = *std::move(made);
  if (priority_repo != nullptr) {  // before any worker starts
    RepositoryPolicy p;
    p.mode = QueueMode::kPriority;
    if (absl::Status s =
            (*driver)->SetRepositoryPolicy(Context(), priority_repo->Key(), p);
        !s.ok()) {
      std::fprintf(stderr, "%s: %s\n", who.c_str(), s.ToString().c_str());
      return 2;
    }
  }
  const char one = 1;
  if (write(ready, &one, 1) != 1) return 7;
  char none;
  while (read(go, &none, 1) < 0 && errno == EINTR) {
  }
  return 0;
}

// Worker body; returns the process exit code. Once its driver is made, a
// worker says so on `ready` and waits for `go` to close: the workers start
// together, however long each took to start (under a sanitizer, seconds),
// so their runs contend.
int Worker(const DriverMaker& make, const Repository& repo, int id, int runs,
           const HammerOptions& options, const std::string& log_path, int ready,
           int go) {
  std::unique_ptr<Driver> driver;
  if (int code = StartTogether(make, absl::StrCat("worker ", id), ready, go,
                               &driver, options.priorities ? &repo : nullptr);
      code != 0) {
    return code;
  }
  std::ofstream log(log_path);
  Context ctx;
  for (int j = 0; j < runs; ++j) {
    std::string run = absl::StrCat(repo.ns, "/w", id, "-", j);
    AcquireOptions opts;
    opts.creation_time = absl::Now();
    if (options.groups) opts.group = absl::StrCat("g", j % 4);
    if (options.max_queue > absl::ZeroDuration()) {
      opts.max_queue_time = options.max_queue;
    }
    if (options.priorities) opts.priority = j % 3;
    absl::StatusOr<AcquireResult> r;
    for (int attempt = 0;; ++attempt) {
      r = driver->AcquireSlot(ctx, repo, run, opts);
      if (r.ok() || IsRunRemoved(r.status()) || attempt > 50) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    if (IsRunRemoved(r.status())) {  // cleared before its first answer
      log << "D " << run << "\n";
      continue;
    }
    if (!r.ok()) {
      std::fprintf(stderr, "worker %d: %s\n", id,
                   r.status().ToString().c_str());
      return 3;
    }
    if (!r->acquired) {
      log << "Q " << run << " " << absl::ToUnixMicros(*opts.creation_time)
          << " " << MonoNanos() << " " << opts.priority << "\n";
      absl::Time give_up = absl::Now() + absl::Seconds(120);
      while (r.ok() && !r->acquired && absl::Now() < give_up) {
        absl::SleepFor(absl::Milliseconds(1));
        r = driver->AcquireSlot(ctx, repo, run, opts);
      }
      if (IsRunRemoved(r.status())) {  // cleared while it waited
        log << "D " << run << "\n";
        continue;
      }
      if (!r.ok() || !r->acquired) {
        std::fprintf(stderr, "worker %d: %s never admitted\n", id, run.c_str());
        return 4;
      }
    } else {
      log << "C " << run << " " << absl::ToUnixMicros(*opts.creation_time)
          << " " << opts.priority << "\n";
    }
    log << "G " << run << " " << r->lease.fencing_token << " " << MonoNanos()
        << "\n";
    absl::SleepFor(absl::Milliseconds(2));
    int64_t release_start = MonoNanos();
    log << "R " << run << " " << release_start << "\n";
    absl::StatusOr<ReleaseResult> rel;
    for (int attempt = 0;; ++attempt) {
      rel = driver->ReleaseSlot(ctx, r->lease.lease_id, run, repo.Key());
      if (rel.ok() || attempt > 50) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    if (!rel.ok() || !rel->released) {
      std::fprintf(stderr, "worker %d: release of %s failed\n", id,
                   run.c_str());
      return 5;
    }
    for (const Lease& l : rel->admitted) {
      log << "A " << l.pipeline_run_key << " " << l.fencing_token << " "
          << release_start << "\n";
    }
  }
  log.flush();
  (void)driver->Close();
  return log.good() ? 0 : 6;
}

// The clearer: clears the queue every `every` until `stop` closes, and
// logs each run it removed.
int Clearer(const DriverMaker& make, const Repository& repo,
            absl::Duration every, const std::string& log_path, int ready,
            int go, int stop) {
  std::unique_ptr<Driver> driver;
  if (int code = StartTogether(make, "clearer", ready, go, &driver);
      code != 0) {
    return code;
  }
  std::ofstream log(log_path);
  Context ctx;
  while (true) {
    pollfd pfd{stop, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(every))) > 0) {
      break;  // closed: the workers are done
    }
    auto r = driver->ClearQueue(ctx, repo.Key());
    if (!r.ok()) {
      if (IsRetryable(r.status())) continue;
      std::fprintf(stderr, "clearer: %s\n", r.status().ToString().c_str());
      return 3;
    }
    for (const std::string& run : r->removed) log << "X " << run << "\n";
    log.flush();
  }
  log.flush();
  (void)driver->Close();
  return log.good() ? 0 : 6;
}

struct RunInfo {
  int64_t creation_us = 0;
  int64_t enqueued_ns = -1;  // -1: never queued
  int64_t token = -1;
  int64_t grant_ns = -1;
  int64_t release_ns = -1;
  int grants = 0;
  int priority = 0;
  int cleared = 0;  // times the clearer removed it
  int dropped = 0;  // times its worker was refused it as removed
};

}  // namespace

std::string RemovalProblem(const HammerReport& report, int processes, int runs,
                           int limit, int min_removed, bool cleared) {
  const int removed = cleared ? report.cleared : report.removed;
  if (report.processes_ok != processes) {
    return absl::StrCat(report.processes_ok, " of ", processes,
                        " processes finished: ", report.first_problem);
  }
  if (report.cleared_admitted != 0 || report.unaccounted != 0 ||
      report.fifo_violations != 0) {
    return report.first_problem;
  }
  if (report.grants + removed != runs) {
    return absl::StrCat(report.grants, " granted and ", removed, " removed of ",
                        runs, " runs");
  }
  if (removed <= min_removed) {
    return absl::StrCat("only ", removed, " runs removed: too few to test");
  }
  if (report.max_overlap > limit) {
    return absl::StrCat(report.max_overlap, " runs held slots at once");
  }
  return "";
}

std::string OrderProblem(const HammerReport& report, int processes, int runs,
                         int limit, int min_queued) {
  if (report.processes_ok != processes) {
    return absl::StrCat(report.processes_ok, " of ", processes,
                        " processes finished: ", report.first_problem);
  }
  if (report.grants != runs || report.duplicate_grants != 0) {
    return absl::StrCat(report.grants, " of ", runs, " runs granted, ",
                        report.duplicate_grants, " twice");
  }
  if (report.max_overlap > limit) {
    return absl::StrCat(report.max_overlap, " runs held slots at once");
  }
  if (report.queued <= min_queued) {
    return absl::StrCat("only ", report.queued,
                        " runs queued: too little contention to test order");
  }
  if (report.fifo_checks == 0) return "the order was never checked";
  if (report.fifo_violations != 0) return report.first_problem;
  return "";
}

void PrintHammerReport(const HammerReport& report) {
  std::printf(
      "hammer: %d grants, %d queued, %d promotions, max overlap %d, "
      "%d FIFO checks, %d cleared, %d refused as removed\n",
      report.grants, report.queued, report.promotions, report.max_overlap,
      report.fifo_checks, report.cleared, report.removed);
}

HammerReport RunMultiProcessHammer(const DriverMaker& make,
                                   const std::string& repo_ns, int processes,
                                   int runs_per_process, int limit,
                                   const HammerOptions& options) {
  const absl::Duration clear_every = options.clear_every;
  const bool groups = options.groups;
  const absl::Duration max_queue = options.max_queue;
  HammerReport report;
  Repository repo{repo_ns, "hammer", limit};
  char dir_template[] = "/tmp/pac-hammer-XXXXXX";
  std::string dir = mkdtemp(dir_template);
  int ready[2], go[2], stop[2];
  if (pipe(ready) != 0 || pipe(go) != 0 || pipe(stop) != 0) {
    report.first_problem = "pipe failed";
    return report;
  }
  std::vector<pid_t> pids;
  for (int i = 0; i < processes; ++i) {
    std::string path = absl::StrCat(dir, "/w", i, ".log");
    pid_t pid = fork();
    if (pid == 0) {
      close(ready[0]);
      close(go[1]);
      _exit(Worker(make, repo, i, runs_per_process, options, path, ready[1],
                   go[0]));
    }
    pids.push_back(pid);
  }
  const bool clearing = clear_every > absl::ZeroDuration();
  pid_t clearer = -1;
  if (clearing) {
    clearer = fork();
    if (clearer == 0) {
      close(ready[0]);
      close(go[1]);
      close(stop[1]);
      _exit(Clearer(make, repo, clear_every, absl::StrCat(dir, "/clearer.log"),
                    ready[1], go[0], stop[0]));
    }
  }
  close(stop[0]);
  close(ready[1]);
  close(go[0]);
  const int starters = processes + (clearing ? 1 : 0);
  // Every worker ready (or gone: its end of `ready` closes), or a minute
  // passed: they start.
  const absl::Time until = absl::Now() + absl::Minutes(1);
  for (int n = 0; n < starters && absl::Now() < until;) {
    pollfd pfd{ready[0], POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    char c;
    const ssize_t got = read(ready[0], &c, 1);
    if (got == 0) break;  // every worker has exited
    if (got == 1) ++n;
  }
  close(go[1]);
  close(ready[0]);
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      ++report.processes_ok;
    } else if (report.first_problem.empty()) {
      report.first_problem =
          absl::StrCat("worker pid ", pid, " failed, status ", status);
    }
  }
  close(stop[1]);  // the clearer stops
  if (clearing) {
    int status = 0;
    waitpid(clearer, &status, 0);
    if ((!WIFEXITED(status) || WEXITSTATUS(status) != 0) &&
        report.first_problem.empty()) {
      report.first_problem =
          absl::StrCat("clearer pid ", clearer, " failed, status ", status);
    }
  }

  std::map<std::string, RunInfo> runs;
  struct Admission {
    std::string run;
    int64_t token;
    int64_t release_start_ns;
  };
  std::vector<Admission> admissions;
  std::vector<std::string> logs;
  for (int i = 0; i < processes; ++i) {
    logs.push_back(absl::StrCat(dir, "/w", i, ".log"));
  }
  if (clearing) logs.push_back(absl::StrCat(dir, "/clearer.log"));
  for (const std::string& path : logs) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ss(line);
      std::string kind, run;
      ss >> kind >> run;
      RunInfo& info = runs[run];
      if (kind == "Q") {
        ss >> info.creation_us >> info.enqueued_ns >> info.priority;
      } else if (kind == "C") {
        ss >> info.creation_us >> info.priority;
      } else if (kind == "G") {
        ss >> info.token >> info.grant_ns;
        ++info.grants;
      } else if (kind == "R") {
        ss >> info.release_ns;
      } else if (kind == "A") {
        Admission a{run, 0, 0};
        ss >> a.token >> a.release_start_ns;
        admissions.push_back(a);
      } else if (kind == "X") {
        ++info.cleared;
      } else if (kind == "D") {
        ++info.dropped;
      }
    }
    std::remove(path.c_str());
  }
  rmdir(dir.c_str());

  // Limit: a sweep over [grant, release] intervals.
  std::vector<std::pair<int64_t, int>> edges;
  for (const auto& [run, info] : runs) {
    if (info.grants > 0) ++report.grants;
    if (info.grants > 1) ++report.duplicate_grants;
    if (info.enqueued_ns >= 0) ++report.queued;
    if (info.grant_ns >= 0 && info.release_ns >= 0) {
      edges.emplace_back(info.grant_ns, +1);
      edges.emplace_back(info.release_ns, -1);
    }
  }
  std::sort(edges.begin(), edges.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second < b.second;
  });
  int depth = 0;
  for (const auto& e : edges) {
    depth += e.second;
    report.max_overlap = std::max(report.max_overlap, depth);
  }

  // Clearing: a cleared run is never granted nor admitted; every run is
  // granted or removed, once; a run refused as removed was cleared.
  auto problem = [&](const std::string& what) {
    if (report.first_problem.empty()) report.first_problem = what;
  };
  for (const auto& [run, info] : runs) {
    if (info.cleared > 0) ++report.cleared;
    if (info.dropped > 0) ++report.removed;
    if (info.cleared > 0 && info.grants > 0) {
      ++report.cleared_admitted;
      problem(absl::StrCat(run, " was cleared and granted"));
    }
    if (info.grants + info.dropped != 1 || info.cleared > 1 ||
        (!groups && max_queue == absl::ZeroDuration() && info.dropped > 0 &&
         info.cleared == 0)) {
      ++report.unaccounted;
      problem(absl::StrCat(run, ": ", info.grants, " grants, ", info.cleared,
                           " clears, ", info.dropped, " refusals"));
    }
  }
  for (const Admission& a : admissions) {
    if (runs[a.run].cleared > 0 || runs[a.run].dropped > 0) {
      ++report.cleared_admitted;
      problem(absl::StrCat(a.run, " was removed and admitted by a release"));
    }
    // A release that began longer than the limit (and a millisecond for
    // the processes' clocks) after the run's enqueue returned admitted it
    // past its deadline: the enqueue was before that, the admission after.
    const RunInfo& b = runs[a.run];
    if (max_queue > absl::ZeroDuration() && b.enqueued_ns >= 0 &&
        a.release_start_ns - b.enqueued_ns >
            absl::ToInt64Nanoseconds(max_queue + absl::Milliseconds(1))) {
      ++report.cleared_admitted;
      problem(
          absl::StrCat(a.run, " was admitted by a release ",
                       (a.release_start_ns - b.enqueued_ns) / 1000,
                       " µs after it was queued, past its queue time limit"));
    }
  }

  // FIFO, among the runs never cleared.
  report.promotions = static_cast<int>(admissions.size());
  for (const Admission& a : admissions) {
    const RunInfo& b = runs[a.run];
    for (const auto& [xname, x] : runs) {
      if (xname == a.run || x.enqueued_ns < 0 || x.cleared > 0 ||
          x.dropped > 0) {
        continue;
      }
      // x admits before b: a higher priority (under the priority mode),
      // else older.
      const bool ahead = options.priorities && x.priority != b.priority
                             ? x.priority > b.priority
                             : x.creation_us < b.creation_us;
      if (x.enqueued_ns < a.release_start_ns && ahead) {
        ++report.fifo_checks;
        if (x.token < 0 || x.token > a.token) {
          ++report.fifo_violations;
          if (report.first_problem.empty()) {
            report.first_problem = absl::StrCat(
                a.run, " (token ", a.token, ") was admitted before ", xname,
                " (token ", x.token, "), which was queued ahead of it");
          }
        }
      }
    }
  }
  return report;
}

}  // namespace pac::concurrency::conformance
