// `pac-concurrency queue --repo ns/name`: the queue in admission order.
// `pac-concurrency queue clear --repo ns/name --yes`: removes every queued
// run (Driver::ClearQueue); running runs keep their slots.
#include <cstdio>

#include "src/cli/cli.h"
#include "src/common/strings.h"

namespace pac::concurrency::cli {

namespace {

using internal::Cat;

int Queue(const GlobalOptions& g, const std::string& repo) {
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto s = (*api)->api->Status(*ctx, repo);
  if (!s.ok()) return Fail(s.status());
  Json doc{{"repository", (*s)["repository"]}, {"queued", (*s)["queued"]}};
  if (s->contains("queue_mode")) doc["queue_mode"] = (*s)["queue_mode"];
  Print(g, doc, [](const Json& d) {
    if (d["queued"].empty()) {
      std::printf("queue of %s is empty\n",
                  d["repository"].get<std::string>().c_str());
      return;
    }
    // Under the priority mode, each run's priority is its first key.
    const bool by_priority = d.value("queue_mode", "") == "priority";
    if (d.contains("queue_mode")) {
      std::printf("order: %s\n", d["queue_mode"].get<std::string>().c_str());
    }
    std::vector<std::vector<std::string>> rows{
        {"POS", "PIPELINE RUN", "CREATED", "WAITING", "WAITING FOR"}};
    if (by_priority) rows[0].insert(rows[0].begin() + 2, "PRIORITY");
    for (const Json& q : d["queued"]) {
      std::string why;  // a server of an earlier version does not say
      if (q.contains("waiting_for") && q["waiting_for"].is_object()) {
        const Json& w = q["waiting_for"];
        const bool shared = w.value("reason", "") == "shared_limit";
        const std::string name = w.value("shared_limit", "");
        why = Cat(
            shared ? Cat("shared limit ", name, " ") : std::string("limit "),
            w.value("in_use", 0), "/", w.value("limit", 0), ", ",
            w.value("ahead", 0), " ahead");
        if (shared && w.contains("ahead_in_shared_limit")) {
          why +=
              Cat(", ", w.value("ahead_in_shared_limit", 0), " across ", name);
        }
      }
      rows.push_back({std::to_string(q["position"].get<int64_t>()),
                      q["pipeline_run"].get<std::string>(),
                      TableTime(q["creation_time"].get<std::string>()),
                      HumanSeconds(q["waiting_seconds"].get<double>()), why});
      if (by_priority) {
        rows.back().insert(rows.back().begin() + 2,
                           std::to_string(q.value("priority", 0)));
      }
    }
    PrintTable(rows);
  });
  return kExitOk;
}

int Clear(const GlobalOptions& g, const std::string& repo, bool yes) {
  if (!yes) {
    return Fail(absl::InvalidArgumentError(
        "queue clear: removes every queued run of the repository (running "
        "runs keep their slots); add --yes to do it"));
  }
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->ClearQueue(*ctx, repo);
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    std::printf("cleared the queue of %s: %zu runs removed\n",
                d["repository"].get<std::string>().c_str(),
                d["removed"].size());
    for (const Json& run : d["removed"]) {
      std::printf("  %s\n", run.get<std::string>().c_str());
    }
  });
  return kExitOk;
}

}  // namespace

void RegisterQueueCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto repo = std::make_shared<std::string>();
  CLI::App* cmd =
      app.add_subcommand("queue", "List a repository's queue in order");
  cmd->add_option("--repo", *repo, "Repository ns/name");
  auto clear_repo = std::make_shared<std::string>();
  auto yes = std::make_shared<bool>(false);
  CLI::App* clear = cmd->add_subcommand(
      "clear",
      "Remove every queued run of a repository (running runs keep their "
      "slots; a removed run is not admitted when it is submitted again)");
  clear->add_option("--repo", *clear_repo, "Repository ns/name")->required();
  clear->add_flag("--yes", *yes, "Confirm");
  clear->callback([&g, clear_repo, yes, run] {
    *run = [&g, clear_repo, yes] { return Clear(g, *clear_repo, *yes); };
  });
  cmd->callback([&g, repo, run, clear] {
    if (clear->parsed()) return;
    *run = [&g, repo] {
      if (repo->empty()) {
        return Fail(
            absl::InvalidArgumentError("queue: --repo is required (ns/name)"));
      }
      return Queue(g, *repo);
    };
  });
}

}  // namespace pac::concurrency::cli
