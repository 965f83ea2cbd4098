// HttpTransport: the event-driven HTTP/1.1 server under `pac-concurrency
// serve` (Boost.Beast's parser on Boost.Asio; docs/design.md says why).
//
// It owns the sockets and every per-client bound: a few I/O threads wait on
// all connections, so an idle or slow connection costs a socket and a
// buffer, never a thread. A request is read whole (line and headers within
// header_timeout and max_header_bytes, the body within body_timeout and
// max_body_bytes, whatever its framing) before its handler runs on the
// worker pool; answers go back in request order, so pipelined requests
// work. Past max_connections (or max_connections_per_peer) a new
// connection closes the oldest idle one, or is refused with 503 when none
// is idle. Every refusal is a JSON error document that names the limit.
//
// Thread-safety: Start/Stop/Join from one thread; the rest is internal.
// The handler runs on the pool's threads, many at once.
#ifndef PAC_SRC_SERVER_HTTP_TRANSPORT_H_
#define PAC_SRC_SERVER_HTTP_TRANSPORT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "src/server/http_message.h"

namespace pac::concurrency::server {

class ElasticThreadPool;

class HttpTransport {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    // Threads waiting on the sockets, each with its own event loop.
    int io_threads = 2;
    // Run handlers on the I/O thread that read the request (no thread
    // hop), except long_running ones: only for handlers that never block
    // for long (a backend in this process's memory). Otherwise every
    // handler runs on the pool.
    bool inline_handlers = false;
    size_t max_body_bytes = 1 << 20;
    size_t max_header_bytes = 16 * 1024;
    size_t max_header_count = 100;
    absl::Duration header_timeout = absl::Seconds(10);
    absl::Duration body_timeout = absl::Seconds(30);
    absl::Duration keep_alive_timeout = absl::Seconds(5);
    // A response (or a stream's piece) not taken by the client within this
    // closes the connection.
    absl::Duration write_timeout = absl::Seconds(30);
    int max_connections = 4096;
    int max_connections_per_peer = 0;
    // TLS (1.2 or later) when both are set: PEM certificate chain and key.
    // With tls_client_ca_file, clients must present a certificate it signed.
    std::string tls_cert_file;
    std::string tls_key_file;
    std::string tls_client_ca_file;
  };
  // Runs on a worker thread with the whole request.
  using Handler = std::function<HttpResponse(HttpRequest&)>;
  // Runs on an I/O thread once the headers are in, before the body is
  // read: an answer refuses the request (e.g. a missing token) without
  // reading its body. Must not block.
  using Precheck = std::function<std::optional<HttpResponse>(HttpRequest&)>;
  // Told of every answer the transport sends, its own refusals included.
  using Observer =
      std::function<void(const HttpRequest&, int status, size_t body_bytes)>;

  HttpTransport(Options options, std::shared_ptr<ElasticThreadPool> pool,
                Handler handler, Precheck precheck, Observer observer);
  ~HttpTransport();
  HttpTransport(const HttpTransport&) = delete;
  HttpTransport& operator=(const HttpTransport&) = delete;

  // Binds (Unavailable naming the address on failure) and starts the I/O
  // threads.
  [[nodiscard]] absl::Status Start();
  [[nodiscard]] int port() const;
  // Stops accepting and closes every connection (streams see their writer
  // fail); returns at once.
  void Close();
  // Waits for the I/O threads to end; call after Close() and after the
  // worker pool has finished its tasks.
  void Join();

  [[nodiscard]] int open_connections() const;
  [[nodiscard]] int max_connections() const;
  // Connections refused or closed by a limit since start, by reason
  // ("capacity", "header_timeout", "body_timeout", "body_too_large",
  // "headers_too_large", "malformed", "evicted_idle").
  [[nodiscard]] std::vector<std::pair<std::string, double>> Refusals() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_HTTP_TRANSPORT_H_
