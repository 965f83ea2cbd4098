// `pac-concurrency renew --lease-id ID`: extends a lease by its TTL (what
// `run` does on its own), for holders driven from a shell script.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

int Renew(const GlobalOptions& g, const std::string& lease_id) {
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->Renew(*ctx, lease_id);
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    std::printf("renewed lease %s of %s (expires %s)\n",
                d["lease_id"].get<std::string>().c_str(),
                d["pipeline_run"].get<std::string>().c_str(),
                d["expires_at"].get<std::string>().c_str());
  });
  return kExitOk;
}

}  // namespace

void RegisterRenewCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto lease = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("renew",
                                     "Extend a lease by its TTL (a lease that "
                                     "expired or was released is an error)");
  cmd->add_option("--lease-id", *lease, "The lease, as acquire printed it")
      ->required();
  cmd->callback(
      [&g, lease, run] { *run = [&g, lease] { return Renew(g, *lease); }; });
}

}  // namespace pac::concurrency::cli
