#include "tests/conformance/etcd_process.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pac/concurrency/context.h"
#include "src/etcd/etcd_rpc.pb.h"
#include "src/etcd/grpc_etcd.h"

namespace pac::concurrency::conformance {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

namespace {

// One Range answered by the node at `endpoint` (it has a leader and
// serves), within about half a second.
bool Answers(const std::string& endpoint) {
  EtcdConfig c;
  c.mode = "etcd";
  c.endpoints = {endpoint};
  c.dial_timeout = absl::Milliseconds(300);
  auto kv = internal::NewGrpcEtcd(c, nullptr);
  if (!kv.ok()) return false;
  internal::etcdpb::RangeRequest req;
  req.set_key("/");
  req.set_count_only(true);
  Context ctx =
      Context::WithTimeout(Context::Background(), absl::Milliseconds(300));
  return (*kv)->Range(ctx, req).ok();
}

}  // namespace

EtcdProcess::EtcdProcess(std::string dir, int client_port, int peer_port)
    : dir_(std::move(dir)), client_port_(client_port), peer_port_(peer_port) {}

absl::StatusOr<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(
    absl::Duration timeout) {
  char tmpl[] = "/tmp/pac-etcd-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    return absl::InternalError("etcd process: mkdtemp failed");
  }
  const int client = FreePort();
  int peer = FreePort();
  while (peer == client) peer = FreePort();
  if (client < 0 || peer < 0) {
    return absl::InternalError("etcd process: no free port");
  }
  std::unique_ptr<EtcdProcess> p(new EtcdProcess(tmpl, client, peer));
  if (absl::Status s = p->Launch(timeout); !s.ok()) return s;
  return p;
}

EtcdProcess::~EtcdProcess() {
  Kill();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string EtcdProcess::endpoint() const {
  return absl::StrCat("127.0.0.1:", client_port_);
}

void EtcdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

absl::Status EtcdProcess::Restart(absl::Duration timeout) {
  Kill();
  return Launch(timeout);
}

absl::Status EtcdProcess::Launch(absl::Duration timeout) {
  const char* env = getenv("ETCD");
  const std::string binary =
      env != nullptr && *env != '\0' ? env : "/usr/bin/etcd";
  const std::string client = absl::StrCat("http://127.0.0.1:", client_port_);
  const std::string peer = absl::StrCat("http://127.0.0.1:", peer_port_);
  std::vector<std::string> args = {
      binary,         "--name",
      "n1",           "--data-dir",
      dir_ + "/data", "--listen-client-urls",
      client,         "--advertise-client-urls",
      client,         "--listen-peer-urls",
      peer,           "--initial-advertise-peer-urls",
      peer,           "--initial-cluster",
      "n1=" + peer,   "--initial-cluster-state",
      "new",          "--heartbeat-interval",
      "50",           "--election-timeout",
      "500",
  };
  const std::string log = dir_ + "/etcd.log";
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("etcd process: fork failed");
  if (pid == 0) {
    FILE* out = std::freopen(log.c_str(), "a", stdout);
    FILE* err = std::freopen(log.c_str(), "a", stderr);
    (void)out;
    (void)err;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::FailedPreconditionError(
          absl::StrCat("etcd process: ", binary, " exited; see ", log));
    }
    if (Answers(endpoint())) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("etcd process: ", binary, " did not answer within ",
                   absl::FormatDuration(timeout), "; see ", log));
}

}  // namespace pac::concurrency::conformance
