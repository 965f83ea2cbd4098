// `pac-concurrency serve`: the HTTP/JSON service (docs/api.md).
#include <pthread.h>
#include <signal.h>

#include <cstdio>

#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "src/cli/cli.h"
#include "src/common/strings.h"
#include "src/core/deferred_driver.h"
#include "src/server/http_server.h"

namespace pac::concurrency::cli {

using internal::Cat;

namespace {

struct ServeOptions {
  std::string listen = "127.0.0.1:8080";
  std::string token_file;
  std::string tls_cert, tls_key, tls_client_ca;
  int threads = 64;
  int max_threads = 0;
  int max_watches = 0;
  size_t max_body = 1 << 20;
  std::string request_timeout = "30s";
  std::string header_timeout = "10s";
  std::string body_timeout = "30s";
  std::string keep_alive_timeout = "5s";
  size_t max_header_bytes = 16 * 1024;
  size_t max_header_count = 100;
  int max_connections = 4096;
  int max_connections_per_peer = 0;
};

// A positive duration flag's value, or InvalidArgument naming the flag.
absl::StatusOr<absl::Duration> PositiveDuration(const std::string& flag,
                                                const std::string& value) {
  auto d = ParseDuration(value);
  if (!d.ok() || *d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        Cat(flag, ": must be a positive duration such as 10s"));
  }
  return *d;
}

absl::StatusOr<std::pair<std::string, int>> ParseListen(const std::string& s) {
  size_t colon = s.rfind(':');
  int port = -1;
  if (colon != std::string::npos && colon + 1 < s.size() &&
      s.size() - colon <= 6) {
    port = 0;
    for (char c : s.substr(colon + 1)) {
      if (c < '0' || c > '9') {
        port = -1;
        break;
      }
      port = port * 10 + (c - '0');
    }
  }
  if (colon == std::string::npos || colon == 0 || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        Cat("--listen: expected host:port such as 127.0.0.1:8080 (got \"", s,
            "\")"));
  }
  return std::make_pair(s.substr(0, colon), port);
}

// The lease TTL the configuration gives its driver.
absl::Duration ConfiguredLeaseTtl(const DriverConfig& c) {
  if (c.driver == "etcd" && c.etcd.has_value()) return c.etcd->lease_ttl;
  if (c.driver == "postgresql" && c.postgresql.has_value()) {
    return c.postgresql->lease_ttl;
  }
  return c.memory.value_or(MemoryConfig{}).lease_ttl;
}

int Serve(const GlobalOptions& g, const ServeOptions& o) {
  auto listen = ParseListen(o.listen);
  if (!listen.ok()) return Fail(listen.status());
  server::HttpServerOptions options;
  options.host = listen->first;
  options.port = listen->second;
  options.threads = o.threads;
  if (o.max_threads != 0 && o.max_threads < o.threads) {
    return Fail(absl::InvalidArgumentError(
        Cat("--max-threads: must be at least --threads (", o.threads,
            ") or 0 for the default (got ", o.max_threads, ")")));
  }
  options.max_threads = o.max_threads;
  const int max_threads = server::MaxThreadsOf(options);
  if (o.max_watches >= max_threads) {
    return Fail(absl::InvalidArgumentError(
        Cat("--max-watches: must be below the most threads (", max_threads,
            ", --max-threads), so that other requests keep a thread (got ",
            o.max_watches, ")")));
  }
  options.max_watches = o.max_watches;
  options.max_body_bytes = o.max_body;
  struct {
    const char* flag;
    const std::string& value;
    absl::Duration& out;
  } durations[] = {
      {"--request-timeout", o.request_timeout, options.request_timeout},
      {"--header-timeout", o.header_timeout, options.header_timeout},
      {"--body-timeout", o.body_timeout, options.body_timeout},
      {"--keep-alive-timeout", o.keep_alive_timeout,
       options.keep_alive_timeout},
  };
  for (auto& d : durations) {
    auto v = PositiveDuration(d.flag, d.value);
    if (!v.ok()) return Fail(v.status());
    d.out = *v;
  }
  options.max_header_bytes = o.max_header_bytes;
  options.max_header_count = o.max_header_count;
  options.max_connections = o.max_connections;
  options.max_connections_per_peer = o.max_connections_per_peer;
  if (!o.token_file.empty()) {
    auto text = ReadFile(o.token_file, "--token-file");
    if (!text.ok()) return Fail(text.status());
    auto tokens = server::TokenTable::Parse(*text, "--token-file");
    if (!tokens.ok()) return Fail(tokens.status());
    options.tokens =
        std::make_shared<const server::TokenTable>(*std::move(tokens));
  }
  options.tls_cert_file = o.tls_cert;
  options.tls_key_file = o.tls_key;
  options.tls_client_ca_file = o.tls_client_ca;
  if (!o.tls_client_ca.empty() && o.tls_cert.empty()) {
    return Fail(absl::InvalidArgumentError(
        "--tls-client-ca: needs --tls-cert and --tls-key"));
  }
  auto config = LoadDriverConfig(g.config, nullptr);
  if (!config.ok()) return Fail(config.status());

  // Signals are taken by sigwait below, not by any thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto logger = spdlog::stderr_color_mt("pac");
  logger->set_level(spdlog::level::from_str(
      g.log_level.empty() ? std::string("info") : g.log_level));
  auto driver = NewDriver(*config, DriverOptions{nullptr, logger, true});
  const bool deferred = !driver.ok() && absl::IsUnavailable(driver.status());
  if (deferred) {
    // Unreachable (not misconfigured): serve now, not ready, and connect in
    // the background, so that a sidecar can start before its backend.
    logger->warn(
        "the {} backend is unreachable; serving, not ready (/readyz 503), "
        "and connecting in the background: {}",
        config->driver, driver.status().ToString());
    driver = internal::NewDeferredDriver(
        config->driver, ConfiguredLeaseTtl(*config), driver.status(),
        [config = *config, logger] {
          auto d = NewDriver(config, DriverOptions{nullptr, logger, true});
          if (d.ok())
            logger->info("connected to the {} backend", config.driver);
          return d;
        });
  }
  if (!driver.ok()) return Fail(driver.status());
  server::Metrics metrics;
  server::Service service(driver->get(), nullptr, &metrics);
  options.logger = logger;
  options.inline_handlers = (*driver)->Type() == "memory";
  server::HttpServer http(&service, &metrics, options);
  if (absl::Status s = http.Start(); !s.ok()) return Fail(s);
  std::printf("pac-concurrency serving on %s://%s:%d (driver %s%s%s)\n",
              options.tls_cert_file.empty() ? "http" : "https",
              options.host.c_str(), http.port(),
              std::string((*driver)->Type()).c_str(),
              deferred ? ", backend not connected yet" : "",
              options.tokens == nullptr ? "" : ", bearer token required");
  std::fflush(stdout);
  logger->info("listening on {}:{} with driver {}", options.host, http.port(),
               (*driver)->Type());
  int sig = 0;
  sigwait(&signals, &sig);
  logger->info("signal {}: shutting down", sig);
  http.Stop();
  (void)(*driver)->Close();
  return kExitOk;
}

}  // namespace

void RegisterServeCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve the HTTP/JSON API (memory driver unless --config)");
  cmd->add_option("--listen", o->listen, "Address to listen on (port 0: any)")
      ->capture_default_str();
  cmd->add_option("--token-file", o->token_file,
                  "Bearer tokens: one token (required on mutating "
                  "requests), or lines \"<token> <role> [ns,...]\" with "
                  "roles read, controller, admin (docs/api.md)");
  cmd->add_option("--tls-cert", o->tls_cert,
                  "Serve HTTPS (TLS 1.2+) with this PEM certificate chain");
  cmd->add_option("--tls-key", o->tls_key, "The PEM key of --tls-cert");
  cmd->add_option("--tls-client-ca", o->tls_client_ca,
                  "Require client certificates signed by this CA (mutual "
                  "TLS)");
  cmd->add_option("--threads", o->threads,
                  "Worker threads kept ready (a request holds one while it "
                  "runs, a watch while it is open; more start when none is "
                  "idle)")
      ->check(CLI::Range(4, 4096))
      ->capture_default_str();
  cmd->add_option("--max-threads", o->max_threads,
                  "Worker threads at most (0: the greater of 256 and "
                  "--threads)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  cmd->add_option("--max-watches", o->max_watches,
                  "Watches open at once; one more gets 429 (0: half of "
                  "the most threads)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  cmd->add_option("--max-body", o->max_body, "Largest request body (bytes)")
      ->capture_default_str();
  cmd->add_option("--request-timeout", o->request_timeout,
                  "Time limit of one request")
      ->capture_default_str();
  cmd->add_option("--header-timeout", o->header_timeout,
                  "A request's line and headers must arrive within this of "
                  "its first byte (else 408)")
      ->capture_default_str();
  cmd->add_option("--body-timeout", o->body_timeout,
                  "A request's body must arrive within this of its headers "
                  "(else 408)")
      ->capture_default_str();
  cmd->add_option("--keep-alive-timeout", o->keep_alive_timeout,
                  "An idle connection is closed after this")
      ->capture_default_str();
  cmd->add_option("--max-header-bytes", o->max_header_bytes,
                  "Largest request line and headers together (bytes; else "
                  "431)")
      ->check(CLI::Range(size_t(1024), size_t(1) << 20))
      ->capture_default_str();
  cmd->add_option("--max-header-count", o->max_header_count,
                  "Most header fields in a request (else 431)")
      ->check(CLI::Range(size_t(8), size_t(10000)))
      ->capture_default_str();
  cmd->add_option("--max-connections", o->max_connections,
                  "Connections open at once; past it the oldest idle one is "
                  "closed, or the new one refused (503) when none is idle")
      ->check(CLI::Range(16, 1000000))
      ->capture_default_str();
  cmd->add_option("--max-connections-per-peer", o->max_connections_per_peer,
                  "Connections open at once from one address (0: no cap)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  cmd->callback([&g, o, run] { *run = [&g, o] { return Serve(g, *o); }; });
}

}  // namespace pac::concurrency::cli
