// HttpServer: the HTTP/JSON API of `pac-concurrency serve` (docs/api.md)
// over a Service, with /healthz, /readyz and Prometheus /metrics.
//
// The routes live here; the sockets, parsing and per-client limits in
// HttpTransport (http_transport.h). Not copyable. Start() binds and
// serves on background threads; Stop() (and the destructor) end open
// watch streams and join every thread.
#ifndef PAC_SRC_SERVER_HTTP_SERVER_H_
#define PAC_SRC_SERVER_HTTP_SERVER_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "pac/concurrency/context.h"
#include "src/server/auth.h"
#include "src/server/http_message.h"
#include "src/server/metrics.h"
#include "src/server/service.h"

namespace spdlog {
class logger;
}

namespace pac::concurrency::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see HttpServer::port())
  // When set, every mutating request needs "Authorization: Bearer <token>".
  std::string token;
  // Tokens with roles (auth.h); when set, replaces `token`.
  std::shared_ptr<const TokenTable> tokens;
  size_t max_body_bytes = 1 << 20;
  // Worker threads kept ready. A request holds one while its handler runs,
  // and an open watch for as long as it is open; an idle or slow
  // connection holds none. When none is idle the server starts more, up to
  // max_threads (0: the greater of 256 and threads), and those end after
  // thread_idle_timeout without work.
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
  // A request's line and headers must arrive within header_timeout of its
  // first byte, and its body within body_timeout of the headers; else the
  // connection is answered 408 and closed.
  absl::Duration header_timeout = absl::Seconds(10);
  absl::Duration body_timeout = absl::Seconds(30);
  // The request line and headers together, in bytes, and the number of
  // header fields (431 past either).
  size_t max_header_bytes = 16 * 1024;
  size_t max_header_count = 100;
  // Connections open at once, and from one peer address (0: no cap). A new
  // connection past a cap closes the oldest idle one it can; when none is
  // idle it is refused.
  int max_connections = 4096;
  int max_connections_per_peer = 0;
  // HTTPS (TLS 1.2+) when both are set (PEM files); with tls_client_ca_file
  // every client must present a certificate that CA signed (mutual TLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Run request handlers on the I/O threads instead of the worker pool:
  // faster, and right only when the backend never blocks for long (the
  // memory driver; `serve` sets it for that driver). Watches always run on
  // the pool.
  bool inline_handlers = false;
};

class ElasticThreadPool;
class HttpTransport;

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
  // What a route's caller must be, when tokens have roles.
  enum class Scope {
    kAny,             // no namespace in the request
    kRepository,      // the namespace of the path's repository
    kEveryNamespace,  // spans namespaces: a token limited to some may not
  };
  struct Access {
    std::optional<Role> role;  // none: open to all (health probes)
    Scope scope;
  };
  struct Route {
    std::string method;
    std::vector<std::string> pattern;  // "*" matches one segment
    Access access;
    std::function<HttpResponse(HttpRequest&)> fn;
  };
  // The route of `req` (its params set), or null.
  const Route* Match(HttpRequest& req) const;
  void Routes();
  HttpResponse Handle(HttpRequest& req);
  std::optional<HttpResponse> Precheck(HttpRequest& req) const;
  void Observe(const HttpRequest& req, int status, size_t bytes) const;
  HttpResponse Watch(HttpRequest& req);
  // A place among the watches kept open (max_watches_), given back when
  // the last copy of the handle goes; null when every place is taken.
  std::shared_ptr<std::atomic<int>> TakeWatchPlace();

  Service* const service_;
  Metrics* const metrics_;
  const HttpServerOptions options_;
  std::shared_ptr<ElasticThreadPool> pool_;
  std::vector<Route> routes_;
  std::shared_ptr<const TokenTable> tokens_;
  std::unique_ptr<HttpTransport> transport_;
  std::pair<Context, Context::Canceller> root_;
  int port_ = 0;
  bool stopped_ = false;
  const int max_watches_;
  std::atomic<int> open_watches_{0};
};

// The server's threads at most under `o` (at least 4, at least o.threads).
int MaxThreadsOf(const HttpServerOptions& o);

// Compares in time independent of where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_HTTP_SERVER_H_
