// `pac-concurrency status [--repo ns/name | --namespace ns]`: slots in use,
// limit, running and queued runs.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

void PrintRepository(const Json& r) {
  std::string limit =
      r["concurrency_limit"].is_null()
          ? "unset"
          : (r["concurrency_limit"].get<int>() == 0
                 ? "unlimited"
                 : std::to_string(r["concurrency_limit"].get<int>()));
  // The queue's order when it is not the default (docs/policies.md).
  const std::string mode = r.value("queue_mode", "oldest-first");
  std::printf("%s  in use %zu / %s, queued %zu%s\n",
              r["repository"].get<std::string>().c_str(),
              r["in_use"].get<size_t>(), limit.c_str(),
              r["queue_depth"].get<size_t>(),
              mode == "oldest-first" ? "" : (", " + mode).c_str());
  std::vector<std::vector<std::string>> rows;
  for (const Json& l : r["running"]) {
    // A run a newer one of its group asked to stop still holds its slot.
    const bool stopping = l.value("cancel_requested", false);
    rows.push_back({stopping ? "stopping" : "running",
                    l["pipeline_run"].get<std::string>(),
                    HumanSeconds(l["running_seconds"].get<double>()),
                    "lease " + l["lease_id"].get<std::string>()});
  }
  for (const Json& q : r["queued"]) {
    rows.push_back({"queued", q["pipeline_run"].get<std::string>(),
                    HumanSeconds(q["waiting_seconds"].get<double>()),
                    "#" + std::to_string(q["position"].get<int64_t>())});
  }
  PrintTable(rows, "  ");
}

int Status(const GlobalOptions& g, const std::string& repo,
           const std::string& ns) {
  if (!repo.empty() && !ns.empty()) {
    return Fail(absl::InvalidArgumentError(
        "status: give --repo or --namespace, not both"));
  }
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  if (repo.empty()) {
    // Page by page (each page one request, its statuses read by the
    // server), all of them shown.
    Json all = {{"repositories", Json::array()}};
    server::ListPage page;
    page.limit = 500;
    while (true) {
      auto one = (*api)->api->ListRepositories(*ctx, ns, page);
      if (!one.ok()) return Fail(one.status());
      for (Json& r : (*one)["repositories"]) {
        all["repositories"].push_back(std::move(r));
      }
      if (!one->contains("next")) break;
      page.after = (*one)["next"].get<std::string>();
    }
    Print(g, all, [](const Json& doc) {
      if (doc["repositories"].empty()) std::printf("no repositories\n");
      for (const Json& r : doc["repositories"]) PrintRepository(r);
    });
    return kExitOk;
  }
  auto s = (*api)->api->Status(*ctx, repo);
  if (!s.ok()) return Fail(s.status());
  Print(g, *s, PrintRepository);
  return kExitOk;
}

}  // namespace

void RegisterStatusCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto repo = std::make_shared<std::string>();
  auto ns = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "status",
      "Show slots in use, the limit, running and queued runs (alias: list)");
  cmd->alias("list");
  cmd->add_option("--repo", *repo,
                  "Repository ns/name (default: every repository the backend "
                  "holds a limit, a running or a queued run of)");
  cmd->add_option("--namespace", *ns,
                  "Only the repositories of this namespace");
  cmd->callback([&g, repo, ns, run] {
    *run = [&g, repo, ns] { return Status(g, *repo, *ns); };
  });
}

}  // namespace pac::concurrency::cli
