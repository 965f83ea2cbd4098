// `pac-concurrency queue --repo ns/name`: the queue in admission order.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

int Queue(const GlobalOptions& g, const std::string& repo) {
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto s = (*api)->api->Status(*ctx, repo);
  if (!s.ok()) return Fail(s.status());
  Json doc{{"repository", (*s)["repository"]}, {"queued", (*s)["queued"]}};
  Print(g, doc, [](const Json& d) {
    if (d["queued"].empty()) {
      std::printf("queue of %s is empty\n",
                  d["repository"].get<std::string>().c_str());
      return;
    }
    std::vector<std::vector<std::string>> rows{
        {"POS", "PIPELINE RUN", "CREATED", "WAITING"}};
    for (const Json& q : d["queued"]) {
      rows.push_back({std::to_string(q["position"].get<int64_t>()),
                      q["pipeline_run"].get<std::string>(),
                      TableTime(q["creation_time"].get<std::string>()),
                      HumanSeconds(q["waiting_seconds"].get<double>())});
    }
    PrintTable(rows);
  });
  return kExitOk;
}

}  // namespace

void RegisterQueueCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto repo = std::make_shared<std::string>();
  CLI::App* cmd =
      app.add_subcommand("queue", "List a repository's queue in order");
  cmd->add_option("--repo", *repo, "Repository ns/name")->required();
  cmd->callback(
      [&g, repo, run] { *run = [&g, repo] { return Queue(g, *repo); }; });
}

}  // namespace pac::concurrency::cli
