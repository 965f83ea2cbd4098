// Private to HttpTransport (http_transport.cc includes it; nothing else
// may): the transport's shared state (HttpTransport::Impl: options, the
// event loops, the connection registry with its caps, the TLS context) and
// one client connection (Impl::Conn): reading a request under its
// deadlines and limits, the optional TLS handshake, handing the request to
// its handler, writing the answer or a stream, and reading the next one.
// http_transport.cc owns the acceptor, the deadline sweep and closing.
#ifndef PAC_SRC_SERVER_HTTP_CONNECTION_H_
#define PAC_SRC_SERVER_HTTP_CONNECTION_H_

// clang-format off
#include <utility>  // first: Boost.Asio 1.74 uses std::exchange without it
// clang-format on

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <deque>
#include <limits>
#include <map>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "src/common/mutex.h"
#include "src/server/http_transport.h"
#include "src/server/thread_pool.h"

namespace pac::concurrency::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;

inline std::string ReasonPhrase(int status) {
  auto r = http::obsolete_reason(http::int_to_status(unsigned(status)));
  return r.empty() ? "Unknown" : std::string(r.data(), r.size());
}

// A JSON error answer: {"error": {"code", "message"}}.
inline HttpResponse ErrorAnswer(int status, const char* code,
                                const std::string& message) {
  HttpResponse r;
  r.status = status;
  r.body = Json{{"error", {{"code", code}, {"message", message}}}}.dump(
               -1, ' ', false, Json::error_handler_t::replace) +
           "\n";
  return r;
}

// The connection states the registry tracks.
enum class ConnState { kIdle, kReading, kBusy };

class HttpTransport::Impl {
 public:
  class Conn;

  Impl(Options o, std::shared_ptr<ElasticThreadPool> pool, Handler handler,
       Precheck precheck, Observer observer)
      : options_(std::move(o)),
        pool_(std::move(pool)),
        handler_(std::move(handler)),
        precheck_(std::move(precheck)),
        observer_(std::move(observer)) {
    for (int i = 0; i < std::max(1, options_.io_threads); ++i) {
      loops_.push_back(std::make_unique<Loop>());
    }
  }

  absl::Status Start();
  void Close();
  void Join() {
    for (auto& l : loops_) {
      l->work.reset();
      l->ioc.stop();
    }
    for (auto& l : loops_) {
      if (l->thread.joinable()) l->thread.join();
    }
  }
  void DoAccept();
  void OnAccept(tcp::socket socket);
  // Every 100 ms: tells the connections whose deadline has passed.
  void Sweep();
  // The TLS context of tls_cert_file and friends (InvalidArgument naming
  // the flag of a file that does not load).
  absl::Status MakeTlsContext();

  void Unregister(uint64_t id) PAC_EXCLUDES(mu_) {
    internal::MutexLock lock(&mu_);
    EraseLocked(id);
  }
  void EraseLocked(uint64_t id) PAC_REQUIRES(mu_) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    auto p = per_peer_.find(it->second.peer);
    if (p != per_peer_.end() && --p->second <= 0) per_peer_.erase(p);
    conns_.erase(it);
  }
  void CountRefusal(const std::string& reason) PAC_EXCLUDES(mu_) {
    internal::MutexLock lock(&mu_);
    refusals_[reason] += 1;
  }

  const Options options_;
  std::shared_ptr<ElasticThreadPool> pool_;
  Handler handler_;
  Precheck precheck_;
  Observer observer_;
  // One event loop per I/O thread: a connection lives on one loop, so its
  // handlers never run at once and need no strand.
  struct Loop {
    asio::io_context ioc{1};
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>>
        work{ioc.get_executor()};
    std::thread thread;
  };
  std::vector<std::unique_ptr<Loop>> loops_;
  size_t next_loop_ = 0;  // on loop 0 (the acceptor's)
  std::optional<tcp::acceptor> acceptor_;
  std::optional<ssl::context> tls_;  // set when serving TLS
  std::optional<asio::steady_timer> sweep_;
  std::atomic<int> port_{0};
  std::atomic<bool> closed_{false};

  struct Entry {
    std::weak_ptr<Conn> conn;
    std::string peer;
  };
  mutable internal::Mutex mu_;
  std::unordered_map<uint64_t, Entry> conns_ PAC_GUARDED_BY(mu_);
  std::unordered_map<std::string, int> per_peer_ PAC_GUARDED_BY(mu_);
  std::map<std::string, double> refusals_ PAC_GUARDED_BY(mu_);
  uint64_t next_id_ PAC_GUARDED_BY(mu_) = 1;
};

