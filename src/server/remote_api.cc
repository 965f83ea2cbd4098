#include "src/server/remote_api.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>

#include "httplib.h"
#include "src/common/escape.h"
#include "src/common/mutex.h"
#include "src/common/strings.h"

namespace pac::concurrency::server {

using internal::Cat;

namespace {

// Percent-encodes one path segment or query value.
std::string Escape(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// "ns/name" -> "ns/name" with each part escaped (a key with more or fewer
// slashes is escaped whole, and the server rejects it by name).
std::string KeyPath(std::string_view key) {
  size_t slash = key.find('/');
  if (slash == std::string_view::npos ||
      key.find('/', slash + 1) != std::string_view::npos) {
    return Cat(Escape(key), "/-");
  }
  return Cat(Escape(key.substr(0, slash)), "/", Escape(key.substr(slash + 1)));
}

void ApplyTimeouts(httplib::Client& cli, const Context& ctx) {
  absl::Duration left = ctx.deadline() - absl::Now();
  left = std::clamp(left, absl::Milliseconds(10), absl::Hours(1));
  const int64_t us = absl::ToInt64Microseconds(left);
  cli.set_connection_timeout(std::min<int64_t>(us / 1000000, 5),
                             us < 5000000 ? us % 1000000 : 0);
  cli.set_read_timeout(us / 1000000, us % 1000000);
  cli.set_write_timeout(us / 1000000, us % 1000000);
}

// What went wrong below HTTP, in words that say what to check.
std::string Describe(httplib::Error e) {
  switch (e) {
    case httplib::Error::SSLServerVerification:
      return "the server's TLS certificate is not trusted (check --ca-file "
             "and that the certificate names this host)";
    case httplib::Error::SSLConnection:
      return "the TLS handshake failed (a server that requires client "
             "certificates needs --cert and --key; an http:// server does "
             "not speak TLS)";
    case httplib::Error::SSLLoadingCerts:
      return "could not load the TLS files (--ca-file, --cert, --key)";
    default:
      return httplib::to_string(e);
  }
}

}  // namespace

absl::Status ValidateServerUrl(std::string_view url) {
  const std::string shown = internal::EscapeBytes(url);
  const size_t sep = url.find("://");
  if (sep == std::string_view::npos) {
    return absl::InvalidArgumentError(Cat(
        "--server: \"", shown, "\" is not a URL (expected http://host:port)"));
  }
  const std::string_view scheme = url.substr(0, sep);
  if (scheme != "http" && scheme != "https") {
    return absl::InvalidArgumentError(
        Cat("--server: scheme \"", internal::EscapeBytes(scheme),
            "\" is not supported (expected http://host:port)"));
  }
  const std::string_view rest = url.substr(sep + 3);
  if (rest.empty() || rest[0] == '/' || rest[0] == ':') {
    return absl::InvalidArgumentError(
        Cat("--server: \"", shown, "\" names no host"));
  }
  if (!internal::IsValidUtf8(url) ||
      rest.find_first_of(" \t\r\n") != std::string_view::npos) {
    return absl::InvalidArgumentError(
        Cat("--server: \"", shown, "\" is not a valid URL"));
  }
  return absl::OkStatus();
}

namespace {

// An HTTP client for `url`, or InvalidArgument naming what is wrong with it
// (httplib's constructor throws on an unknown scheme).
absl::StatusOr<std::unique_ptr<httplib::Client>> MakeClient(
    const std::string& url, const ClientTls& tls) {
  if (absl::Status s = ValidateServerUrl(url); !s.ok()) return s;
  std::unique_ptr<httplib::Client> client;
  try {
    client = tls.cert_file.empty() ? std::make_unique<httplib::Client>(url)
                                   : std::make_unique<httplib::Client>(
                                         url, tls.cert_file, tls.key_file);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(Cat("--server: not a usable URL \"",
                                          internal::EscapeBytes(url),
                                          "\": ", e.what()));
  }
  if (!client->is_valid()) {
    return absl::InvalidArgumentError(
        Cat("--server: not a valid URL \"", internal::EscapeBytes(url), "\""));
  }
  if (url.rfind("https://", 0) == 0) {
    client->enable_server_certificate_verification(true);
    if (!tls.ca_file.empty()) client->set_ca_cert_path(tls.ca_file);
  }
  return client;
}

}  // namespace

absl::Status ClientTls::Validate(std::string_view url) const {
  const bool https = url.rfind("https://", 0) == 0;
  if (!https && (!ca_file.empty() || !cert_file.empty() || !key_file.empty())) {
    return absl::InvalidArgumentError(
        "--ca-file, --cert and --key are for an https:// --server");
  }
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        "--cert and --key: give both, or neither");
  }
  for (auto [flag, path] : {std::pair{"--ca-file", &ca_file},
                            {"--cert", &cert_file},
                            {"--key", &key_file}}) {
    if (!path->empty() && ::access(path->c_str(), R_OK) != 0) {
      return absl::InvalidArgumentError(
          Cat(flag, " ", internal::EscapeBytes(*path), ": not readable"));
    }
  }
  return absl::OkStatus();
}

