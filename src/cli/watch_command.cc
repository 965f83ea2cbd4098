// `pac-concurrency watch --repo ns/name [--count N]`: prints the
// repository's events (released, expired, admitted, ...) as they happen.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

int Watch(const GlobalOptions& g, const std::string& repo, int count) {
  // A watch runs until interrupted unless --timeout is given.
  auto ctx = CommandContext(g, absl::ZeroDuration());
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  int seen = 0;
  absl::Status s = (*api)->api->Watch(
      *ctx, repo,
      [&](const Json& ev) {
        if (ev.is_null()) return true;
        if (g.output == "json") {
          std::printf("%s\n", server::DumpSafe(ev).c_str());
        } else {
          // A removed run's reason (cleared, superseded, timed-out).
          const std::string reason = ev.value("reason", "");
          std::printf("%-14s %s%s\n", ev["type"].get<std::string>().c_str(),
                      ev["pipeline_run"].get<std::string>().c_str(),
                      reason.empty() ? "" : (" (" + reason + ")").c_str());
        }
        std::fflush(stdout);
        return count <= 0 || ++seen < count;
      },
      [&] {
        std::fprintf(stderr, "watching %s\n", repo.c_str());
        return true;
      });
  if (absl::IsDeadlineExceeded(s)) {
    // As timeout(1): the time ran out before --count events were seen.
    std::fprintf(stderr, "watch: --timeout reached\n");
    return kExitTimeout;
  }
  if (!s.ok()) return Fail(s);
  return kExitOk;
}

}  // namespace

void RegisterWatchCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto repo = std::make_shared<std::string>();
  auto count = std::make_shared<int>(0);
  CLI::App* cmd = app.add_subcommand(
      "watch", "Print a repository's slot events as they happen");
  cmd->add_option("--repo", *repo, "Repository ns/name")->required();
  cmd->add_option("--count", *count, "Stop after this many events");
  cmd->callback([&g, repo, count, run] {
    *run = [&g, repo, count] { return Watch(g, *repo, *count); };
  });
}

}  // namespace pac::concurrency::cli
