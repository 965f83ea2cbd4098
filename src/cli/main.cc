// pac-concurrency: the HTTP service and the operator's command line.
//
//   pac-concurrency serve [--listen 127.0.0.1:8080] [--config FILE]
//   pac-concurrency status|list|queue|acquire|release|renew|watch|limit|
//                   delete|import ...
//   pac-concurrency run --repo ns/name --run ns/pr -- command args...
//   pac-concurrency config validate FILE
//   pac-concurrency version | completion bash|zsh
//
// Commands other than `serve` talk to a running server (--server, default
// http://127.0.0.1:8080), or, with --config, to the backend directly.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/synchronization/mutex.h"
#include "src/cli/cli.h"
#include "src/common/escape.h"
#include "src/common/strings.h"

int main(int argc, char** argv) {
  using namespace pac::concurrency::cli;
  // Debian's abseil checks every absl::Mutex lock (gRPC's, on each call)
  // for lock-order cycles through one process-wide graph. A product binary
  // does not need the check; it costs the etcd driver 5-8% (docs/etcd.md).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  CLI::App app{
      "pac-concurrency: concurrency control for CI pipeline runs.\n"
      "Runs over a repository's limit wait in a queue, oldest first."};
  app.require_subcommand(1);
  app.fallthrough();  // global flags also after the subcommand
  GlobalOptions g;
  if (const char* s = std::getenv("PAC_SERVER"); s != nullptr) g.server = s;
  app.add_option("--server", g.server,
                 "URL of a running server (env PAC_SERVER)")
      ->capture_default_str();
  app.add_option("--config", g.config,
                 "Use the backend of this driver config directly instead of "
                 "a server (YAML; PAC_* variables override)");
  for (auto [env, field] : {std::pair{"PAC_CA_FILE", &g.ca_file},
                            {"PAC_CERT_FILE", &g.cert_file},
                            {"PAC_KEY_FILE", &g.key_file}}) {
    if (const char* v = std::getenv(env); v != nullptr) *field = v;
  }
  app.add_option("--ca-file", g.ca_file,
                 "https:// servers: the CA of the server's certificate "
                 "(env PAC_CA_FILE; default: the system's)");
  app.add_option("--cert", g.cert_file,
                 "https:// servers: a client certificate for mutual TLS "
                 "(env PAC_CERT_FILE)");
  app.add_option("--key", g.key_file,
                 "https:// servers: the client certificate's key "
                 "(env PAC_KEY_FILE)");
  app.add_option("--token-file", g.token_file,
                 "File holding the server's bearer token (or env PAC_TOKEN)");
  app.add_option("-o,--output", g.output, "Output format")
      ->check(CLI::IsMember({"table", "json"}))
      ->capture_default_str();
  app.add_option("--timeout", g.timeout,
                 "Time limit of the command (e.g. 30s, 5m; 0 = none). "
                 "Default: 30s; none for watch, run and acquire --wait");
  app.add_option("--log-level", g.log_level,
                 "Log level (default: info for serve, warn for the others)")
      ->check(
          CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  Runner run;
  RegisterServeCommand(app, g, &run);
  RegisterStatusCommand(app, g, &run);
  RegisterQueueCommand(app, g, &run);
  RegisterAcquireCommand(app, g, &run);
  RegisterReleaseCommand(app, g, &run);
  RegisterWatchCommand(app, g, &run);
  RegisterLimitCommand(app, g, &run);
  RegisterSharedLimitCommand(app, g, &run);
  RegisterImportCommand(app, g, &run);
  RegisterConfigCommand(app, g, &run);
  RegisterRunCommand(app, g, &run);
  RegisterDeleteCommand(app, g, &run);
  RegisterRenewCommand(app, g, &run);
  RegisterVersionCommand(app, g, &run);
  RegisterCompletionCommand(app, g, &run);
  DescribeGlobalFlags(app);
  if (std::string unknown = UnknownCommand(app, argc, argv); !unknown.empty()) {
    std::fprintf(stderr, "error: %s\nRun with --help for the commands.\n",
                 unknown.c_str());
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  if (!run) return kExitUsage;
  // The last guard: no input may abort the process. Every known error is a
  // Status well before this; reaching here is a bug, reported as one.
  try {
    return run();
  } catch (const std::exception& e) {
    return Fail(absl::InternalError(pac::concurrency::internal::Cat(
        "unexpected exception (a bug; please report it): ",
        pac::concurrency::internal::EscapeBytes(e.what()))));
  }
}
