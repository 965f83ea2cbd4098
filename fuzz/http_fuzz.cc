// Raw HTTP bytes into an in-process server (the real transport and routes,
// the memory driver): whatever arrives, the server answers with HTTP or
// closes, within a bound, and goes on serving.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "fuzz/fuzz_util.h"
#include "src/server/http_server.h"

using namespace pac::concurrency;

namespace {

server::HttpServer& Server() {
  static server::HttpServer* s = [] {
    server::HttpServerOptions o;
    o.port = 0;
    o.max_body_bytes = 64 * 1024;
    o.header_timeout = absl::Seconds(2);
    o.body_timeout = absl::Seconds(2);
    o.request_timeout = absl::Seconds(2);
    o.max_long_poll = absl::Milliseconds(50);
    o.inline_handlers = true;
    auto& b = fuzz::SharedBackend();
    auto* server = new server::HttpServer(b.service.get(), &b.metrics, o);
    fuzz::Check(server->Start().ok(), "server starts");
    return server;
  }();
  return *s;
}

// Sends `bytes` on a new connection, half-closes it and reads until the
// server closes or stays silent for a second (a watch stream stays open);
// returns what it answered.
std::string Exchange(std::string_view bytes) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(Server().port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  fuzz::Check(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0,
              "connect");
  size_t at = 0;
  while (at < bytes.size()) {
    ssize_t n = send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server refused and closed: fine
    at += size_t(n);
  }
  shutdown(fd, SHUT_WR);
  std::string out;
  char buf[16384];
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 1000) <= 0) break;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  close(fd);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string answer =
      Exchange(std::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::Check(answer.empty() || answer.rfind("HTTP/1.", 0) == 0,
              "an answer is HTTP");
  // The server still answers at once (nothing above stalled it).
  static int n = 0;
  if (++n % 200 == 0) {
    fuzz::Check(
        Exchange("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").find(" 200 ") !=
            std::string::npos,
        "the server still serves");
  }
  return 0;
}
