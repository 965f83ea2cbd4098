#include "src/server/http_server.h"

#include <sys/socket.h>

#include <condition_variable>
#include <deque>
#include <mutex>

#include "httplib.h"
#include "pac/concurrency/config.h"
#include "spdlog/spdlog.h"
#include "src/common/strings.h"
#include "src/server/thread_pool.h"

namespace pac::concurrency::server {

using internal::Cat;

namespace {

using Reply = absl::StatusOr<std::pair<int, Json>>;

void SendJson(httplib::Response& res, int status, const Json& body) {
  res.status = status;
  res.set_content(body.dump() + "\n", "application/json");
}

void SendError(httplib::Response& res, const absl::Status& s) {
  SendJson(res, HttpStatusFor(s), ErrorToJson(s));
}

absl::StatusOr<Json> ParseBody(const httplib::Request& req) {
  if (req.body.empty()) {
    return absl::InvalidArgumentError("request body: empty, expected JSON");
  }
  Json doc = Json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return absl::InvalidArgumentError("request body: not valid JSON");
  }
  return doc;
}

std::string RepoKey(const httplib::Request& req) {
  return Cat(req.matches[1].str(), "/", req.matches[2].str());
}

// The server's worker threads kept ready (at least 4), and at most.
int PoolThreads(const HttpServerOptions& o) { return std::max(4, o.threads); }

// httplib's task queue on the server's pool (which outlives it: httplib
// makes one queue per listen and shuts it down when listening ends).
class PoolQueue : public httplib::TaskQueue {
 public:
  explicit PoolQueue(std::shared_ptr<ElasticThreadPool> pool)
      : pool_(std::move(pool)) {}
  void enqueue(std::function<void()> fn) override {
    pool_->Enqueue(std::move(fn));
  }
  void shutdown() override { pool_->Shutdown(); }

 private:
  std::shared_ptr<ElasticThreadPool> pool_;
};

bool IsMutating(const std::string& method) {
  return method == "POST" || method == "PUT" || method == "DELETE" ||
         method == "PATCH";
}

}  // namespace

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^
            static_cast<unsigned char>(b.empty() ? 0 : b[i % b.size()]);
  }
  return diff == 0;
}

HttpServer::HttpServer(Service* service, Metrics* metrics,
                       HttpServerOptions options)
    : service_(service),
      metrics_(metrics),
      options_(std::move(options)),
      pool_(std::make_shared<ElasticThreadPool>(ElasticThreadPool::Options{
          PoolThreads(options_), MaxThreadsOf(options_),
          options_.thread_idle_timeout})),
      http_(std::make_unique<httplib::Server>()),
      root_(Context::WithCancel(Context::Background())),
      max_watches_(options_.max_watches > 0
                       ? options_.max_watches
                       : std::max(1, MaxThreadsOf(options_) / 2)) {
  if (metrics_ != nullptr) {
    metrics_->Describe("pac_http_open_watches", "gauge",
                       "Watches (streams and long polls) open now.");
    metrics_->Describe("pac_http_max_watches", "gauge",
                       "Watches this server keeps open at once; one more "
                       "is refused with 429.");
    metrics_->Describe("pac_http_threads", "gauge",
                       "Server threads now; each open connection holds one.");
    metrics_->Describe("pac_http_busy_threads", "gauge",
                       "Server threads serving a connection now.");
    metrics_->Describe("pac_http_max_threads", "gauge",
                       "Server threads at most; a connection beyond them "
                       "waits for one.");
    metrics_->Describe("pac_http_requests_total", "counter",
                       "HTTP requests, by route, method and status.");
    metrics_->Describe("pac_http_request_duration_seconds", "histogram",
                       "Time to answer an HTTP request, by route.");
  }
  Routes();
}

HttpServer::~HttpServer() { Stop(); }

int MaxThreadsOf(const HttpServerOptions& o) {
  return std::max(PoolThreads(o),
                  o.max_threads > 0 ? o.max_threads : std::max(256, o.threads));
}

