// `pac-concurrency run --repo ns/name --run ns/pr -- command args...`:
// waits in the queue (showing its position), keeps the lease alive while
// the command runs, releases on exit and on SIGINT/SIGTERM/SIGHUP (which
// are passed on to the command), and exits with the command's status, as
// `consul lock -n 1` does. If the lease is lost (the server says so, or no
// renewal succeeded before it expires, e.g. the server is unreachable), the
// command is sent SIGTERM and then SIGKILL before the lease expires: it no
// longer holds a slot. A renewal that says a newer run of the group asked
// this one to stop (`--supersede` on the newer run) sends SIGTERM, and
// SIGKILL after --kill-grace, while the slot stays held until the command
// exits (`run` exits with its status, or 1 if it had not started).
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

struct RunFlags : SubmitFlags {
  absl::Duration kill_grace = absl::Seconds(10);
  std::string kill_grace_text = "10s";
  std::vector<std::string> command;
};

// State the signal thread shares with the command; it lives as long as the
// process, since that thread is never joined.
struct SignalState {
  std::atomic<int> signal{0};
  std::atomic<pid_t> child{0};
  // The command runs in a process group of its own (unless stdin is a
  // terminal, where it stays in run's for job control): signals go to the
  // whole group, so `sh -c` and its children stop together.
  std::atomic<bool> own_group{false};
  Context::Canceller cancel;
};

// Sends `sig` to the command, and to its process group when it has one.
void Signal(const SignalState& state, int sig) {
  const pid_t child = state.child.load();
  if (child <= 0) return;
  if (state.own_group.load()) {
    kill(-child, sig);
  } else {
    kill(child, sig);
  }
}

void Note(const std::string& text) {
  std::fprintf(stderr, "pac-concurrency: %s\n", text.c_str());
  std::fflush(stderr);
}