RemoteApi::RemoteApi(std::string base_url, std::string token, ClientTls tls)
    : base_url_(std::move(base_url)),
      token_(std::move(token)),
      tls_(std::move(tls)) {
  // "https://host:port/prefix/" -> origin "https://host:port", prefix
  // "/prefix": a server behind a path-routing proxy, and a trailing slash.
  origin_ = base_url_;
  if (size_t sep = base_url_.find("://"); sep != std::string::npos) {
    if (size_t slash = base_url_.find('/', sep + 3);
        slash != std::string::npos) {
      origin_ = base_url_.substr(0, slash);
      prefix_ = base_url_.substr(slash);
      while (!prefix_.empty() && prefix_.back() == '/') prefix_.pop_back();
    }
  }
}

absl::StatusOr<Json> RemoteApi::Call(const Context& ctx,
                                     const std::string& method,
                                     const std::string& path,
                                     const std::string& body,
                                     const std::string& content_type) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  auto client = MakeClient(origin_, tls_);
  if (!client.ok()) return client.status();
  httplib::Client& cli = **client;
  ApplyTimeouts(cli, ctx);
  cli.set_tcp_nodelay(true);
  if (!token_.empty()) cli.set_bearer_token_auth(token_);
  const std::string full = prefix_ + path;
  httplib::Result r = method == "GET"    ? cli.Get(full)
                      : method == "POST" ? cli.Post(full, body, content_type)
                      : method == "PUT"  ? cli.Put(full, body, content_type)
                                         : cli.Delete(full);
  if (!r) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    std::string why = Describe(r.error());
    // Under TLS 1.3 a refused client certificate shows as a failed read.
    if (base_url_.rfind("https://", 0) == 0 && tls_.cert_file.empty() &&
        r.error() == httplib::Error::Read) {
      why +=
          " (if the server requires client certificates, give --cert and "
          "--key)";
    }
    return absl::UnavailableError(Cat("server ", base_url_, ": ", why));
  }
  if (r->status >= 300) return StatusFromErrorJson(r->status, r->body);
  auto doc = ParseJson(r->body, "answer");
  if (!doc.ok()) {
    return absl::InternalError(Cat("server ", internal::EscapeBytes(base_url_),
                                   ": ", doc.status().message()));
  }
  return doc;
}

absl::StatusOr<Json> RemoteApi::SetLimit(const Context& ctx,
                                         std::string_view repo_key,
                                         const Json& body) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto text = DumpStrict(body, "request body");
  if (!text.ok()) return text.status();
  return Call(ctx, "PUT", Cat("/v1/repositories/", KeyPath(repo_key)), *text,
              "application/json");
}

absl::StatusOr<Json> RemoteApi::ApplyManifests(const Context& ctx,
                                               std::string_view yaml) {
  return Call(ctx, "POST", "/v1/repositories", std::string(yaml),
              "application/yaml");
}

absl::StatusOr<Json> RemoteApi::Submit(const Context& ctx,
                                       std::string_view repo_key,
                                       const Json& body) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto text = DumpStrict(body, "request body");
  if (!text.ok()) return text.status();
  return Call(ctx, "POST", Cat("/v1/repositories/", KeyPath(repo_key), "/runs"),
              *text, "application/json");
}

absl::StatusOr<Json> RemoteApi::Release(const Context& ctx,
                                        std::string_view repo_key,
                                        std::string_view run_key,
                                        std::string_view lease_id) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  std::string path =
      Cat("/v1/repositories/", KeyPath(repo_key), "/runs/", KeyPath(run_key));
  if (!lease_id.empty()) path += Cat("?lease_id=", Escape(lease_id));
  return Call(ctx, "DELETE", path, "", "");
}

