#include "src/server/http_server.h"

#include <charconv>
#include <tuple>

#include "pac/concurrency/config.h"
#include "spdlog/spdlog.h"
#include "src/common/strings.h"
#include "src/server/http_transport.h"
#include "src/server/thread_pool.h"

namespace pac::concurrency::server {

using internal::Cat;

namespace {

using Reply = absl::StatusOr<std::pair<int, Json>>;

HttpResponse JsonAnswer(int status, const Json& body) {
  HttpResponse r;
  r.status = status;
  // Messages escape user bytes (EscapeBytes); `replace` is the last guard
  // against an invalid UTF-8 byte reaching the serializer.
  r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
  return r;
}

HttpResponse ErrorAnswer(const absl::Status& s) {
  return JsonAnswer(HttpStatusFor(s), ErrorToJson(s));
}

// An empty body is `{}` where `empty_is_object`, else an error.
absl::StatusOr<Json> ParseBody(const HttpRequest& req,
                               bool empty_is_object = false) {
  if (req.body.empty()) {
    if (empty_is_object) return Json::object();
    return absl::InvalidArgumentError("request body: empty, expected JSON");
  }
  return ParseJson(req.body, "request body");
}

std::string RepoKey(const HttpRequest& req) {
  return Cat(req.params[0], "/", req.params[1]);
}

// The server's worker threads kept ready (at least 4), and at most.
int PoolThreads(const HttpServerOptions& o) { return std::max(4, o.threads); }

bool IsMutating(const std::string& method) {
  return method == "POST" || method == "PUT" || method == "DELETE" ||
         method == "PATCH";
}

std::vector<std::string> Split(const std::string& pattern) {
  std::vector<std::string> out;
  size_t at = 1;
  while (true) {
    size_t slash = pattern.find('/', at);
    out.push_back(pattern.substr(at, slash - at));
    if (slash == std::string::npos) return out;
    at = slash + 1;
  }
}

// Removes every "lease_id" from an answer (for read-only tokens: a lease
// id lets its bearer renew or release the run).
void HideLeaseIds(Json& doc) {
  if (doc.is_object()) {
    doc.erase("lease_id");
    for (auto& [k, v] : doc.items()) HideLeaseIds(v);
  } else if (doc.is_array()) {
    for (Json& v : doc) HideLeaseIds(v);
  }
}

std::string DecodedPath(const HttpRequest& req) {
  std::string p;
  for (const std::string& s : req.segments) p += "/" + s;
  return p;
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
                       "Server worker threads now.");
    metrics_->Describe("pac_http_busy_threads", "gauge",
                       "Worker threads running a request or a watch now.");
    metrics_->Describe("pac_http_max_threads", "gauge",
                       "Worker threads at most; a request beyond them waits "
                       "for one.");
    metrics_->Describe("pac_http_open_connections", "gauge",
                       "Client connections open now.");
    metrics_->Describe("pac_http_max_connections", "gauge",
                       "Client connections kept open at once.");
    metrics_->Describe("pac_http_refusals_total", "counter",
                       "Connections refused or closed by a limit, by reason.");
    metrics_->Describe("pac_http_requests_total", "counter",
                       "HTTP requests, by route, method and status.");
    metrics_->Describe("pac_http_request_duration_seconds", "histogram",
                       "Time to answer an HTTP request, by route.");
  }
  tokens_ = options_.tokens != nullptr
                ? options_.tokens
                : std::make_shared<const TokenTable>(
                      TokenTable::Single(options_.token));
  Routes();
  HttpTransport::Options t;
  t.host = options_.host;
  t.port = options_.port;
  t.max_body_bytes = options_.max_body_bytes;
  t.max_header_bytes = options_.max_header_bytes;
  t.max_header_count = options_.max_header_count;
  t.header_timeout = options_.header_timeout;
  t.body_timeout = options_.body_timeout;
  t.keep_alive_timeout = options_.keep_alive_timeout;
  t.max_connections = options_.max_connections;
  t.max_connections_per_peer = options_.max_connections_per_peer;
  t.inline_handlers = options_.inline_handlers;
  t.tls_cert_file = options_.tls_cert_file;
  t.tls_key_file = options_.tls_key_file;
  t.tls_client_ca_file = options_.tls_client_ca_file;
  transport_ = std::make_unique<HttpTransport>(
      t, pool_, [this](HttpRequest& req) { return Handle(req); },
      [this](HttpRequest& req) { return Precheck(req); },
      [this](const HttpRequest& req, int status, size_t bytes) {
        Observe(req, status, bytes);
      });
}

