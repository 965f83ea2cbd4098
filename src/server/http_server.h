// HttpServer: the HTTP/JSON API of `pac-concurrency serve` (docs/api.md)
// over a Service, with /healthz, /readyz and Prometheus /metrics.
//
// Not copyable. Start() binds and serves on a background thread; Stop()
// (and the destructor) end open watch streams and join every thread.
#ifndef PAC_SRC_SERVER_HTTP_SERVER_H_
#define PAC_SRC_SERVER_HTTP_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "pac/concurrency/context.h"
#include "src/server/metrics.h"
#include "src/server/service.h"

namespace httplib {
class Server;
}
namespace spdlog {
class logger;
}

namespace pac::concurrency::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see HttpServer::port())
  // When set, every mutating request needs "Authorization: Bearer <token>".
  std::string token;
  size_t max_body_bytes = 1 << 20;
  // Threads kept ready. Each open connection holds one while it is open,
  // idle keep-alive connections and watches included; when none is idle
  // the server starts more, up to max_threads (0: the greater of 256 and
  // threads), and those end after thread_idle_timeout without work.
  int threads = 64;
  int max_threads = 0;
  absl::Duration thread_idle_timeout = absl::Seconds(10);
  // How long a connection may stay idle between two requests.
  absl::Duration keep_alive_timeout = absl::Seconds(5);
  // Watches (streams and long polls) open at once; one more is refused
  // with ResourceExhausted (HTTP 429), so that watchers never hold every
  // thread and acquire/release calls still get one. 0: half of the
  // threads at most (MaxThreadsOf).
  int max_watches = 0;
  absl::Duration request_timeout = absl::Seconds(30);
  // When set, every answered request is logged: at debug level, or at warn
  // for a 5xx. Method, path (not the query), status, body size and peer;
  // never a header or a body.
  std::shared_ptr<spdlog::logger> logger;
  absl::Duration max_long_poll = absl::Minutes(5);
};

class ElasticThreadPool;

class HttpServer {
 public:
  HttpServer(Service* service, Metrics* metrics, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the address (Unavailable naming it if that fails) and serves.
  [[nodiscard]] absl::Status Start();
  // The bound port (after Start).
  [[nodiscard]] int port() const { return port_; }
  // Stops serving; idempotent. Not to be called concurrently with itself.
  void Stop();

 private:
  void Routes();
  // A place among the watches kept open (max_watches_), given back when
  // the last copy of the handle goes; null when every place is taken.
  std::shared_ptr<std::atomic<int>> TakeWatchPlace();

  Service* const service_;
  Metrics* const metrics_;
  const HttpServerOptions options_;
  std::shared_ptr<ElasticThreadPool> pool_;
  std::unique_ptr<httplib::Server> http_;
  std::pair<Context, Context::Canceller> root_;
  std::thread thread_;
  int port_ = 0;
  int listen_fd_ = -1;  // the bound socket (set while binding, in Start)
  const int max_watches_;
  std::atomic<int> open_watches_{0};
};

// The server's threads at most under `o` (at least 4, at least o.threads).
int MaxThreadsOf(const HttpServerOptions& o);

// Compares in time independent of where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_HTTP_SERVER_H_
