#include "tests/conformance/etcd_process.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
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

bool Listening(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
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

// Starts an etcd node (not waiting for it); its output goes to dir/etcd.log.
absl::StatusOr<pid_t> SpawnNode(const std::string& name, const std::string& dir,
                                int client_port, int peer_port,
                                const std::string& initial_cluster) {
  const char* env = getenv("ETCD");
  const std::string binary =
      env != nullptr && *env != '\0' ? env : "/usr/bin/etcd";
  const std::string client = absl::StrCat("http://127.0.0.1:", client_port);
  const std::string peer = absl::StrCat("http://127.0.0.1:", peer_port);
  std::vector<std::string> args = {
      binary,
      "--name",
      name,
      "--data-dir",
      dir + "/data",
      "--listen-client-urls",
      client,
      "--advertise-client-urls",
      client,
      "--listen-peer-urls",
      peer,
      "--initial-advertise-peer-urls",
      peer,
      "--initial-cluster",
      initial_cluster,
      "--initial-cluster-state",
      "new",
      "--heartbeat-interval",
      "50",
      "--election-timeout",
      "500",
  };
  const std::string log = dir + "/etcd.log";
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
  return pid;
}

// Waits until the node `pid` at `endpoint` answers; an error if it exits
// or `give_up` passes (naming its log in `dir`).
absl::Status WaitNode(pid_t& pid, const std::string& endpoint,
                      const std::string& dir, absl::Time give_up) {
  const std::string log = dir + "/etcd.log";
  while (absl::Now() < give_up) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      pid = -1;
      return absl::FailedPreconditionError(
          absl::StrCat("etcd process: the node exited; see ", log));
    }
    if (Answers(endpoint)) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("etcd process: the node at ", endpoint,
                   " did not answer in time; see ", log));
}

void KillNode(pid_t& pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  pid = -1;
}

// The body of GET `path` from 127.0.0.1:`port` (HTTP/1.0, read to EOF),
// or "" on any failure. Half a second at most.
std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval tv{0, 500'000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string req =
        absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(req.size())) {
      char buf[16384];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, n);
    }
  }
  close(fd);
  return out;
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

void EtcdProcess::Kill() { KillNode(pid_); }

absl::Status EtcdProcess::Restart(absl::Duration timeout) {
  Kill();
  return Launch(timeout);
}

absl::Status EtcdProcess::Launch(absl::Duration timeout) {
  const std::string peer = absl::StrCat("http://127.0.0.1:", peer_port_);
  auto pid = SpawnNode("n1", dir_, client_port_, peer_port_, "n1=" + peer);
  if (!pid.ok()) return pid.status();
  pid_ = *pid;
  return WaitNode(pid_, endpoint(), dir_, absl::Now() + timeout);
}

absl::StatusOr<std::unique_ptr<EtcdCluster>> EtcdCluster::Start(
    int members, absl::Duration timeout) {
  char tmpl[] = "/tmp/pac-etcd-cluster-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    return absl::InternalError("etcd cluster: mkdtemp failed");
  }
  std::unique_ptr<EtcdCluster> c(new EtcdCluster(tmpl));
  std::vector<int> ports;
  for (int i = 0; i < members; ++i) {
    Member m;
    m.name = absl::StrCat("m", i);
    m.dir = absl::StrCat(c->dir_, "/", m.name);
    std::filesystem::create_directories(m.dir);
    for (int* port : {&m.client_port, &m.peer_port}) {
      do {
        *port = FreePort();
      } while (*port >= 0 &&
               std::find(ports.begin(), ports.end(), *port) != ports.end());
      if (*port < 0) return absl::InternalError("etcd cluster: no free port");
      ports.push_back(*port);
    }
    absl::StrAppend(&c->initial_cluster_, i == 0 ? "" : ",", m.name,
                    "=http://127.0.0.1:", m.peer_port);
    c->members_.push_back(std::move(m));
  }
  for (Member& m : c->members_) {
    if (absl::Status s = c->Spawn(m); !s.ok()) return s;
  }
  const absl::Time give_up = absl::Now() + timeout;
  for (Member& m : c->members_) {
    if (absl::Status s = c->WaitAnswers(m, give_up); !s.ok()) return s;
  }
  return c;
}

EtcdCluster::~EtcdCluster() {
  KillAll();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> out;
  for (const Member& m : members_) {
    out.push_back(absl::StrCat("127.0.0.1:", m.client_port));
  }
  return out;
}

absl::Status EtcdCluster::Spawn(Member& m) {
  auto pid =
      SpawnNode(m.name, m.dir, m.client_port, m.peer_port, initial_cluster_);
  if (!pid.ok()) return pid.status();
  m.pid = *pid;
  return absl::OkStatus();
}

absl::Status EtcdCluster::WaitAnswers(Member& m, absl::Time give_up) {
  return WaitNode(m.pid, absl::StrCat("127.0.0.1:", m.client_port), m.dir,
                  give_up);
}

void EtcdCluster::Kill(int i) { KillNode(members_[i].pid); }

absl::Status EtcdCluster::Restart(int i, absl::Duration timeout) {
  Member& m = members_[i];
  KillNode(m.pid);
  if (absl::Status s = Spawn(m); !s.ok()) return s;
  return WaitAnswers(m, absl::Now() + timeout);
}

void EtcdCluster::KillAll() {
  for (Member& m : members_) KillNode(m.pid);
}

absl::Status EtcdCluster::RestartAll(absl::Duration timeout) {
  for (Member& m : members_) {
    if (m.pid > 0) continue;
    if (absl::Status s = Spawn(m); !s.ok()) return s;
  }
  const absl::Time give_up = absl::Now() + timeout;
  for (Member& m : members_) {
    if (absl::Status s = WaitAnswers(m, give_up); !s.ok()) return s;
  }
  return absl::OkStatus();
}

int EtcdCluster::Leader(absl::Duration timeout) const {
  const absl::Time give_up = absl::Now() + timeout;
  do {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].pid <= 0) continue;
      if (HttpGet(members_[i].client_port, "/metrics")
              .find("\netcd_server_is_leader 1") != std::string::npos) {
        return static_cast<int>(i);
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < give_up);
  return -1;
}

}  // namespace pac::concurrency::conformance