HttpServer::~HttpServer() { Stop(); }

int MaxThreadsOf(const HttpServerOptions& o) {
  return std::max(PoolThreads(o),
                  o.max_threads > 0 ? o.max_threads : std::max(256, o.threads));
}

std::optional<HttpResponse> HttpServer::Precheck(HttpRequest& req) const {
  // A watch (a stream or a long poll) holds its thread while it is open.
  req.long_running = req.method == "GET" && req.segments.size() == 5 &&
                     req.segments[4] == "watch";
  const Route* route = Match(req);
  const TokenTable& tokens = *tokens_;
  req.role = std::string(RoleName(Role::kAdmin));
  if (tokens.open()) return std::nullopt;
  if (route != nullptr && !route->access.role) return std::nullopt;
  // The one shared token of before: reads need none.
  if (tokens.single() && !IsMutating(req.method)) return std::nullopt;
  TokenTable::Failure why;
  std::optional<Principal> who = tokens.Authenticate(req.authorization, &why);
  if (!who) {
    HttpResponse r = ErrorAnswer(absl::UnauthenticatedError(
        why == TokenTable::Failure::kMissing
            ? "a bearer token is required for this request (Authorization: "
              "Bearer <token>)"
            : "the bearer token is not one this server knows"));
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
  }
  req.role = std::string(RoleName(who->role));
  req.namespaces = who->namespaces;
  if (route == nullptr) return std::nullopt;  // a 404 for whoever asks
  const Access& a = route->access;
  if (who->role < *a.role) {
    return ErrorAnswer(absl::PermissionDeniedError(
        Cat("this request needs a token with the ", RoleName(*a.role),
            " role; this token has the ", RoleName(who->role), " role")));
  }
  if (a.scope == Scope::kRepository && !who->AllowsNamespace(req.params[0])) {
    return ErrorAnswer(absl::PermissionDeniedError(
        Cat("this token may not act on namespace \"",
            EscapeBytes(req.params[0]), "\"")));
  }
  if (a.scope == Scope::kEveryNamespace && !who->namespaces.empty()) {
    return ErrorAnswer(absl::PermissionDeniedError(
        "this request spans namespaces: it needs a token not limited to "
        "some"));
  }
  if (req.has_param("namespace") &&
      !who->AllowsNamespace(req.get_param_value("namespace"))) {
    return ErrorAnswer(absl::PermissionDeniedError(
        Cat("this token may not read namespace \"",
            EscapeBytes(req.get_param_value("namespace")), "\"")));
  }
  return std::nullopt;
}

void HttpServer::Observe(const HttpRequest& req, int status,
                         size_t bytes) const {
  if (options_.logger == nullptr) return;
  options_.logger->log(
      status >= 500 ? spdlog::level::warn : spdlog::level::debug,
      "http {} {} {} ({} bytes) from {}", EscapeBytes(req.method),
      EscapeBytes(req.path), status, bytes, req.remote_addr);
}

const HttpServer::Route* HttpServer::Match(HttpRequest& req) const {
  for (const Route& r : routes_) {
    if (r.method != req.method || r.pattern.size() != req.segments.size()) {
      continue;
    }
    req.params.clear();
    bool match = true;
    for (size_t i = 0; i < r.pattern.size() && match; ++i) {
      if (r.pattern[i] == "*") {
        match = !req.segments[i].empty();
        req.params.push_back(req.segments[i]);
      } else {
        match = r.pattern[i] == req.segments[i];
      }
    }
    if (match) return &r;
  }
  return nullptr;
}

HttpResponse HttpServer::Handle(HttpRequest& req) {
  if (const Route* r = Match(req)) return r->fn(req);
  return ErrorAnswer(absl::NotFoundError(
      Cat("no route for ", EscapeBytes(req.method), " ",
          EscapeBytes(DecodedPath(req)), " (docs/api.md lists the routes)")));
}