absl::StatusOr<Json> RemoteApi::Renew(const Context& ctx,
                                      std::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError("lease_id: required");
  }
  return Call(ctx, "POST", Cat("/v1/leases/", Escape(lease_id), "/renew"), "",
              "application/json");
}

absl::StatusOr<Json> RemoteApi::Status(const Context& ctx,
                                       std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  return Call(ctx, "GET", Cat("/v1/repositories/", KeyPath(repo_key)), "", "");
}

absl::StatusOr<Json> RemoteApi::ListRepositories(
    const Context& ctx, std::string_view namespace_name, const ListPage& page) {
  // Checked here too: the values go into the URL as they are.
  std::vector<std::string> query;
  if (!namespace_name.empty()) {
    if (absl::Status s = ValidateNamespace(namespace_name, "namespace");
        !s.ok()) {
      return s;
    }
    query.push_back(Cat("namespace=", namespace_name));
  }
  if (page.limit > 0) query.push_back(Cat("limit=", page.limit));
  if (!page.after.empty()) {
    if (absl::Status s = ValidateKey(page.after, "after"); !s.ok()) return s;
    query.push_back(Cat("after=", page.after));
  }
  std::string path = "/v1/repositories";
  for (size_t i = 0; i < query.size(); ++i) {
    path += (i == 0 ? "?" : "&") + query[i];
  }
  return Call(ctx, "GET", path, "", "");
}

absl::StatusOr<Json> RemoteApi::Version(const Context& ctx) {
  return Call(ctx, "GET", "/v1/version", "", "");
}

namespace {
std::string StatePath(Api::StateOf of, std::string_view key) {
  return Cat(of == Api::StateOf::kRepository ? "/v1/repositories/"
                                             : "/v1/pipelineruns/",
             KeyPath(key), "/state");
}
}  // namespace

absl::StatusOr<Json> RemoteApi::SetState(const Context& ctx, StateOf of,
                                         std::string_view key,
                                         const Json& body) {
  if (absl::Status s = ValidateKey(key, StateKeyField(of)); !s.ok()) return s;
  auto text = DumpStrict(body, "request body");
  if (!text.ok()) return text.status();
  return Call(ctx, "PUT", StatePath(of, key), *text, "application/json");
}

absl::StatusOr<Json> RemoteApi::GetState(const Context& ctx, StateOf of,
                                         std::string_view key) {
  if (absl::Status s = ValidateKey(key, StateKeyField(of)); !s.ok()) return s;
  return Call(ctx, "GET", StatePath(of, key), "", "");
}

absl::StatusOr<Json> RemoteApi::ClearQueue(const Context& ctx,
                                           std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  return Call(ctx, "DELETE",
              Cat("/v1/repositories/", KeyPath(repo_key), "/queue"), "", "");
}

absl::StatusOr<Json> RemoteApi::SetPolicy(const Context& ctx,
                                          std::string_view repo_key,
                                          const Json& body) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto text = DumpStrict(body, "policy");
  if (!text.ok()) return text.status();
  return Call(ctx, "PUT",
              Cat("/v1/repositories/", KeyPath(repo_key), "/policy"), *text,
              "application/json");
}

absl::StatusOr<Json> RemoteApi::GetPolicy(const Context& ctx,
                                          std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  return Call(ctx, "GET",
              Cat("/v1/repositories/", KeyPath(repo_key), "/policy"), "", "");
}

absl::StatusOr<Json> RemoteApi::SetSharedLimit(const Context& ctx,
                                               std::string_view name,
                                               const Json& body) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  auto text = DumpStrict(body, "request body");
  if (!text.ok()) return text.status();
  return Call(ctx, "PUT", Cat("/v1/shared-limits/", name), *text,
              "application/json");
}

absl::StatusOr<Json> RemoteApi::DeleteSharedLimit(const Context& ctx,
                                                  std::string_view name) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  return Call(ctx, "DELETE", Cat("/v1/shared-limits/", name), "", "");
}

absl::StatusOr<Json> RemoteApi::ListSharedLimits(const Context& ctx) {
  return Call(ctx, "GET", "/v1/shared-limits", "", "");
}

