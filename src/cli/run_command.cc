// `pac-concurrency run --repo ns/name --run ns/pr -- command args...`:
// waits in the queue (showing its position), keeps the lease alive while
// the command runs, releases on exit and on SIGINT/SIGTERM/SIGHUP (which
// are passed on to the command), and exits with the command's status, as
// `consul lock -n 1` does. If the lease is lost (the server says it
// expired), the command is sent SIGTERM: it no longer holds a slot.
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "pac/concurrency/status.h"
#include "src/cli/cli.h"
#include "src/common/mutex.h"
#include "src/common/strings.h"

extern char** environ;

namespace pac::concurrency::cli {

using internal::Cat;
using internal::SV;

namespace {

struct RunFlags {
  std::string repo, run, creation_time;
  int limit = -1;
  std::vector<std::string> command;
};

// State the signal thread shares with the command; it lives as long as the
// process, since that thread is never joined.
struct SignalState {
  std::atomic<int> signal{0};
  std::atomic<pid_t> child{0};
  Context::Canceller cancel;
};

void Note(const std::string& text) {
  std::fprintf(stderr, "pac-concurrency: %s\n", text.c_str());
  std::fflush(stderr);
}

int RunCommand(const GlobalOptions& g, const RunFlags& f) {
  if (f.command.empty()) {
    return Fail(absl::InvalidArgumentError(
        "run: give the command after --, e.g. run --repo ns/r --run ns/pr -- "
        "make test"));
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto base = CommandContext(g, absl::ZeroDuration());
  if (!base.ok()) return Fail(base.status());
  auto [ctx, canceller] = Context::WithCancel(*base);
  auto* state = new SignalState{};  // never freed: see SignalState
  state->cancel = canceller;
  std::thread([state, signals] {
    while (true) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      state->signal = sig;
      state->cancel.Cancel();
      pid_t child = state->child.load();
      if (child > 0) kill(child, sig);
    }
  }).detach();

  auto api = OpenApi(g);
  if (!api.ok()) return Fail(api.status());
  server::Api& a = *(*api)->api;
  Json body{{"pipeline_run", f.run}};
  if (f.limit >= 0) body["concurrency_limit"] = f.limit;
  if (!f.creation_time.empty()) body["creation_time"] = f.creation_time;

  auto lease = WaitForSlot(a, ctx, f.repo, body, [](int64_t pos) {
    Note(Cat("queued at position ", pos));
  });
  if (!lease.ok()) {
    if (int sig = state->signal.load(); sig != 0) {
      Note(Cat("signal ", sig, " while queued: left the queue"));
      return 128 + sig;
    }
    return Fail(lease.status());
  }
  const std::string lease_id = (*lease)["lease_id"].get<std::string>();
  Note(Cat("acquired a slot in ", f.repo, " (lease ", lease_id,
           ", fencing token ", (*lease)["fencing_token"].get<int64_t>(), ")"));

  // Keep the lease alive: renew at a third of its TTL.
  absl::Duration ttl = absl::Seconds(30);
  {
    auto acquired = server::ParseTimestamp(
        (*lease)["acquired_at"].get<std::string>(), "acquired_at");
    auto expires = server::ParseTimestamp(
        (*lease)["expires_at"].get<std::string>(), "expires_at");
    if (acquired.ok() && expires.ok() && *expires > *acquired) {
      ttl = *expires - *acquired;
    }
  }
  const absl::Duration every = std::max(ttl / 3, absl::Milliseconds(200));
  internal::Mutex mu;
  internal::CondVar cv;
  bool done = false;  // guarded by mu
  std::atomic<bool> lost{false};
  std::thread renewer([&] {
    absl::Duration wait = every;
    while (true) {
      {
        internal::MutexLock lock(&mu);
        absl::Time until = absl::Now() + wait;
        while (!done && absl::Now() < until) cv.WaitUntil(&mu, until);
        if (done) return;
      }
      Context rc = Context::WithTimeout(Context::Background(), every);
      auto r = a.Renew(rc, lease_id);
      if (r.ok()) {
        wait = every;
        continue;
      }
      if (IsLeaseLost(r.status())) {
        lost = true;
        Note(Cat("lease lost: ", std::string(SV(r.status().message())),
                 "; stopping the command"));
        pid_t child = state->child.load();
        if (child > 0) kill(child, SIGTERM);
        return;
      }
      Note(Cat("renewal failed (will retry): ",
               std::string(SV(r.status().message()))));
      wait = std::max(every / 4, absl::Milliseconds(100));
    }
  });
  auto stop_renewer = [&] {
    {
      internal::MutexLock lock(&mu);
      done = true;
    }
    cv.NotifyAll();
    renewer.join();
  };

  // The command: signals back to default and unblocked.
  std::vector<char*> argv;
  for (const std::string& s : f.command)
    argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  defaults = signals;
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  int rc = 0;
  const bool interrupted = state->signal.load() != 0;
  if (!interrupted) {
    rc = posix_spawnp(&pid, argv[0], nullptr, &attr, argv.data(), environ);
  }
  posix_spawnattr_destroy(&attr);
  int exit_code;
  if (interrupted) {
    exit_code = 128 + state->signal.load();
  } else if (rc != 0) {
    Note(Cat("cannot run ", f.command[0], ": ", std::strerror(rc)));
    exit_code = 127;
  } else {
    state->child = pid;
    if (int sig = state->signal.load(); sig != 0) kill(pid, sig);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    state->child = 0;
    exit_code = WIFEXITED(status)     ? WEXITSTATUS(status)
                : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                      : 1;
  }
  stop_renewer();
  Context rc_ctx =
      Context::WithTimeout(Context::Background(), absl::Seconds(10));
  auto released = a.Release(rc_ctx, f.repo, f.run, lease_id);
  if (!released.ok()) {
    Note(Cat("release failed (the slot frees when the lease expires): ",
             std::string(SV(released.status().message()))));
  } else {
    std::string admitted;
    for (const Json& l : (*released)["admitted"]) {
      admitted += " " + l["pipeline_run"].get<std::string>();
    }
    Note(Cat("released the slot",
             admitted.empty() ? "" : Cat("; admitted", admitted)));
  }
  if (lost && exit_code == 0) exit_code = 1;
  return exit_code;
}

}  // namespace

void RegisterRunCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto f = std::make_shared<RunFlags>();
  CLI::App* cmd = app.add_subcommand(
      "run",
      "Run a command in a slot: wait in the queue, keep the lease "
      "alive, release on exit; exits with the command's status");
  cmd->add_option("--repo", f->repo, "Repository ns/name")->required();
  cmd->add_option("--run", f->run, "PipelineRun ns/name")->required();
  cmd->add_option("--limit", f->limit,
                  "Concurrency limit to record (default: keep the recorded "
                  "one)");
  cmd->add_option("--creation-time", f->creation_time,
                  "The run's creation time (RFC 3339), which orders the queue");
  cmd->add_option("command", f->command, "The command and its arguments")
      ->expected(-1);
  cmd->callback([&g, f, run] { *run = [&g, f] { return RunCommand(g, *f); }; });
}

}  // namespace pac::concurrency::cli