void HttpServer::Routes() {
  auto add = [this](std::string method, const std::string& pattern,
                    Access access,
                    std::function<HttpResponse(HttpRequest&)> fn) {
    routes_.push_back(
        {std::move(method), Split(pattern), access, std::move(fn)});
  };
  const Access open{std::nullopt, Scope::kAny};
  const Access read_repo{Role::kRead, Scope::kRepository};
  const Access read_all{Role::kRead, Scope::kEveryNamespace};
  const Access read_list{Role::kRead, Scope::kAny};
  const Access controller_repo{Role::kController, Scope::kRepository};
  const Access controller_any{Role::kController, Scope::kAny};
  const Access admin_repo{Role::kAdmin, Scope::kRepository};
  const Access admin_all{Role::kAdmin, Scope::kEveryNamespace};
  // Wraps a handler: a per-request deadline, JSON answers, metrics.
  auto wrap = [this](std::string route,
                     std::function<Reply(HttpRequest&, const Context&)> fn) {
    return [this, route = std::move(route),
            fn = std::move(fn)](HttpRequest& req) -> HttpResponse {
      const absl::Time start = absl::Now();
      Context ctx = Context::WithTimeout(root_.first, options_.request_timeout);
      Reply r = fn(req, ctx);
      if (!r.ok() && absl::IsUnauthenticated(r.status())) {
        // The bearer token was checked before the handler: this is the
        // backend refusing our own credentials, which the client cannot
        // fix; 401 would tell it that its token is wrong.
        r = absl::UnavailableError(
            Cat("the backend refused this server's credentials: ",
                std::string(r.status().message())));
      }
      if (r.ok() && req.role == RoleName(Role::kRead)) {
        HideLeaseIds(r->second);
      }
      HttpResponse res =
          r.ok() ? JsonAnswer(r->first, r->second) : ErrorAnswer(r.status());
      if (metrics_ != nullptr) {
        metrics_->Inc("pac_http_requests_total",
                      {{"code", std::to_string(res.status)},
                       {"method", req.method},
                       {"route", route}});
        metrics_->Observe("pac_http_request_duration_seconds",
                          {{"route", route}},
                          absl::ToDoubleSeconds(absl::Now() - start));
      }
      return res;
    };
  };
  auto ok = [](absl::StatusOr<Json> j, int code = 200) -> Reply {
    if (!j.ok()) return j.status();
    return std::make_pair(code, *std::move(j));
  };

  const std::string repo = "/v1/repositories/*/*";
  const std::string repo_route = "/v1/repositories/{ns}/{name}";

  add("GET", "/healthz", open,
      wrap("/healthz", [](auto&, const Context&) -> Reply {
        return std::make_pair(200, Json{{"status", "ok"}});
      }));
  add("GET", "/readyz", open,
      wrap("/readyz", [this](auto&, const Context& ctx) -> Reply {
        if (absl::Status st = service_->Ready(ctx); !st.ok()) {
          return absl::UnavailableError(
              Cat("backend not ready: ", std::string(st.message())));
        }
        return std::make_pair(200, Json{{"status", "ready"}});
      }));
  add("GET", "/metrics", read_all, [this](HttpRequest&) {
    Context ctx = Context::WithTimeout(root_.first, options_.request_timeout);
    std::vector<Metrics::Gauge> gauges = service_->Gauges(ctx);
    gauges.push_back({"pac_http_open_watches", {}, double(open_watches_)});
    gauges.push_back({"pac_http_max_watches", {}, double(max_watches_)});
    gauges.push_back({"pac_http_threads", {}, double(pool_->threads())});
    gauges.push_back({"pac_http_busy_threads", {}, double(pool_->busy())});
    gauges.push_back(
        {"pac_http_max_threads", {}, double(pool_->max_threads())});
    gauges.push_back({"pac_http_open_connections",
                      {},
                      double(transport_->open_connections())});
    gauges.push_back({"pac_http_max_connections",
                      {},
                      double(transport_->max_connections())});
    for (const auto& [reason, n] : transport_->Refusals()) {
      gauges.push_back({"pac_http_refusals_total", {{"reason", reason}}, n});
    }
    HttpResponse res;
    res.content_type = "text/plain; version=0.0.4";
    res.body = metrics_ != nullptr ? metrics_->Render(gauges) : "";
    return res;
  });
  add("GET", "/v1/version", read_list,
      wrap("/v1/version", [this, ok](HttpRequest&, const Context& ctx) {
        return ok(service_->Version(ctx));
      }));
  add("GET", "/v1/repositories", read_list,
      wrap("/v1/repositories", [this, ok](HttpRequest& req,
                                          const Context& ctx) {
        ListPage page;
        if (req.has_param("limit")) {
          const std::string v = req.get_param_value("limit");
          size_t n = 0;
          auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
          if (ec != std::errc() || end != v.data() + v.size() || n < 1 ||
              n > ListPage::kMaxLimit) {
            return ok(absl::InvalidArgumentError(
                Cat("limit: an integer from 1 to ", ListPage::kMaxLimit)));
          }
          page.limit = n;
        }
        page.after = req.get_param_value("after");
        if (req.has_param("after") && page.after.empty()) {
          return ok(absl::InvalidArgumentError(
              "after: a repository key (namespace/name)"));
        }
        // A token limited to namespaces sees only their
        // repositories.
        page.namespaces = req.namespaces;
        return ok(service_->ListRepositories(
            ctx, req.get_param_value("namespace"), page));
      }));
  add("POST", "/v1/repositories", admin_all,
      wrap("/v1/repositories",
           [this, ok](HttpRequest& req, const Context& ctx) {
             return ok(service_->ApplyManifests(ctx, req.body));
           }));
  add("GET", repo, read_repo,
      wrap(repo_route, [this, ok](HttpRequest& req, const Context& ctx) {
        return ok(service_->Status(ctx, RepoKey(req)));
      }));
  add("PUT", repo, admin_repo,
      wrap(repo_route,
           [this, ok](HttpRequest& req, const Context& ctx) -> Reply {
             auto body = ParseBody(req);
             if (!body.ok()) return body.status();
             return ok(service_->SetLimit(ctx, RepoKey(req), *body));
           }));
  add("DELETE", repo, admin_repo,
      wrap(repo_route, [this, ok](HttpRequest& req, const Context& ctx) {
        return ok(service_->Cleanup(ctx, RepoKey(req)));
      }));
  add("PUT", repo + "/policy", admin_repo,
      wrap(repo_route + "/policy",
           [this, ok](HttpRequest& req, const Context& ctx) -> Reply {
             auto body = ParseBody(req);
             if (!body.ok()) return body.status();
             return ok(service_->SetPolicy(ctx, RepoKey(req), *body));
           }));
  add("GET", repo + "/policy", read_repo,
      wrap(repo_route + "/policy",
           [this, ok](HttpRequest& req, const Context& ctx) {
             return ok(service_->GetPolicy(ctx, RepoKey(req)));
           }));
  add("GET", "/v1/shared-limits", read_all,
      wrap("/v1/shared-limits", [this, ok](HttpRequest&, const Context& ctx) {
        return ok(service_->ListSharedLimits(ctx));
      }));
  add("PUT", "/v1/shared-limits/*", admin_all,
      wrap("/v1/shared-limits/{name}",
           [this, ok](HttpRequest& req, const Context& ctx) -> Reply {
             auto body = ParseBody(req);
             if (!body.ok()) return body.status();
             return ok(service_->SetSharedLimit(ctx, req.params[0], *body));
           }));
  add("DELETE", "/v1/shared-limits/*", admin_all,
      wrap("/v1/shared-limits/{name}",
           [this, ok](HttpRequest& req, const Context& ctx) {
             return ok(service_->DeleteSharedLimit(ctx, req.params[0]));
           }));
  add("DELETE", repo + "/queue", admin_repo,
      wrap(repo_route + "/queue",
           [this, ok](HttpRequest& req, const Context& ctx) {
             return ok(service_->ClearQueue(ctx, RepoKey(req)));
           }));
  add("POST", repo + "/runs", controller_repo,
      wrap(repo_route + "/runs",
           [this](HttpRequest& req, const Context& ctx) -> Reply {
             auto body = ParseBody(req);
             if (!body.ok()) return body.status();
             if (body->is_object() && body->value("state", "") == "started" &&
                 req.role != RoleName(Role::kAdmin)) {
               return absl::PermissionDeniedError(
                   "adopting a running run (\"state\": \"started\") needs "
                   "a token with the admin role: it may exceed the limit");
             }
             auto r = service_->Submit(ctx, RepoKey(req), *body);
             if (!r.ok()) return r.status();
             const int code = (*r)["acquired"].get<bool>() ? 200 : 202;
             return std::make_pair(code, *std::move(r));
           }));
  add("DELETE", repo + "/runs/*/*", controller_repo,
      wrap(repo_route + "/runs/{run_ns}/{run_name}",
           [this, ok](HttpRequest& req, const Context& ctx) {
             return ok(service_->Release(ctx, RepoKey(req),
                                         Cat(req.params[2], "/", req.params[3]),
                                         req.get_param_value("lease_id")));
           }));
  // The renew body is optional: none (curl -X POST) means {}.
  add("POST", "/v1/leases/*/renew", controller_any,
      wrap("/v1/leases/{id}/renew",
           [this, ok](HttpRequest& req, const Context& ctx) -> Reply {
             auto body = ParseBody(req, /*empty_is_object=*/true);
             if (!body.ok()) return body.status();
             if (!body->is_object() || !body->empty()) {
               return absl::InvalidArgumentError(
                   "request body: a renew takes no fields (send {} or "
                   "nothing)");
             }
             return ok(service_->Renew(ctx, req.params[0]));
           }));
  add("POST", "/v1/import", admin_all,
      wrap("/v1/import",
           [this, ok](HttpRequest& req, const Context& ctx) -> Reply {
             auto body = ParseBody(req);
             if (!body.ok()) return body.status();
             return ok(service_->Import(ctx, *body));
           }));
  // The specification's states: of a repository, of a pipeline run (whose
  // namespace is the one a namespace-limited token is checked against).
  for (auto [of, prefix, route] :
       {std::tuple{Api::StateOf::kRepository, repo, repo_route},
        std::tuple{Api::StateOf::kPipelineRun,
                   std::string("/v1/pipelineruns/*/*"),
                   std::string("/v1/pipelineruns/{ns}/{name}")}}) {
    add("GET", prefix + "/state", read_repo,
        wrap(route + "/state",
             [this, ok, of = of](HttpRequest& req, const Context& ctx) {
               return ok(service_->GetState(ctx, of, RepoKey(req)));
             }));
    add("PUT", prefix + "/state", controller_repo,
        wrap(
            route + "/state",
            [this, ok, of = of](HttpRequest& req, const Context& ctx) -> Reply {
              auto body = ParseBody(req);
              if (!body.ok()) return body.status();
              return ok(service_->SetState(ctx, of, RepoKey(req), *body));
            }));
  }
  add("GET", repo + "/watch", read_repo,
      [this](HttpRequest& req) { return Watch(req); });
}