// The steady clock, in nanoseconds (deadlines are kept as such).
inline int64_t MonoNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One client connection. Everything but StreamWrite, PostShutdown and the
// state/deadline atomics runs on its loop's thread.
class HttpTransport::Impl::Conn : public std::enable_shared_from_this<Conn> {
 public:
  Conn(Impl* t, tcp::socket socket, uint64_t id, std::string peer)
      : t_(t),
        ex_(socket.get_executor()),
        socket_(std::move(socket)),
        id_(id),
        peer_(std::move(peer)) {
    since_ns_ = MonoNanos();
  }

  // Starts reading requests (after a TLS handshake when serving TLS).
  void Begin() {
    asio::post(ex_, [self = shared_from_this()] {
      if (self->t_->tls_) {
        self->StartTls();
      } else {
        self->ReadNext();
      }
    });
  }

  // Closes the socket; pending operations end with an error.
  void Shutdown() {
    if (closed_.exchange(true)) return;
    deadline_ns_ = 0;
    beast::error_code ec;
    Lowest().shutdown(tcp::socket::shutdown_both, ec);
    Lowest().close(ec);
    t_->Unregister(id_);
  }
  // From any thread.
  void PostShutdown() {
    asio::post(ex_, [self = shared_from_this()] { self->Shutdown(); });
  }
  // From the sweep: the deadline may have passed; checked again here, as
  // the connection may have moved on since.
  void PostDeadline() {
    asio::post(ex_, [self = shared_from_this()] {
      const int64_t d = self->deadline_ns_;
      if (self->closed_ || d == 0 || d > MonoNanos()) return;
      self->deadline_ns_ = 0;
      self->timed_out_ = true;
      beast::error_code ignored;
      self->Lowest().cancel(ignored);
    });
  }

  std::atomic<int> state_{int(ConnState::kIdle)};
  std::atomic<int64_t> since_ns_{0};     // when state_ was last set
  std::atomic<int64_t> deadline_ns_{0};  // 0: none

 private:
  enum class Phase { kNone, kIdle, kHeader, kBody, kWrite };

  void SetState(ConnState s) {
    state_ = int(s);
    since_ns_ = MonoNanos();
  }
  void Arm(absl::Duration d, Phase p) {
    phase_ = p;
    timed_out_ = false;
    deadline_ns_ = MonoNanos() + absl::ToInt64Nanoseconds(d);
  }
  void Disarm() {
    phase_ = Phase::kNone;
    deadline_ns_ = 0;
  }

  // Ends the connection once an answer is out: under TLS with a
  // close_notify first (within a second), so the client sees a clean end.
  void CloseAfterAnswer() {
    if (!tls_) {
      Shutdown();
      return;
    }
    Arm(absl::Seconds(1), Phase::kWrite);
    tls_->async_shutdown([self = shared_from_this()](const beast::error_code&) {
      self->Disarm();
      self->Shutdown();
    });
  }

  // The TCP socket, under TLS or not.
  tcp::socket& Lowest() { return tls_ ? tls_->next_layer() : socket_; }
  // Calls f with the stream requests travel on: TLS or the plain socket.
  template <class F>
  void Io(F&& f) {
    if (tls_) {
      f(*tls_);
    } else {
      f(socket_);
    }
  }

