// `pac-concurrency release --repo ns/name --run ns/pr [--lease-id ID]`:
// frees the run's slot (or takes it out of the queue) and shows who was
// admitted in its place.
#include <cstdio>

#include "src/cli/cli.h"
#include "src/common/strings.h"

namespace pac::concurrency::cli {

namespace {

int Release(const GlobalOptions& g, const std::string& repo,
            const std::string& run, const std::string& lease_id) {
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->Release(*ctx, repo, run, lease_id);
  if (!r.ok()) return Fail(r.status());
  if (!lease_id.empty() && !(*r)["released"].get<bool>() &&
      !(*r)["dequeued"].get<bool>()) {
    // Nothing happened: say whether the run holds a slot under another
    // lease (a stale holder's id) rather than "held no slot".
    if (auto st = (*api)->api->Status(*ctx, repo); st.ok()) {
      for (const Json& l : (*st)["running"]) {
        if (l.value("pipeline_run", "") != run) continue;
        return Fail(absl::FailedPreconditionError(internal::Cat(
            "not released: --lease-id ", lease_id, " does not match the lease ",
            run, " holds (", l.value("lease_id", "?"),
            "); a newer grant replaced the one it names")));
      }
    }
  }
  Print(g, *r, [](const Json& d) {
    if (d["released"].get<bool>()) {
      std::printf("released %s\n",
                  d["pipeline_run"].get<std::string>().c_str());
    } else if (d["dequeued"].get<bool>()) {
      std::printf("removed %s from the queue\n",
                  d["pipeline_run"].get<std::string>().c_str());
    } else {
      std::printf("%s held no slot and was not queued\n",
                  d["pipeline_run"].get<std::string>().c_str());
    }
    for (const Json& l : d["admitted"]) {
      std::printf("admitted %s (lease %s)\n",
                  l["pipeline_run"].get<std::string>().c_str(),
                  l["lease_id"].get<std::string>().c_str());
    }
  });
  return kExitOk;
}

}  // namespace

void RegisterReleaseCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto repo = std::make_shared<std::string>();
  auto pr = std::make_shared<std::string>();
  auto lease = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "release", "Release a run's slot or remove it from the queue");
  cmd->add_option("--repo", *repo, "Repository ns/name")->required();
  cmd->add_option("--run", *pr, "PipelineRun ns/name")->required();
  cmd->add_option("--lease-id", *lease,
                  "Release only this lease (a stale holder cannot free a "
                  "newer lease of the run)");
  cmd->callback([&g, repo, pr, lease, run] {
    *run = [&g, repo, pr, lease] { return Release(g, *repo, *pr, *lease); };
  });
}

}  // namespace pac::concurrency::cli
