// `pac-concurrency delete --repo ns/name --yes`: removes everything the
// backend holds of a repository (its limit, leases and queue), as the
// `DELETE /v1/repositories/{ns}/{name}` route does. Runs that held a slot
// are not told; their renewals fail as lease lost.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

int Delete(const GlobalOptions& g, const std::string& repo, bool yes) {
  if (!yes) {
    return Fail(absl::InvalidArgumentError(
        "delete: removes the repository's limit, every lease and every "
        "queued run; add --yes to do it"));
  }
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->Cleanup(*ctx, repo);
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    std::printf("deleted %s (its limit, leases and queue)\n",
                d["repository"].get<std::string>().c_str());
  });
  return kExitOk;
}

}  // namespace

void RegisterDeleteCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto repo = std::make_shared<std::string>();
  auto yes = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand(
      "delete",
      "Remove a repository: its limit, every lease and every queued run");
  cmd->add_option("--repo", *repo, "Repository ns/name")->required();
  cmd->add_flag("--yes", *yes, "Confirm");
  cmd->callback([&g, repo, yes, run] {
    *run = [&g, repo, yes] { return Delete(g, *repo, *yes); };
  });
}

}  // namespace pac::concurrency::cli