  // Serving TLS: the first bytes must be a TLS handshake record. A client
  // that speaks plain HTTP is told so in plain HTTP (400) and closed.
  void StartTls() {
    Arm(t_->options_.header_timeout, Phase::kHeader);
    socket_.async_read_some(
        buf_.prepare(4096),
        [self = shared_from_this()](const beast::error_code& ec, size_t n) {
          self->Disarm();
          if (ec) {
            self->Shutdown();
            return;
          }
          self->buf_.commit(n);
          const auto* first =
              static_cast<const unsigned char*>(self->buf_.data().data());
          if (n == 0 || first[0] != 0x16) {
            self->req_.remote_addr = self->peer_;
            self->Refuse("not_tls",
                         ErrorAnswer(400, "INVALID_ARGUMENT",
                                     "this server speaks HTTPS only: use "
                                     "https:// (serve --tls-cert)"));
            return;
          }
          self->tls_.emplace(std::move(self->socket_), *self->t_->tls_);
          self->Arm(self->t_->options_.header_timeout, Phase::kHeader);
          self->tls_->async_handshake(
              ssl::stream_base::server, self->buf_.data(),
              [self](const beast::error_code& ec, size_t used) {
                self->Disarm();
                if (ec) {
                  self->t_->CountRefusal("tls_handshake");
                  self->Shutdown();
                  return;
                }
                self->buf_.consume(used);
                self->ReadNext();
              });
        });
  }

  void ReadNext() {
    if (closed_) return;
    if (buf_.size() > 0) {
      ReadHeader();
      return;
    }
    SetState(ConnState::kIdle);
    Arm(t_->options_.keep_alive_timeout, Phase::kIdle);
    auto on_read = [self = shared_from_this()](const beast::error_code& ec,
                                               size_t n) {
      if (ec) {
        self->Shutdown();  // closed, reset or idle too long
        return;
      }
      self->buf_.commit(n);
      self->ReadHeader();
    };
    Io([&](auto& s) { s.async_read_some(buf_.prepare(4096), on_read); });
  }

  void ReadHeader() {
    SetState(ConnState::kReading);
    parser_.emplace();
    parser_->header_limit(std::uint32_t(std::min<size_t>(
        t_->options_.max_header_bytes, std::numeric_limits<uint32_t>::max())));
    parser_->body_limit(std::uint64_t(t_->options_.max_body_bytes));
    req_ = HttpRequest{};
    req_.remote_addr = peer_;
    Arm(t_->options_.header_timeout, Phase::kHeader);
    auto on_header = [self = shared_from_this()](const beast::error_code& ec,
                                                 size_t) {
      self->OnHeader(ec);
    };
    Io([&](auto& s) { http::async_read_header(s, buf_, *parser_, on_header); });
  }

  // Answers a refusal and closes the connection after it.
  void Refuse(const std::string& reason, HttpResponse r) {
    t_->CountRefusal(reason);
    keep_alive_ = false;
    Answer(std::move(r));
  }

  // A read ended with `ec` in `phase`: refuse, or close quietly.
  void OnReadError(const beast::error_code& ec, Phase phase) {
    const auto& o = t_->options_;
    if (timed_out_) {
      const bool header = phase == Phase::kHeader;
      Refuse(header ? "header_timeout" : "body_timeout",
             ErrorAnswer(
                 408, "DEADLINE_EXCEEDED",
                 header ? fmt::format("request headers: not received within "
                                      "{} (serve --header-timeout)",
                                      absl::FormatDuration(o.header_timeout))
                        : fmt::format("request body: not received within {} "
                                      "(serve --body-timeout)",
                                      absl::FormatDuration(o.body_timeout))));
      return;
    }
    if (ec == http::error::header_limit) {
      Refuse("headers_too_large",
             ErrorAnswer(431, "INVALID_ARGUMENT",
                         fmt::format("request headers: too large, more than "
                                     "{} bytes (serve --max-header-bytes)",
                                     o.max_header_bytes)));
      return;
    }
    if (ec == http::error::body_limit) {
      Refuse("body_too_large", TooLarge());
      return;
    }
    if (ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted ||
        ec == http::error::partial_message) {
      Shutdown();
      return;
    }
    Refuse("malformed", ErrorAnswer(400, "INVALID_ARGUMENT",
                                    "malformed HTTP request: " + ec.message()));
  }

  HttpResponse TooLarge() const {
    return ErrorAnswer(413, "INVALID_ARGUMENT",
                       fmt::format("request body: too large, more than {} "
                                   "bytes (serve --max-body raises the limit)",
                                   t_->options_.max_body_bytes));
  }