HttpResponse HttpServer::Watch(HttpRequest& req) {
  const std::string key = RepoKey(req);
  if (absl::Status st = ValidateKey(key, "repository"); !st.ok()) {
    return ErrorAnswer(st);
  }
  // An open watch holds a worker thread; past the cap it is refused, so
  // that watchers never hold every thread. The place is held while `place`
  // or a copy lives: to the end of a long poll, or of the stream.
  std::shared_ptr<std::atomic<int>> place = TakeWatchPlace();
  if (metrics_ != nullptr) {
    metrics_->Inc("pac_http_requests_total",
                  {{"code", place ? "200" : "429"},
                   {"method", "GET"},
                   {"route", "/v1/repositories/{ns}/{name}/watch"}});
  }
  if (!place) {
    HttpResponse r = ErrorAnswer(absl::ResourceExhaustedError(
        Cat("too many open watches: this server keeps at most ", max_watches_,
            " open at once (serve --max-watches), so that other requests "
            "still get a thread; retry later")));
    r.headers.emplace_back("Retry-After", "1");
    return r;
  }
  if (req.has_param("timeout")) {
    auto d = ParseDuration(req.get_param_value("timeout"));
    if (!d.ok() || *d <= absl::ZeroDuration() || *d > options_.max_long_poll) {
      return ErrorAnswer(absl::InvalidArgumentError(
          Cat("timeout: must be a duration in (0, ",
              absl::FormatDuration(options_.max_long_poll), "] such as 30s")));
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
      return ErrorAnswer(st);
    }
    return JsonAnswer(200, Json{{"repository", key}, {"events", events}});
  }
  HttpResponse res;
  res.content_type = "text/event-stream";
  res.headers.emplace_back("Cache-Control", "no-cache");
  res.stream = [service = service_, parent = root_.first, key,
                place](const std::function<bool(std::string_view)>& write) {
    (void)service->Watch(
        parent, key,
        [&](const Json& ev) {
          if (ev.is_null()) return write(": heartbeat\n\n");
          return write(Cat("event: ", ev["type"].get<std::string>(),
                           "\ndata: ", ev.dump(), "\n\n"));
        },
        [&] {
          return write(Cat("event: ready\ndata: ",
                           Json{{"repository", key}}.dump(), "\n\n"));
        });
  };
  return res;
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
  if (absl::Status s = transport_->Start(); !s.ok()) return s;
  port_ = transport_->port();
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  root_.second.Cancel();
  transport_->Close();
  pool_->Shutdown();
  transport_->Join();
}

}  // namespace pac::concurrency::server
