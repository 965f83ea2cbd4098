// `pac-concurrency limit --repo ns/name N` sets a repository's limit, and
// `--max-queue-time 30m` (or `none`) its queue time limit, `--mode` its
// queue's order, `--shared NAME` (repeated; `none`) the shared limits it
// draws from;
// `pac-concurrency limit -f repository.yaml` applies Pipelines-as-Code
// Repository manifests (spec.concurrency_limit).
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

struct LimitFlags {
  std::string repo, file, max_queue_time, mode;
  std::vector<std::string> shared;  // {"none"}: none
  int limit = -1;
};

void PrintPolicy(const Json& p) {
  std::string shared;
  for (const Json& n : p.value("shared_limits", Json::array())) {
    shared += shared.empty() ? ", shared limits " : " ";
    shared += n.get<std::string>();
  }
  std::printf("%s: max queue time %s, order %s%s\n",
              p["repository"].get<std::string>().c_str(),
              p["max_queue_seconds"].is_null()
                  ? "none"
                  : HumanSeconds(p["max_queue_seconds"].get<double>()).c_str(),
              p.value("queue_mode", "oldest-first").c_str(), shared.c_str());
}

int Limit(const GlobalOptions& g, const LimitFlags& f) {
  if (f.file.empty() == f.repo.empty()) {
    return Fail(absl::InvalidArgumentError(
        "give either --repo ns/name with a limit, or -f manifest.yaml"));
  }
  auto ctx = CommandContext(g);
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  absl::StatusOr<Json> r;
  if (!f.file.empty()) {
    auto text = ReadFile(f.file, "-f");
    if (!text.ok()) return Fail(text.status());
    r = (*api)->api->ApplyManifests(*ctx, *text);
  } else {
    if (f.limit < 0 && f.max_queue_time.empty() && f.mode.empty() &&
        f.shared.empty()) {
      return Fail(absl::InvalidArgumentError(
          "limit: give the limit as a non-negative number (0 = unlimited), "
          "--max-queue-time, --mode or --shared"));
    }
    // Only the fields given: the others keep their recorded values.
    std::optional<Json> policy_body;
    if (!f.max_queue_time.empty()) {
      auto q = QueueTimeFlag(f.max_queue_time);
      if (!q.ok()) return Fail(q.status());
      policy_body = Json{{"max_queue_seconds", *q}};
    }
    if (!f.mode.empty()) {
      auto m = ParseQueueMode(f.mode, "--mode");
      if (!m.ok()) return Fail(m.status());
      if (!policy_body.has_value()) policy_body = Json::object();
      (*policy_body)["queue_mode"] = f.mode;
    }
    if (!f.shared.empty()) {
      Json names = Json::array();
      for (const std::string& n : f.shared) {
        if (n == "none") {
          if (f.shared.size() > 1) {
            return Fail(absl::InvalidArgumentError(
                "--shared: none stands alone (it leaves every shared limit)"));
          }
          continue;
        }
        if (absl::Status s = ValidateSharedLimitName(n, "--shared"); !s.ok()) {
          return Fail(s);
        }
        names.push_back(n);
      }
      if (!policy_body.has_value()) policy_body = Json::object();
      (*policy_body)["shared_limits"] = std::move(names);
    }
    if (f.limit < 0) {  // the policy alone
      auto p = (*api)->api->SetPolicy(*ctx, f.repo, *policy_body);
      if (!p.ok()) return Fail(p.status());
      Print(g, *p, PrintPolicy);
      return kExitOk;
    }
    r = (*api)->api->SetLimit(*ctx, f.repo,
                              Json{{"concurrency_limit", f.limit}});
    if (r.ok() && policy_body.has_value()) {
      auto p = (*api)->api->SetPolicy(*ctx, f.repo, *policy_body);
      if (!p.ok()) return Fail(p.status());
      (*r)["max_queue_seconds"] = (*p)["max_queue_seconds"];
      (*r)["queue_mode"] = (*p)["queue_mode"];
      (*r)["shared_limits"] = (*p)["shared_limits"];
    }
  }
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    Json list = d.contains("repositories") ? d["repositories"] : Json{d};
    for (const Json& one : list) {
      std::printf("%s: limit %d\n",
                  one["repository"].get<std::string>().c_str(),
                  one["concurrency_limit"].get<int>());
      for (const Json& l : one["admitted"]) {
        std::printf("  admitted %s\n",
                    l["pipeline_run"].get<std::string>().c_str());
      }
      if (one.contains("max_queue_seconds")) PrintPolicy(one);
    }
  });
  return kExitOk;
}

}  // namespace

void RegisterLimitCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto f = std::make_shared<LimitFlags>();
  CLI::App* cmd = app.add_subcommand(
      "limit",
      "Set a repository's concurrency limit (raising it admits "
      "queued runs; lowering it evicts nobody)");
  cmd->add_option("--repo", f->repo, "Repository ns/name");
  cmd->add_option("limit", f->limit, "The limit (0 = unlimited)");
  cmd->add_option("--max-queue-time", f->max_queue_time,
                  "With --repo: how long a run may wait in the queue before "
                  "it leaves (reason timed-out), e.g. 30m; none: no limit");
  cmd->add_option("--mode", f->mode,
                  "With --repo: the queue's order, oldest-first, "
                  "newest-first or priority (reorders the queue at once)");
  cmd->add_option("--shared", f->shared,
                  "With --repo: a shared limit the repository draws from "
                  "(repeat for several; replaces the recorded ones); none: "
                  "none");
  cmd->add_option("-f,--file", f->file,
                  "Repository manifest(s) in YAML: spec.concurrency_limit");
  cmd->callback([&g, f, run] { *run = [&g, f] { return Limit(g, *f); }; });
}

}  // namespace pac::concurrency::cli
