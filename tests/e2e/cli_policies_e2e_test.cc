// End to end: the queue policies through the real `pac-concurrency`
// binary: `queue clear`, supersede groups and `--supersede`, queue time
// limits and queue modes, as `run`, `acquire`, `limit` and `watch` use
// them. (cli_e2e_test.cc holds the server, TLS, `run` and two-server
// cases.)
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/server/remote_api.h"
#include "tests/e2e/e2e_process.h"

namespace pac::concurrency {
namespace {

using server::RemoteApi;
using ::testing::HasSubstr;

// `queue clear` removes the queued runs: a `run` waiting among them stops
// with the reason and never starts its command, and submitting it again is
// refused; the running run is untouched. Without --yes nothing happens.
TEST(CliE2ETest, QueueClearStopsTheWaitingRunsAndLeavesTheRunningOne) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/q", "--run", "ns/holder",
                    "--limit", "1"})
                .code,
            0);
  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/q", "--run",
                     "ns/waiter", "--", "sh", "-c", "echo started; exit 0"});
  ASSERT_TRUE(Eventually([&] {
    RemoteApi api(u, "");
    auto s = api.Status(Context::Background(), "ns/q");
    return s.ok() && (*s)["queue_depth"] == 1;
  }));
  CliResult unconfirmed = Cli(u, {"queue", "clear", "--repo", "ns/q"});
  EXPECT_EQ(unconfirmed.code, 2) << unconfirmed.out;
  EXPECT_THAT(unconfirmed.out, HasSubstr("--yes"));
  EXPECT_EQ(
      Cli(u, {"queue", "--repo", "ns/q", "-o", "json"}).json()["queued"].size(),
      1u);
  CliResult table = Cli(u, {"queue", "--repo", "ns/q"});
  EXPECT_THAT(table.out, HasSubstr("WAITING FOR"));
  EXPECT_THAT(table.out, HasSubstr("limit 1/1, 0 ahead"));
  CliResult cleared = Cli(u, {"queue", "clear", "--repo", "ns/q", "--yes"});
  EXPECT_EQ(cleared.code, 0) << cleared.out;
  EXPECT_THAT(cleared.out, HasSubstr("cleared the queue of ns/q: 1 runs"));
  EXPECT_THAT(cleared.out, HasSubstr("ns/waiter"));
  std::string out;
  EXPECT_EQ(Finish(run, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("removed from the queue (cleared)"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("started")));
  CliResult again =
      Cli(u, {"acquire", "--repo", "ns/q", "--run", "ns/other-waiter"});
  EXPECT_EQ(again.code, 3) << again.out;  // others still queue
  EXPECT_EQ(InUse(u, "ns/q"), 1);
  CliResult json =
      Cli(u, {"-o", "json", "queue", "clear", "--repo", "ns/q", "--yes"});
  EXPECT_EQ(json.code, 0) << json.out;
  EXPECT_EQ(json.json()["removed"], Json::array({"ns/other-waiter"}));
}

// `run --group` waits in the queue until a newer run of its group is
// submitted (`acquire --group`): then it stops with the reason and never
// starts its command; the newer run keeps the place.
TEST(CliE2ETest, RunOfAGroupStopsWhenANewerRunOfTheGroupIsSubmitted) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/g", "--run", "ns/holder",
                    "--limit", "1"})
                .code,
            0);
  Child run =
      Spawn({Binary(), "--server", u, "run", "--repo", "ns/g", "--run",
             "ns/pr-1-a", "--group", "pr-1", "--creation-time",
             "2026-01-01T10:00:00Z", "--", "sh", "-c", "echo started; exit 0"});
  ASSERT_TRUE(Eventually([&] {
    RemoteApi api(u, "");
    auto s = api.Status(Context::Background(), "ns/g");
    return s.ok() && (*s)["queue_depth"] == 1;
  }));
  CliResult newer =
      Cli(u, {"acquire", "--repo", "ns/g", "--run", "ns/pr-1-b", "--group",
              "pr-1", "--creation-time", "2026-01-01T10:01:00Z"});
  EXPECT_EQ(newer.code, 3) << newer.out;  // queued, first
  std::string out;
  EXPECT_EQ(Finish(run, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("removed from the queue (superseded)"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("started")));
  EXPECT_EQ(Cli(u, {"-o", "json", "queue", "--repo", "ns/g"})
                .json()["queued"][0]["pipeline_run"],
            "ns/pr-1-b");
}

