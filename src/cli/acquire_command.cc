// `pac-concurrency acquire --repo ns/name --run ns/pr [--wait]`: takes a
// slot or joins the queue. Exit 0 when acquired, 3 when queued.
#include <cstdio>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

struct AcquireFlags : SubmitFlags {
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
  auto submit = SubmitBody(f);
  if (!submit.ok()) return Fail(submit.status());
  Json body = *std::move(submit);
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
  AddSubmitFlags(cmd, f.get(),
                 "Concurrency limit to record (0 = unlimited; default: keep "
                 "the recorded one)");
  cmd->add_flag("--wait", f->wait, "Wait in the queue until admitted");
  cmd->add_flag("--no-queue", f->no_queue, "Do not queue when no slot is free");
  cmd->callback([&g, f, run] { *run = [&g, f] { return Acquire(g, *f); }; });
}

}  // namespace pac::concurrency::cli