int RunCommand(const GlobalOptions& g, RunFlags f) {
  if (auto d = ParseDuration(f.kill_grace_text);
      !d.ok() || *d < absl::ZeroDuration()) {
    return Fail(absl::InvalidArgumentError(
        "--kill-grace: must be a duration such as 10s"));
  } else {
    f.kill_grace = *d;
  }
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
      Signal(*state, sig);
    }
  }).detach();

  auto api = OpenApi(g, *base);
  if (!api.ok()) return Fail(api.status());
  server::Api& a = *(*api)->api;
  auto submit = SubmitBody(f);
  if (!submit.ok()) return Fail(submit.status());
  const Json body = *std::move(submit);

  auto lease =
      WaitForSlot(a, ctx, f.repo, body,
                  [](int64_t pos, const std::vector<std::string>& holders) {
                    Note(Cat("queued at position ", pos));
                    for (const std::string& h : holders) Note(h);
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

  // Keep the lease alive: renew at a third of its TTL. A holder that
  // cannot renew must assume that its slot goes to somebody else when the
  // lease expires, whether or not it can reach anyone: the command is sent
  // SIGTERM `grace` before the last moment the lease is sure to be alive,
  // and SIGKILL just before that moment (rule 4 of docs/contract.md).
  const absl::Time granted_seen = absl::Now();
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
  const absl::Duration margin = std::min(absl::Seconds(1), ttl / 10);
  const absl::Duration grace = std::min(f.kill_grace, ttl / 4);
  internal::Mutex mu;
  internal::CondVar cv;
  bool done = false;  // guarded by mu
  std::atomic<bool> lost{false};
  // Sleeps until `until` or until the command is done; false when done.
  auto sleep_until = [&](absl::Time until) {
    internal::MutexLock lock(&mu);
    while (!done && absl::Now() < until) cv.WaitUntil(&mu, until);
    return !done;
  };
  // Stops the command: SIGTERM now, SIGKILL at `kill_at` if still there.
  auto stop_command = [&](absl::Time kill_at) {
    lost = true;
    Signal(*state, SIGTERM);
    if (!sleep_until(kill_at)) return;
    if (state->child.load() > 0) {
      Note("the command did not stop after SIGTERM: SIGKILL");
      Signal(*state, SIGKILL);
    }
  };
  // Asked to stop by a newer run of its group (cancel_requested in a
  // renewal): SIGTERM, then SIGKILL after the grace unless it has exited.
  // The slot stays held, and renewed, until the command exits.
  absl::Time cancel_kill_at = absl::InfiniteFuture();  // renewer's only
  std::atomic<bool> cancelled{false};
  std::thread renewer([&] {
    // The lease is sure to be alive until `valid_until`: the server
    // extends it to its own now + TTL, which is no earlier than the moment
    // the renewal was sent. The grant itself was seen at `granted_seen`;
    // its exact moment is unknown, so the first renewal goes at once.
    absl::Time valid_until = granted_seen + ttl - 2 * margin;
    absl::Duration wait = absl::ZeroDuration();
    while (true) {
      const absl::Time term_at = valid_until - grace - margin;
      if (!sleep_until(std::min(absl::Now() + wait, term_at))) return;
      if (absl::Now() >= term_at) {
        Note(
            Cat("could not renew the lease before it expires (at the "
                "latest ",
                absl::FormatDuration(valid_until - absl::Now()),
                " from now); its slot may go to another run: stopping "
                "the command (SIGTERM; SIGKILL in ",
                absl::FormatDuration(grace), ")"));
        stop_command(valid_until - margin);
        return;
      }
      const absl::Time sent = absl::Now();
      Context rc = Context::WithDeadline(
          Context::Background(),
          std::min(sent + every,
                   std::max(term_at, sent + absl::Milliseconds(50))));
      auto r = a.Renew(rc, lease_id);
      if (r.ok()) {
        valid_until = sent + ttl;
        wait = every;
        const bool asked = (*r)["cancel_requested"].is_boolean() &&
                           (*r)["cancel_requested"].get<bool>();
        if (asked && cancel_kill_at == absl::InfiniteFuture()) {
          cancel_kill_at = absl::Now() + f.kill_grace;
          Note(Cat("asked to stop: a newer run of group ", f.group,
                   " was submitted; stopping the command (SIGTERM; SIGKILL "
                   "in ",
                   absl::FormatDuration(f.kill_grace), ")"));
          cancelled = true;
          Signal(*state, SIGTERM);
        } else if (asked && absl::Now() >= cancel_kill_at &&
                   state->child.load() > 0) {
          Note("the command did not stop after SIGTERM: SIGKILL");
          Signal(*state, SIGKILL);
          cancel_kill_at = absl::InfinitePast();
        }
        if (asked && cancel_kill_at > absl::Now()) {
          wait = std::min(wait, cancel_kill_at - absl::Now());
        }
        continue;
      }
      if (IsLeaseLost(r.status())) {
        Note(Cat("lease lost: ", std::string(SV(r.status().message())),
                 "; stopping the command (SIGTERM; SIGKILL in ",
                 absl::FormatDuration(grace), ")"));
        stop_command(absl::Now() + grace);
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
  const bool own_group = !isatty(STDIN_FILENO);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (own_group) {
    posix_spawnattr_setpgroup(&attr, 0);
    flags |= POSIX_SPAWN_SETPGROUP;
  }
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid = 0;
  int rc = 0;
  const bool interrupted =
      state->signal.load() != 0 || lost.load() || cancelled.load();
  if (!interrupted) {
    rc = posix_spawnp(&pid, argv[0], nullptr, &attr, argv.data(), environ);
  }
  posix_spawnattr_destroy(&attr);
  int exit_code;
  if (interrupted) {
    exit_code = lost || cancelled ? 1 : 128 + state->signal.load();
  } else if (rc != 0) {
    Note(Cat("cannot run ", f.command[0], ": ", std::strerror(rc)));
    exit_code = 127;
  } else {
    state->own_group = own_group;
    state->child = pid;
    if (int sig = state->signal.load(); sig != 0) Signal(*state, sig);
    // Lost, or asked to stop, while it was being started.
    if (lost || cancelled) Signal(*state, SIGTERM);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    state->child = 0;
    // The slot is gone: what the command left running in its group goes
    // too (a shell that died of SIGTERM may leave children that ignore it).
    if (lost && own_group) kill(-pid, SIGKILL);
    exit_code = WIFEXITED(status)     ? WEXITSTATUS(status)
                : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                      : 1;
  }
  stop_renewer();
  // After a lost lease the release is still sent (by lease id, it frees
  // only this grant, if the server still has it), but nobody is told that
  // the slot was released: it may have gone to another run already. The
  // backend is likely out of reach then, so `run` waits for it briefly.
  Context rc_ctx = Context::WithTimeout(
      Context::Background(), lost ? absl::Seconds(2) : absl::Seconds(10));
  auto released = a.Release(rc_ctx, f.repo, f.run, lease_id);
  if (lost) {
    Note(
        "the lease was lost while the command ran; the command was "
        "stopped");
  } else if (!released.ok()) {
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
  AddSubmitFlags(cmd, f.get(),
                 "Concurrency limit to record (default: keep the recorded "
                 "one)");
  cmd->add_option("--kill-grace", f->kill_grace_text,
                  "When the lease cannot be renewed before it expires, the "
                  "command gets SIGTERM, then SIGKILL this much later (at "
                  "most a quarter of the lease's TTL)")
      ->capture_default_str();
  cmd->add_option("command", f->command, "The command and its arguments")
      ->expected(-1);
  cmd->callback([&g, f, run] { *run = [&g, f] { return RunCommand(g, *f); }; });
}

}  // namespace pac::concurrency::cli