// `limit --max-queue-time` sets the repository's queue time limit: a
// `run` waiting past it stops with the reason and never starts its
// command. `acquire --max-queue-time` gives a run its own; a bad duration
// is refused before anything is sent.
TEST(CliE2ETest, RunStopsWhenItsQueueTimeLimitPasses) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/t", "--run", "ns/holder",
                    "--limit", "1"})
                .code,
            0);
  CliResult set = Cli(u, {"limit", "--repo", "ns/t", "--max-queue-time", "1s"});
  EXPECT_EQ(set.code, 0) << set.out;
  EXPECT_THAT(set.out, HasSubstr("ns/t: max queue time 1s"));
  Child watch = Spawn(
      {Binary(), "--server", u, "watch", "--repo", "ns/t", "--count", "1"});
  ASSERT_THAT(ReadUntil(watch, "watching ns/t"), HasSubstr("watching ns/t"));
  const absl::Time start = absl::Now();
  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/t", "--run",
                     "ns/waiter", "--", "sh", "-c", "echo started; exit 0"});
  std::string out;
  EXPECT_EQ(Finish(run, &out), 1) << out;
  EXPECT_GE(absl::Now() - start, absl::Seconds(1));
  EXPECT_THAT(out, HasSubstr("removed from the queue (timed-out)"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("started")));
  std::string events;
  EXPECT_EQ(Finish(watch, &events), 0) << events;
  EXPECT_THAT(events,
              ::testing::ContainsRegex("removed +ns/waiter \\(timed-out\\)"));
  // Its own limit comes first; "none" forgets the repository's.
  CliResult none = Cli(u, {"-o", "json", "limit", "--repo", "ns/t", "2",
                           "--max-queue-time", "none"});
  EXPECT_EQ(none.code, 0) << none.out;
  EXPECT_TRUE(none.json()["max_queue_seconds"].is_null()) << none.out;
  EXPECT_EQ(none.json()["concurrency_limit"], 2);
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/t", "--run", "ns/second"}).code,
            0);
  CliResult own = Cli(u, {"acquire", "--repo", "ns/t", "--run", "ns/own",
                          "--max-queue-time", "500ms", "--wait"});
  EXPECT_EQ(own.code, 1) << own.out;
  EXPECT_THAT(own.out, HasSubstr("(timed-out)"));
  CliResult bad = Cli(u, {"acquire", "--repo", "ns/t", "--run", "ns/bad",
                          "--max-queue-time", "soon"});
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_THAT(bad.out, HasSubstr("--max-queue-time"));
  EXPECT_EQ(
      Cli(u, {"-o", "json", "queue", "--repo", "ns/t"}).json()["queued"].size(),
      0u);
}

// `limit --mode priority` orders the queue by `acquire --priority`, and
// `queue` shows the order and each run's priority; a mode that does not
// exist is refused.
TEST(CliE2ETest, LimitModeOrdersTheQueueByPriority) {
  ServerProcess server;
  const std::string& u = server.url();
  CliResult mode =
      Cli(u, {"limit", "--repo", "ns/o", "1", "--mode", "priority"});
  EXPECT_EQ(mode.code, 0) << mode.out;
  EXPECT_THAT(mode.out, HasSubstr("order priority"));
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/o", "--run", "ns/holder"}).code,
            0);
  EXPECT_EQ(Cli(u, {"acquire", "--repo", "ns/o", "--run", "ns/low"}).code, 3);
  CliResult high = Cli(
      u, {"acquire", "--repo", "ns/o", "--run", "ns/high", "--priority", "5"});
  EXPECT_EQ(high.code, 3) << high.out;
  EXPECT_THAT(high.out, HasSubstr("queued at position 1"));
  CliResult table = Cli(u, {"queue", "--repo", "ns/o"});
  EXPECT_EQ(table.code, 0) << table.out;
  EXPECT_THAT(table.out, HasSubstr("order: priority"));
  EXPECT_THAT(table.out, HasSubstr("PRIORITY"));
  EXPECT_LT(table.out.find("ns/high"), table.out.find("ns/low")) << table.out;
  CliResult status = Cli(u, {"status", "--repo", "ns/o"});
  EXPECT_THAT(status.out, HasSubstr("in use 1 / 1, queued 2, priority"));
  CliResult bad = Cli(u, {"limit", "--repo", "ns/o", "--mode", "fifo"});
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_THAT(bad.out, HasSubstr("--mode"));
  // --max-queue-time alone keeps the mode.
  CliResult keep = Cli(
      u, {"-o", "json", "limit", "--repo", "ns/o", "--max-queue-time", "1h"});
  EXPECT_EQ(keep.code, 0) << keep.out;
  EXPECT_EQ(keep.json()["queue_mode"], "priority");
  EXPECT_EQ(keep.json()["max_queue_seconds"], 3600);
}