absl::StatusOr<Json> RemoteApi::Cleanup(const Context& ctx,
                                        std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  return Call(ctx, "DELETE", Cat("/v1/repositories/", KeyPath(repo_key)), "",
              "");
}

absl::StatusOr<Json> RemoteApi::Import(const Context& ctx, const Json& body) {
  auto text = DumpStrict(body, "request body");
  if (!text.ok()) return text.status();
  return Call(ctx, "POST", "/v1/import", *text, "application/json");
}

absl::Status RemoteApi::Watch(const Context& ctx, std::string_view repo_key,
                              const std::function<bool(const Json&)>& on_event,
                              const std::function<bool()>& on_ready) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  auto client = MakeClient(origin_, tls_);
  if (!client.ok()) return client.status();
  httplib::Client& cli = **client;
  cli.set_connection_timeout(5, 0);
  // The server sends a heartbeat every 10 s; a silent minute is a dead
  // stream. A nearer deadline of `ctx` ends the read sooner.
  absl::Duration read = std::clamp(ctx.deadline() - absl::Now(),
                                   absl::Milliseconds(10), absl::Seconds(60));
  const int64_t us = absl::ToInt64Microseconds(read);
  cli.set_read_timeout(us / 1000000, us % 1000000);
  if (!token_.empty()) cli.set_bearer_token_auth(token_);
  std::atomic<bool> stopped_by_reader{false};
  int64_t cb = ctx.AddCancelCallback([&cli] { cli.stop(); });
  // The deadline ends the stream when it comes: the read timeout alone
  // starts again at each heartbeat (every 10 s), so a 12 s deadline lasted
  // 20 s.
  internal::Mutex mu;
  internal::CondVar cv;
  bool finished = false;  // guarded by mu
  std::thread watchdog;
  if (ctx.deadline() != absl::InfiniteFuture()) {
    watchdog = std::thread([&] {
      internal::MutexLock lock(&mu);
      while (!finished && absl::Now() < ctx.deadline()) {
        cv.WaitUntil(&mu, ctx.deadline());
      }
      if (!finished) cli.stop();
    });
  }
  std::string buffer;
  std::string error_body;
  int status = 0;
  auto r = cli.Get(
      Cat(prefix_, "/v1/repositories/", KeyPath(repo_key), "/watch"),
      [&](const httplib::Response& res) {
        status = res.status;
        return true;
      },
      [&](const char* data, size_t len) {
        if (status != 200) {
          error_body.append(data, len);
          return error_body.size() < 65536;
        }
        if (ctx.Done()) return false;
        buffer.append(data, len);
        size_t end;
        while ((end = buffer.find("\n\n")) != std::string::npos) {
          std::string block = buffer.substr(0, end);
          buffer.erase(0, end + 2);
          std::string event, payload;
          size_t start = 0;
          while (start < block.size()) {
            size_t nl = block.find('\n', start);
            std::string line =
                block.substr(start, nl == std::string::npos ? std::string::npos
                                                            : nl - start);
            if (line.rfind("event: ", 0) == 0) event = line.substr(7);
            if (line.rfind("data: ", 0) == 0) payload += line.substr(6);
            if (nl == std::string::npos) break;
            start = nl + 1;
          }
          bool go_on = true;
          if (event == "ready") {
            if (on_ready) go_on = on_ready();
          } else if (event.empty()) {
            go_on = on_event(Json());  // heartbeat
          } else {
            Json ev = Json::parse(payload, nullptr, false);
            if (!ev.is_discarded()) go_on = on_event(ev);
          }
          if (!go_on) {
            stopped_by_reader = true;
            return false;
          }
        }
        return true;
      });
  ctx.RemoveCancelCallback(cb);
  {
    internal::MutexLock lock(&mu);
    finished = true;
  }
  cv.NotifyAll();
  if (watchdog.joinable()) watchdog.join();
  if (stopped_by_reader) return absl::OkStatus();
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (status != 0 && status != 200) {
    return StatusFromErrorJson(status, error_body);
  }
  if (!r) {
    return absl::UnavailableError(Cat(
        "server ", base_url_, ": watch stream ended: ", Describe(r.error())));
  }
  return absl::UnavailableError(
      Cat("server ", base_url_, ": watch stream ended"));
}

}  // namespace pac::concurrency::server
