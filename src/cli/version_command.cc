// `pac-concurrency version [--client]`: this binary's version and, unless
// --client, the server's (or, with --config, the configured driver's).
// `pac-concurrency --version` prints the first line only.
#include <cstdio>

#include "src/cli/cli.h"
#include "src/common/strings.h"
#include "src/server/version.h"

namespace pac::concurrency::cli {

namespace {

int Version(const GlobalOptions& g, bool client_only) {
  Json doc{{"client", {{"version", std::string(server::Version())}}}};
  int code = kExitOk;
  if (!client_only) {
    auto ctx = CommandContext(g);
    if (!ctx.ok()) return Fail(ctx.status());
    auto api = OpenApi(g, *ctx);
    absl::StatusOr<Json> v =
        api.ok() ? (*api)->api->Version(*ctx) : api.status();
    if (v.ok()) {
      doc["server"] = *v;
    } else {
      code = ExitCodeFor(v.status());
      doc["server"] = {
          {"error", std::string(internal::SV(v.status().message()))}};
    }
  }
  Print(g, doc, [&g](const Json& d) {
    std::printf("pac-concurrency %s\n",
                d["client"]["version"].get<std::string>().c_str());
    if (!d.contains("server")) return;
    const Json& s = d["server"];
    const std::string where =
        g.config.empty() ? "server " + g.server : "--config " + g.config;
    if (s.contains("error")) {
      std::printf("%s: %s\n", where.c_str(),
                  s["error"].get<std::string>().c_str());
    } else {
      std::printf("%s: pac-concurrency %s, driver %s\n", where.c_str(),
                  s["version"].get<std::string>().c_str(),
                  s["driver"].get<std::string>().c_str());
    }
  });
  return code;
}

}  // namespace

void RegisterVersionCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto client_only = std::make_shared<bool>(false);
  app.set_version_flag("--version",
                       "pac-concurrency " + std::string(server::Version()),
                       "Print the version and exit");
  CLI::App* cmd = app.add_subcommand(
      "version", "This binary's version, and the server's (or --config's)");
  cmd->add_flag("--client", *client_only, "Only this binary's version");
  cmd->callback([&g, client_only, run] {
    *run = [&g, client_only] { return Version(g, *client_only); };
  });
}

}  // namespace pac::concurrency::cli
