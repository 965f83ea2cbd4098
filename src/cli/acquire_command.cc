// `pac-concurrency acquire --repo ns/name --run ns/pr [--wait]`: takes a
// slot or joins the queue. Exit 0 when acquired, 3 when queued.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

struct AcquireFlags {
  std::string repo, run, creation_time, group, max_queue_time;
  int limit = -1;
  int priority = 0;
  bool wait = false;
  bool no_queue = false;
};

void PrintAcquired(const Json& d) {
  std::printf(
      "acquired: lease %s (fencing token %lld, expires %s)\n",
      d["lease"]["lease_id"].get<std::string>().c_str(),
      static_cast<long long>(d["lease"]["fencing_token"].get<int64_t>()),
      d["lease"]["expires_at"].get<std::string>().c_str());
}

int Acquire(const GlobalOptions& g, const AcquireFlags& f) {
  auto ctx =
      CommandContext(g, f.wait ? absl::ZeroDuration() : absl::Seconds(30));
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g, *ctx);
  if (!api.ok()) return Fail(api.status());
  Json body{{"pipeline_run", f.run}};
  if (f.limit >= 0) body["concurrency_limit"] = f.limit;
  if (!f.creation_time.empty()) body["creation_time"] = f.creation_time;
  if (!f.group.empty()) body["group"] = f.group;
  if (f.priority != 0) body["priority"] = f.priority;
  if (!f.max_queue_time.empty()) {
    auto q = QueueTimeFlag(f.max_queue_time);
    if (!q.ok()) return Fail(q.status());
    body["max_queue_seconds"] = *q;
  }
  if (f.no_queue) body["enqueue"] = false;
  if (f.wait) {
    auto lease =
        WaitForSlot(*(*api)->api, *ctx, f.repo, body,
                    [](int64_t p, const std::vector<std::string>& holders) {
                      std::fprintf(stderr, "queued at position %lld\n",
                                   static_cast<long long>(p));
                      for (const std::string& h : holders) {
                        std::fprintf(stderr, "%s\n", h.c_str());
                      }
                    });
    if (!lease.ok()) return Fail(lease.status());
    Print(g, Json{{"acquired", true}, {"lease", *lease}}, PrintAcquired);
    return kExitOk;
  }
  auto r = (*api)->api->Submit(*ctx, f.repo, body);
  if (!r.ok()) return Fail(r.status());
  const bool acquired = (*r)["acquired"].get<bool>();
  Print(g, *r, [](const Json& d) {
    if (d["acquired"].get<bool>()) {
      PrintAcquired(d);
    } else if (d["position"].get<int64_t>() > 0) {
      std::printf("queued at position %lld\n",
                  static_cast<long long>(d["position"].get<int64_t>()));
    } else {
      std::printf("no free slot (not queued)\n");
    }
  });
  return acquired ? kExitOk : kExitQueued;
}

}  // namespace

void RegisterAcquireCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto f = std::make_shared<AcquireFlags>();
  CLI::App* cmd = app.add_subcommand(
      "acquire",
      "Take a slot for a run, or queue it (exit 0 acquired, 3 queued). The "
      "lease expires after the TTL unless renewed; see `run`.");
  cmd->add_option("--repo", f->repo, "Repository ns/name")->required();
  cmd->add_option("--run", f->run, "PipelineRun ns/name")->required();
  cmd->add_option("--limit", f->limit,
                  "Concurrency limit to record (0 = unlimited; default: keep "
                  "the recorded one)");
  cmd->add_option("--creation-time", f->creation_time,
                  "The run's creation time (RFC 3339), which orders the queue");
  cmd->add_option("--group", f->group,
                  "Supersede group (a pull request, a branch): submitting "
                  "removes the group's older queued runs");
  cmd->add_option("--priority", f->priority,
                  "The run's priority: higher runs are admitted first when "
                  "the repository's queue mode is priority");
  cmd->add_option("--max-queue-time", f->max_queue_time,
                  "Leave the queue (reason timed-out) after waiting this "
                  "long, e.g. 30m (default: the repository's limit)");
  cmd->add_flag("--wait", f->wait, "Wait in the queue until admitted");
  cmd->add_flag("--no-queue", f->no_queue, "Do not queue when no slot is free");
  cmd->callback([&g, f, run] { *run = [&g, f] { return Acquire(g, *f); }; });
}

}  // namespace pac::concurrency::cli