void HttpServer::Routes() {
  httplib::Server& s = *http_;
  s.new_task_queue = [pool = pool_] { return new PoolQueue(pool); };
  s.set_payload_max_length(options_.max_body_bytes);
  s.set_keep_alive_max_count(1000000);
  s.set_keep_alive_timeout(
      std::max<int64_t>(1, absl::ToInt64Seconds(options_.keep_alive_timeout)));
  s.set_tcp_nodelay(true);
  // httplib's own options set SO_REUSEPORT, with which a second server
  // binds the same port and the kernel splits the connections between the
  // two (with memory drivers, two separate states). SO_REUSEADDR alone
  // still lets a restarted server bind while old connections linger.
  s.set_socket_options([this](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });

  if (options_.logger != nullptr) {
    s.set_logger([logger = options_.logger](const httplib::Request& req,
                                            const httplib::Response& res) {
      logger->log(
          res.status >= 500 ? spdlog::level::warn : spdlog::level::debug,
          "http {} {} {} ({} bytes) from {}", req.method, req.path, res.status,
          res.body.size(), req.remote_addr);
    });
  }

  s.set_pre_routing_handler(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (options_.token.empty() || !IsMutating(req.method)) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        const std::string auth = req.get_header_value("Authorization");
        const std::string prefix = "Bearer ";
        if (auth.compare(0, prefix.size(), prefix) == 0 &&
            ConstantTimeEquals(std::string_view(auth).substr(prefix.size()),
                               options_.token)) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        res.set_header("WWW-Authenticate", "Bearer");
        SendError(res, absl::UnauthenticatedError(
                           "a bearer token is required for this request"));
        return httplib::Server::HandlerResponse::Handled;
      });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    switch (res.status) {
      case 404:
        SendJson(res, 404,
                 ErrorToJson(absl::NotFoundError(
                     Cat("no route for ", req.method, " ", req.path))));
        break;
      case 413:
        SendJson(
            res, 413,
            ErrorToJson(absl::InvalidArgumentError("request body: too large")));
        break;
      default:
        SendJson(
            res, res.status,
            ErrorToJson(absl::InvalidArgumentError(Cat("HTTP ", res.status))));
    }
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                             std::exception_ptr ep) {
    std::string what = "unexpected error";
    try {
      std::rethrow_exception(ep);
    } catch (const Json::exception& e) {
      SendError(res,
                absl::InvalidArgumentError(Cat("request body: ", e.what())));
      return;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    SendError(res, absl::InternalError(what));
  });

  // Wraps a handler: a per-request deadline, JSON answers, metrics.
  auto wrap =
      [this](std::string route,
             std::function<Reply(const httplib::Request&, const Context&)> fn) {
        return [this, route = std::move(route), fn = std::move(fn)](
                   const httplib::Request& req, httplib::Response& res) {
          const absl::Time start = absl::Now();
          Context ctx =
              Context::WithTimeout(root_.first, options_.request_timeout);
          Reply r = fn(req, ctx);
          if (r.ok()) {
            SendJson(res, r->first, r->second);
          } else {
            SendError(res, r.status());
          }
          if (metrics_ != nullptr) {
            metrics_->Inc("pac_http_requests_total",
                          {{"code", std::to_string(res.status)},
                           {"method", req.method},
                           {"route", route}});
            metrics_->Observe("pac_http_request_duration_seconds",
                              {{"route", route}},
                              absl::ToDoubleSeconds(absl::Now() - start));
          }
        };
      };
  auto ok = [](absl::StatusOr<Json> j, int code = 200) -> Reply {
    if (!j.ok()) return j.status();
    return std::make_pair(code, *std::move(j));
  };

  const std::string repo = "/v1/repositories/([^/]+)/([^/]+)";

  s.Get("/healthz", wrap("/healthz", [](const auto&, const Context&) -> Reply {
          return std::make_pair(200, Json{{"status", "ok"}});
        }));
  s.Get("/readyz",
        wrap("/readyz", [this](const auto&, const Context& ctx) -> Reply {
          if (absl::Status st = service_->Ready(ctx); !st.ok()) {
            return absl::UnavailableError(
                Cat("backend not ready: ", std::string(st.message())));
          }
          return std::make_pair(200, Json{{"status", "ready"}});
        }));
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    Context ctx = Context::WithTimeout(root_.first, options_.request_timeout);
    std::vector<Metrics::Gauge> gauges = service_->Gauges(ctx);
    gauges.push_back({"pac_http_open_watches", {}, double(open_watches_)});
    gauges.push_back({"pac_http_max_watches", {}, double(max_watches_)});
    gauges.push_back({"pac_http_threads", {}, double(pool_->threads())});
    gauges.push_back({"pac_http_busy_threads", {}, double(pool_->busy())});
    gauges.push_back(
        {"pac_http_max_threads", {}, double(pool_->max_threads())});
    std::string text = metrics_ != nullptr ? metrics_->Render(gauges) : "";
    res.set_content(text, "text/plain; version=0.0.4");
  });
  s.Get("/v1/repositories",
        wrap("/v1/repositories",
             [this, ok](const httplib::Request& req, const Context& ctx) {
               return ok(service_->ListRepositories(
                   ctx, req.get_param_value("namespace")));
             }));
  s.Post("/v1/repositories",
         wrap("/v1/repositories",
              [this, ok](const httplib::Request& req, const Context& ctx) {
                return ok(service_->ApplyManifests(ctx, req.body));
              }));
  s.Get(repo, wrap("/v1/repositories/{ns}/{name}",
                   [this, ok](const httplib::Request& req, const Context& ctx) {
                     return ok(service_->Status(ctx, RepoKey(req)));
                   }));
  s.Put(repo, wrap("/v1/repositories/{ns}/{name}",
                   [this, ok](const httplib::Request& req,
                              const Context& ctx) -> Reply {
                     auto body = ParseBody(req);
                     if (!body.ok()) return body.status();
                     return ok(service_->SetLimit(ctx, RepoKey(req), *body));
                   }));
  s.Delete(repo,
           wrap("/v1/repositories/{ns}/{name}",
                [this, ok](const httplib::Request& req, const Context& ctx) {
                  return ok(service_->Cleanup(ctx, RepoKey(req)));
                }));
  s.Post(repo + "/runs",
         wrap("/v1/repositories/{ns}/{name}/runs",
              [this](const httplib::Request& req, const Context& ctx) -> Reply {
                auto body = ParseBody(req);
                if (!body.ok()) return body.status();
                auto r = service_->Submit(ctx, RepoKey(req), *body);
                if (!r.ok()) return r.status();
                const int code = (*r)["acquired"].get<bool>() ? 200 : 202;
                return std::make_pair(code, *std::move(r));
              }));
  s.Delete(repo + "/runs/([^/]+)/([^/]+)",
           wrap("/v1/repositories/{ns}/{name}/runs/{run_ns}/{run_name}",
                [this, ok](const httplib::Request& req, const Context& ctx) {
                  return ok(service_->Release(
                      ctx, RepoKey(req),
                      Cat(req.matches[3].str(), "/", req.matches[4].str()),
                      req.get_param_value("lease_id")));
                }));
  s.Post("/v1/leases/([^/]+)/renew",
         wrap("/v1/leases/{id}/renew",
              [this, ok](const httplib::Request& req, const Context& ctx) {
                return ok(service_->Renew(ctx, req.matches[1].str()));
              }));
  s.Post("/v1/import", wrap("/v1/import",
                            [this, ok](const httplib::Request& req,
                                       const Context& ctx) -> Reply {
                              auto body = ParseBody(req);
                              if (!body.ok()) return body.status();
                              return ok(service_->Import(ctx, *body));
                            }));

  // Watch: long poll with ?timeout=30s, else a server-sent event stream.
  s.Get(repo + "/watch", [this](const httplib::Request& req,
                                httplib::Response& res) {
    const std::string key = RepoKey(req);
    if (absl::Status st = ValidateKey(key, "repository"); !st.ok()) {
      SendError(res, st);
      return;
    }
    // An open watch holds a server thread; past the cap it is refused, so
    // that watchers never hold every thread. The place is held while
    // `place` or a copy lives: to the end of a long poll, or as long as the
    // response keeps the stream's provider.
    std::shared_ptr<std::atomic<int>> place = TakeWatchPlace();
    if (metrics_ != nullptr) {
      metrics_->Inc("pac_http_requests_total",
                    {{"code", place ? "200" : "429"},
                     {"method", "GET"},
                     {"route", "/v1/repositories/{ns}/{name}/watch"}});
    }
    if (!place) {
      res.set_header("Retry-After", "1");
      SendError(res, absl::ResourceExhaustedError(Cat(
                         "too many open watches: this server keeps at most ",
                         max_watches_,
                         " open at once (serve --max-watches), so that other "
                         "requests still get a thread; retry later")));
      return;
    }
    if (req.has_param("timeout")) {
      auto d = ParseDuration(req.get_param_value("timeout"));
      if (!d.ok() || *d <= absl::ZeroDuration() ||
          *d > options_.max_long_poll) {
        SendError(res, absl::InvalidArgumentError(
                           Cat("timeout: must be a duration in (0, ",
                               absl::FormatDuration(options_.max_long_poll),
                               "] such as 30s")));
        return;
      }
      Context ctx = Context::WithTimeout(root_.first, *d);
      Json events = Json::array();
      absl::Status st = service_->Watch(
          ctx, key,
          [&events](const Json& ev) {
            if (ev.is_null()) return true;
            events.push_back(ev);
            return false;  // answer at the first event
          },
          nullptr);
      if (!st.ok() && st.code() != absl::StatusCode::kDeadlineExceeded) {
        SendError(res, st);
        return;
      }
      SendJson(res, 200, Json{{"repository", key}, {"events", events}});
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    Context parent = root_.first;
    Service* service = service_;
    res.set_chunked_content_provider(
        "text/event-stream",
        [service, parent, key, place](size_t, httplib::DataSink& sink) {
          auto send = [&sink](const std::string& text) {
            return sink.write(text.data(), text.size());
          };
          (void)service->Watch(
              parent, key,
              [&](const Json& ev) {
                if (ev.is_null()) return send(": heartbeat\n\n");
                return send(Cat("event: ", ev["type"].get<std::string>(),
                                "\ndata: ", ev.dump(), "\n\n"));
              },
              [&] {
                return send(Cat("event: ready\ndata: ",
                                Json{{"repository", key}}.dump(), "\n\n"));
              });
          sink.done();
          return true;
        });
  });
}

std::shared_ptr<std::atomic<int>> HttpServer::TakeWatchPlace() {
  if (open_watches_.fetch_add(1) >= max_watches_) {
    open_watches_.fetch_sub(1);
    return nullptr;
  }
  return std::shared_ptr<std::atomic<int>>(
      &open_watches_, [](std::atomic<int>* n) { n->fetch_sub(1); });
}

absl::Status HttpServer::Start() {
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
    if (port_ <= 0) {
      return absl::UnavailableError(
          Cat("cannot listen on ", options_.host, ": bind failed"));
    }
  } else {
    if (!http_->bind_to_port(options_.host, options_.port)) {
      return absl::UnavailableError(Cat("cannot listen on ", options_.host, ":",
                                        options_.port, " (address in use?)"));
    }
    port_ = options_.port;
  }
  // httplib listens with a backlog of 5: a burst of more new connections
  // than that lost SYNs, which the clients sent again after a second.
  // Listening again on the bound socket raises the backlog.
  if (listen_fd_ >= 0) (void)::listen(listen_fd_, SOMAXCONN);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return absl::OkStatus();
}

void HttpServer::Stop() {
  root_.second.Cancel();
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace pac::concurrency::server
