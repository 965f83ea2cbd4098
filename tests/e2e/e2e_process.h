// What the end-to-end tests share (tests/e2e/*_test.cc): the real
// `pac-concurrency` binary run as a child process (Spawn, Finish, Cli), a
// server on a free port (ServerProcess), temporary files and names, and
// waiting for a condition.
#ifndef PAC_TESTS_E2E_E2E_PROCESS_H_
#define PAC_TESTS_E2E_E2E_PROCESS_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/server/remote_api.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/tcp_forwarder.h"

namespace pac::concurrency {
namespace {

using server::Json;
using server::RemoteApi;

const char* Binary() { return PAC_CLI_BINARY; }

std::string TempDir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/pac-e2e.XXXXXX";
    return std::string(mkdtemp(tmpl));
  }();
  return dir;
}

std::string WriteFile(const std::string& name, const std::string& text) {
  std::string path = TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

std::string Unique(const std::string& prefix) {
  static std::mt19937_64 rng{std::random_device{}()};
  return prefix + "-" + std::to_string(rng() % 1000000000);
}

// A child process with its stdout (and stderr) on a pipe.
struct Child {
  pid_t pid = -1;
  int out = -1;
};

Child Spawn(const std::vector<std::string>& args,
            const std::vector<std::string>& env = {}, bool own_group = false) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    if (own_group) setpgid(0, 0);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    for (const std::string& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  return Child{pid, fds[0]};
}

// Reads a child's output until it exits; returns its exit code.
int Finish(Child c, std::string* output) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(c.out, buf, sizeof buf)) > 0) out.append(buf, n);
  close(c.out);
  int status = 0;
  waitpid(c.pid, &status, 0);
  if (output != nullptr) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct CliResult {
  int code;
  std::string out;
  Json json() const { return Json::parse(out, nullptr, false); }
};

CliResult Cli(const std::string& server, std::vector<std::string> args,
              const std::vector<std::string>& env = {}) {
  std::vector<std::string> full{Binary(), "--server", server};
  full.insert(full.end(), args.begin(), args.end());
  CliResult r;
  r.code = Finish(Spawn(full, env), &r.out);
  return r;
}

// `pac-concurrency serve` on a free port.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> extra = {},
                         std::vector<std::string> env = {}) {
    std::vector<std::string> args{Binary(), "serve", "--listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    child_ = Spawn(args, env);
    // The first line says where it listens.
    // (Log lines on stderr may come first.)
    std::string line;
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      pollfd p{child_.out, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char ch;
      if (read(child_.out, &ch, 1) != 1) break;
      if (ch != '\n') {
        line += ch;
      } else if (line.find("serving on http") != std::string::npos) {
        break;
      } else {
        line.clear();
      }
    }
    size_t at = line.find("http");
    if (at != std::string::npos) {
      url_ = line.substr(at, line.find(' ', at) - at);
    }
    // Keep draining its log so it never blocks on a full pipe.
    drain_ = std::thread([fd = child_.out] {
      char buf[4096];
      while (read(fd, buf, sizeof buf) > 0) {
      }
    });
  }
  ~ServerProcess() {
    if (!killed_) kill(child_.pid, SIGTERM);
    int status;
    if (!killed_) waitpid(child_.pid, &status, 0);
    drain_.join();
    close(child_.out);
  }
  // Kills the server with SIGKILL (no cleanup, as a crash) and reaps it.
  void KillNow() {
    kill(child_.pid, SIGKILL);
    int status;
    waitpid(child_.pid, &status, 0);
    killed_ = true;
  }
  const std::string& url() const { return url_; }
  pid_t pid() const { return child_.pid; }

 private:
  Child child_;
  std::string url_;
  std::thread drain_;
  bool killed_ = false;
};

int InUse(const std::string& url, const std::string& repo) {
  RemoteApi api(url, "");
  auto s = api.Status(Context::Background(), repo);
  return s.ok() ? (*s)["in_use"].get<int>() : -1;
}

// Reads the child's output until `text` appears (a watch says "watching
// ns/name" on stderr once established), for at most 20 s; returns what it
// read.
std::string ReadUntil(const Child& c, const std::string& text) {
  std::string seen;
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (seen.find(text) == std::string::npos && absl::Now() < deadline) {
    pollfd p{c.out, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char ch;
    if (read(c.out, &ch, 1) != 1) break;
    seen += ch;
  }
  return seen;
}

bool Eventually(const std::function<bool()>& pred,
                absl::Duration patience = absl::Seconds(20)) {
  absl::Time deadline = absl::Now() + patience;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return pred();
}

}  // namespace
}  // namespace pac::concurrency

#endif  // PAC_TESTS_E2E_E2E_PROCESS_H_