  void OnHeader(const beast::error_code& ec) {
    const bool timed_out = timed_out_;
    Disarm();
    timed_out_ = timed_out;
    if (ec) {
      OnReadError(ec, Phase::kHeader);
      return;
    }
    auto& msg = parser_->get();
    if (size_t fields = size_t(std::distance(msg.begin(), msg.end()));
        fields > t_->options_.max_header_count) {
      Refuse("headers_too_large",
             ErrorAnswer(431, "INVALID_ARGUMENT",
                         fmt::format("request headers: {} fields, more than "
                                     "{} (serve --max-header-count)",
                                     fields, t_->options_.max_header_count)));
      return;
    }
    req_.method = std::string(msg.method_string());
    req_.target = std::string(msg.target());
    req_.authorization = std::string(msg[http::field::authorization]);
    version_ = msg.version();
    keep_alive_ = msg.keep_alive();
    std::string error;
    if (!ParseTarget(req_, &error)) {
      Refuse("malformed", ErrorAnswer(400, "INVALID_ARGUMENT", error));
      return;
    }
    if (auto len = parser_->content_length();
        len && *len > t_->options_.max_body_bytes) {
      Refuse("body_too_large", TooLarge());
      return;
    }
    if (t_->precheck_) {
      if (auto refused = t_->precheck_(req_)) {
        // The body is not read: the connection cannot be reused after it.
        if (!parser_->is_done()) keep_alive_ = false;
        Answer(*std::move(refused));
        return;
      }
    }
    if (parser_->is_done()) {
      Dispatch();
      return;
    }
    if (beast::iequals(msg[http::field::expect], "100-continue")) {
      auto cont =
          std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
      Arm(t_->options_.write_timeout, Phase::kWrite);
      auto on_sent = [self = shared_from_this(), cont](
                         const beast::error_code& ec, size_t) {
        self->Disarm();
        if (ec) {
          self->Shutdown();
          return;
        }
        self->ReadBody();
      };
      Io([&](auto& s) { asio::async_write(s, asio::buffer(*cont), on_sent); });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    Arm(t_->options_.body_timeout, Phase::kBody);
    auto on_body = [self = shared_from_this()](const beast::error_code& ec,
                                               size_t) {
      const bool timed_out = self->timed_out_;
      self->Disarm();
      self->timed_out_ = timed_out;
      if (ec) {
        self->OnReadError(ec, Phase::kBody);
        return;
      }
      self->Dispatch();
    };
    Io([&](auto& s) { http::async_read(s, buf_, *parser_, on_body); });
  }

  // Runs the handler: here on the I/O thread when handlers run inline and
  // the request is not long-running (no thread hop), else on the pool,
  // whence the answer comes back to the loop. A stream's writing loop
  // always runs on the pool.
  void Dispatch() {
    req_.body = std::move(parser_->get().body());
    parser_.reset();
    SetState(ConnState::kBusy);
    auto self = shared_from_this();
    if (!req_.long_running && t_->options_.inline_handlers) {
      HttpResponse r = t_->handler_(req_);
      if (!r.stream) {
        Answer(std::move(r));
        return;
      }
      t_->pool_->Enqueue(
          [self, req = std::move(req_), r = std::move(r)]() mutable {
            self->RunStream(std::move(req), std::move(r));
          });
      return;
    }
    t_->pool_->Enqueue([self, req = std::move(req_)]() mutable {
      HttpResponse r = self->t_->handler_(req);
      if (!r.stream) {
        asio::post(self->ex_,
                   [self, req = std::move(req), r = std::move(r)]() mutable {
                     self->req_ = std::move(req);
                     self->Answer(std::move(r));
                   });
        return;
      }
      self->RunStream(std::move(req), std::move(r));
    });
  }

  // On a pool thread: the stream's head, its pieces as the handler writes
  // them, its end.
  void RunStream(HttpRequest req, HttpResponse r) {
    auto self = shared_from_this();
    auto stream = std::move(r.stream);
    r.stream = nullptr;
    const bool chunked = version_ >= 11;
    asio::post(ex_, [self, r, chunked]() mutable {
      self->Enqueue(self->Head(r, std::nullopt, chunked), false);
    });
    stream([self, chunked](std::string_view piece) {
      return self->StreamWrite(piece, chunked);
    });
    const int status = r.status;
    asio::post(ex_, [self, req = std::move(req), chunked, status]() mutable {
      self->req_ = std::move(req);
      if (!chunked) self->keep_alive_ = false;
      if (self->t_->observer_) self->t_->observer_(self->req_, status, 0);
      self->Enqueue(chunked ? "0\r\n\r\n" : "", true);
    });
  }

  // From the stream's worker thread.
  bool StreamWrite(std::string_view piece, bool chunked) {
    if (closed_) return false;
    if (piece.empty()) return true;
    // A reader this far behind is too slow to keep.
    if (unsent_bytes_.load() > 4 * 1024 * 1024) {
      PostShutdown();
      return false;
    }
    std::string bytes = chunked
                            ? fmt::format("{:x}\r\n{}\r\n", piece.size(), piece)
                            : std::string(piece);
    unsent_bytes_ += bytes.size();
    asio::post(ex_,
               [self = shared_from_this(), bytes = std::move(bytes)]() mutable {
                 self->Enqueue(std::move(bytes), false);
               });
    return !closed_;
  }

  std::string Head(const HttpResponse& r, std::optional<size_t> length,
                   bool chunked) const {
    std::string h = fmt::format("HTTP/1.{} {} {}\r\nContent-Type: {}\r\n",
                                version_ >= 11 ? 1 : 0, r.status,
                                ReasonPhrase(r.status), r.content_type);
    if (length) h += fmt::format("Content-Length: {}\r\n", *length);
    if (chunked) h += "Transfer-Encoding: chunked\r\n";
    for (const auto& [name, value] : r.headers) {
      h += fmt::format("{}: {}\r\n", name, value);
    }
    if (!keep_alive_ || (!length && !chunked)) {
      h += "Connection: close\r\n";
    } else if (version_ < 11) {
      h += "Connection: keep-alive\r\n";
    }
    h += "\r\n";
    return h;
  }

  // Sends a whole answer to req_, then goes on with the next request.
  void Answer(HttpResponse r) {
    if (t_->observer_) t_->observer_(req_, r.status, r.body.size());
    std::string bytes = Head(r, r.body.size(), false);
    if (req_.method != "HEAD") bytes += r.body;
    Enqueue(std::move(bytes), true);
  }

  void Enqueue(std::string bytes, bool last) {
    if (closed_) return;
    out_.push_back({std::move(bytes), last});
    if (!writing_) WriteFront();
  }

  void WriteFront() {
    writing_ = true;
    Arm(t_->options_.write_timeout, Phase::kWrite);
    auto on_written = [self = shared_from_this()](const beast::error_code& ec,
                                                  size_t n) {
      self->Disarm();
      self->writing_ = false;
      if (ec) {
        self->Shutdown();
        return;
      }
      const bool last = self->out_.front().last;
      self->unsent_bytes_ -= std::min<size_t>(n, self->unsent_bytes_.load());
      self->out_.pop_front();
      if (!self->out_.empty()) {
        self->WriteFront();
      } else if (last) {
        if (self->keep_alive_) {
          self->ReadNext();
        } else {
          self->CloseAfterAnswer();
        }
      }
    };
    Io([&](auto& s) {
      asio::async_write(s, asio::buffer(out_.front().bytes), on_written);
    });
  }

  Impl* const t_;
  // The connection's loop (the socket's executor, kept apart: the socket
  // moves into tls_ while other threads post here).
  const tcp::socket::executor_type ex_;
  tcp::socket socket_;  // moved into tls_ once a TLS handshake starts
  std::optional<ssl::stream<tcp::socket>> tls_;
  const uint64_t id_;
  const std::string peer_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpRequest req_;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  Phase phase_ = Phase::kNone;
  bool timed_out_ = false;
  bool writing_ = false;
  struct Out {
    std::string bytes;
    bool last;  // the end of an answer
  };
  std::deque<Out> out_;
  std::atomic<bool> closed_{false};
  std::atomic<size_t> unsent_bytes_{0};
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_HTTP_CONNECTION_H_
