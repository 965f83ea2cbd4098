// `pac-concurrency shared-limit set NAME N`: sets a limit many
// repositories draw from (docs/policies.md, "Shared limits"); raising it
// admits their queued runs. `shared-limit delete NAME` forgets it, and
// `shared-limit list` shows each with its members and counts. A
// repository joins with `limit --repo ns/name --shared NAME`.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "src/cli/cli.h"
#include "src/common/strings.h"

namespace pac::concurrency::cli {

namespace {

using internal::Cat;

int Set(const GlobalOptions& g, const std::string& name, int limit) {
  if (limit < 0) {
    return Fail(absl::InvalidArgumentError(
        "shared-limit set: give the limit as a non-negative number (0 = no "
        "limit)"));
  }
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->SetSharedLimit(*ctx, name, Json{{"limit", limit}});
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    std::printf("shared limit %s: %d\n", d["name"].get<std::string>().c_str(),
                d["limit"].get<int>());
  });
  return kExitOk;
}

int Delete(const GlobalOptions& g, const std::string& name) {
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->DeleteSharedLimit(*ctx, name);
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    std::printf("shared limit %s deleted\n",
                d["name"].get<std::string>().c_str());
  });
  return kExitOk;
}

int List(const GlobalOptions& g) {
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->ListSharedLimits(*ctx);
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    if (d["shared_limits"].empty()) {
      std::printf("no shared limits\n");
      return;
    }
    std::vector<std::vector<std::string>> rows{
        {"NAME", "LIMIT", "RUNNING", "QUEUED", "MEMBERS"}};
    for (const Json& s : d["shared_limits"]) {
      std::string members;
      for (const Json& m : s["members"]) {
        members += members.empty() ? "" : " ";
        members += m.get<std::string>();
      }
      rows.push_back({s["name"].get<std::string>(),
                      s["limit"].is_null() ? std::string("not set")
                      : s["limit"].get<int>() == 0
                          ? std::string("none")
                          : std::to_string(s["limit"].get<int>()),
                      std::to_string(s["running"].get<int64_t>()),
                      std::to_string(s["queued"].get<int64_t>()), members});
    }
    PrintTable(rows);
  });
  return kExitOk;
}

}  // namespace

void RegisterSharedLimitCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  CLI::App* cmd = app.add_subcommand(
      "shared-limit",
      "Limits many repositories draw from (a team, a namespace, a cluster "
      "cap): set, delete, list");
  cmd->require_subcommand(1);
  auto name = std::make_shared<std::string>();
  auto limit = std::make_shared<int>(-1);
  CLI::App* set = cmd->add_subcommand(
      "set",
      "Set a shared limit (raising it admits queued runs; lowering it "
      "evicts nobody)");
  set->add_option("name", *name, "The limit's name")->required();
  set->add_option("limit", *limit, "The limit (0 = no limit)")->required();
  set->callback([&g, name, limit, run] {
    *run = [&g, name, limit] { return Set(g, *name, *limit); };
  });
  auto del_name = std::make_shared<std::string>();
  CLI::App* del = cmd->add_subcommand(
      "delete", "Forget a shared limit (its members are no longer held)");
  del->add_option("name", *del_name, "The limit's name")->required();
  del->callback([&g, del_name, run] {
    *run = [&g, del_name] { return Delete(g, *del_name); };
  });
  CLI::App* list = cmd->add_subcommand(
      "list", "Every shared limit with its members and counts");
  list->callback([&g, run] { *run = [&g] { return List(g); }; });
}

}  // namespace pac::concurrency::cli
