#include "tests/conformance/tcp_forwarder.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace pac::concurrency::conformance {
namespace {

sockaddr_in Addr(const std::string& host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  return a;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TcpForwarder>> TcpForwarder::Start(
    const std::string& target) {
  size_t colon = target.rfind(':');
  int target_port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(target.substr(colon + 1), &target_port)) {
    return absl::InvalidArgumentError(
        absl::StrCat("forwarder target is not host:port: ", target));
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(strerror(errno));
  sockaddr_in a = Addr("127.0.0.1", 0);
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      listen(fd, 64) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::string e = strerror(errno);
    close(fd);
    return absl::InternalError(absl::StrCat("forwarder: ", e));
  }
  std::unique_ptr<TcpForwarder> f(new TcpForwarder(
      fd, ntohs(a.sin_port), target.substr(0, colon), target_port));
  f->accept_thread_ = std::thread([p = f.get()] { p->AcceptLoop(); });
  return f;
}

TcpForwarder::TcpForwarder(int listen_fd, int port, std::string target_host,
                           int target_port)
    : listen_fd_(listen_fd),
      port_(port),
      target_host_(std::move(target_host)),
      target_port_(target_port) {}

TcpForwarder::~TcpForwarder() {
  Close();
  close(listen_fd_);
}

std::string TcpForwarder::endpoint() const {
  return absl::StrCat("127.0.0.1:", port_);
}

void TcpForwarder::Close() {
  std::vector<std::thread> pumps;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    pumps.swap(pumps_);
  }
  accept_thread_.join();
  for (auto& t : pumps) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (int fd : fds_) close(fd);
  fds_.clear();
}

void TcpForwarder::SetDown(bool down) {
  down_.store(down);
  if (!down) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (int fd : fds_) shutdown(fd, SHUT_RDWR);
}

void TcpForwarder::AcceptLoop() {
  while (true) {
    int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINTR) continue;
      return;  // closed
    }
    if (down_.load()) {
      close(client);
      continue;
    }
    int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a = Addr(target_host_, target_port_);
    if (server < 0 ||
        connect(server, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      if (server >= 0) close(server);
      close(client);
      continue;
    }
    // Bytes go on at once, as on the direct path (no Nagle delay).
    const int one = 1;
    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) {
      close(client);
      close(server);
      return;
    }
    fds_.push_back(client);
    fds_.push_back(server);
    pumps_.emplace_back([this, client, server] { Pump(client, server); });
  }
}

// Copies both ways until either side ends; then ends both.
void TcpForwarder::Pump(int a, int b) {
  char buf[16384];
  pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
  while (true) {
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    bool done = false;
    for (int i = 0; i < 2 && !done; ++i) {
      if (p[i].revents == 0) continue;
      ssize_t n = read(p[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        done = true;
        break;
      }
      if (black_hole_.load()) continue;  // dropped
      if (int64_t us = delay_us_.load(); us > 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(us));
      }
      if (i == 1 && cut_next_reply_.exchange(false)) {  // from the server
        done = true;
        break;
      }
      for (ssize_t off = 0; off < n;) {
        ssize_t w = send(p[1 - i].fd, buf + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) {
          done = true;
          break;
        }
        off += w;
      }
    }
    if (done) break;
  }
  shutdown(a, SHUT_RDWR);
  shutdown(b, SHUT_RDWR);
}

}  // namespace pac::concurrency::conformance