// `run --group` holding a slot is asked to stop when a newer run of the
// group is submitted with `--supersede`: at its next renewal it sends its
// command SIGTERM (it takes 1 s to stop: `status` shows it stopping
// meanwhile), exits with the command's status, and releases; the
// newer run, queued meanwhile, is admitted then. `--supersede` needs
// `--group`.
TEST(CliE2ETest, RunStopsItsCommandWhenANewerRunSupersedesIt) {
  ServerProcess server({}, {"PAC_MEMORY_LEASE_TTL=2s"});
  const std::string& u = server.url();
  Child run =
      Spawn({Binary(), "--server", u, "run", "--repo", "ns/s", "--run",
             "ns/pr-1-a", "--limit", "1", "--group", "pr-1", "--", "sh", "-c",
             "trap 'echo stopping; sleep 1; exit 7' TERM; echo started; "
             "while true; do sleep 0.05; done"});
  ASSERT_THAT(ReadUntil(run, "started"), HasSubstr("started"));
  CliResult bad =
      Cli(u, {"acquire", "--repo", "ns/s", "--run", "ns/x", "--supersede"});
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_THAT(bad.out, HasSubstr("--group"));
  CliResult newer = Cli(u, {"acquire", "--repo", "ns/s", "--run", "ns/pr-1-b",
                            "--group", "pr-1", "--supersede"});
  EXPECT_EQ(newer.code, 3) << newer.out;  // queued: the slot is still held
  CliResult status = Cli(u, {"status", "--repo", "ns/s"});
  EXPECT_THAT(status.out, ::testing::ContainsRegex("stopping +ns/pr-1-a"));
  std::string out;
  EXPECT_EQ(Finish(run, &out), 7) << out;
  EXPECT_THAT(out, HasSubstr("asked to stop"));
  EXPECT_THAT(out, HasSubstr("stopping"));
  EXPECT_TRUE(Eventually([&] {
    RemoteApi api(u, "");
    auto s = api.Status(Context::Background(), "ns/s");
    return s.ok() && (*s)["running"].size() == 1 &&
           (*s)["running"][0]["pipeline_run"] == "ns/pr-1-b";
  }));
}

// `shared-limit set/list/delete` and `limit --shared`: a run of a second
// repository waits for the team's limit, the queue says so, and deleting
// the limit lets it in.
TEST(CliE2ETest, SharedLimitHoldsRunsOfTwoRepositories) {
  ServerProcess server;
  const std::string& u = server.url();
  CliResult set = Cli(u, {"shared-limit", "set", "team-a", "1"});
  EXPECT_EQ(set.code, 0) << set.out;
  EXPECT_THAT(set.out, HasSubstr("shared limit team-a: 1"));
  EXPECT_EQ(Cli(u, {"shared-limit", "set", "Team A", "1"}).code, 2);
  for (const char* repo : {"ns/one", "ns/two"}) {
    CliResult join =
        Cli(u, {"limit", "--repo", repo, "5", "--shared", "team-a"});
    EXPECT_EQ(join.code, 0) << join.out;
    EXPECT_THAT(join.out, HasSubstr("shared limits team-a"));
  }
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/one", "--run", "ns/a"}).code, 0);
  CliResult waiting = Cli(u, {"acquire", "--repo", "ns/two", "--run", "ns/b"});
  EXPECT_EQ(waiting.code, 3) << waiting.out;  // queued
  CliResult queue = Cli(u, {"queue", "--repo", "ns/two"});
  EXPECT_THAT(queue.out, HasSubstr("shared limit team-a 1/1, 0 ahead"));
  CliResult list = Cli(u, {"shared-limit", "list"});
  EXPECT_EQ(list.code, 0) << list.out;
  EXPECT_THAT(list.out, HasSubstr("ns/one ns/two"));
  EXPECT_EQ(Cli(u, {"-o", "json", "shared-limit", "list"})
                .json()["shared_limits"][0]["queued"],
            1);
  CliResult del = Cli(u, {"shared-limit", "delete", "team-a"});
  EXPECT_EQ(del.code, 0) << del.out;
  EXPECT_TRUE(Eventually([&] { return InUse(u, "ns/two") == 1; }));
  // Leaving: --shared none.
  CliResult leave = Cli(u, {"limit", "--repo", "ns/two", "--shared", "none"});
  EXPECT_EQ(leave.code, 0) << leave.out;
  EXPECT_THAT(leave.out, ::testing::Not(HasSubstr("shared limits")));
}

}  // namespace
}  // namespace pac::concurrency
