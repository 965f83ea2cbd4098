// The history checker on hand-written histories: a clean one, one of each
// kind of violation (so the checker is shown to fail), and the unknown
// outcomes that must not be taken for violations.
#include "src/torture/checker.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pac::concurrency::torture {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMs = 1'000'000;

// Builds a history call by call; times in milliseconds.
class History {
 public:
  // An acquire answered "acquired" with `lease` (token `token`).
  History& Granted(const std::string& proc, const std::string& run,
                   int64_t limit, double t0, double t1,
                   const std::string& lease, int64_t token,
                   int64_t created = 0) {
    Op& in = Invoke(proc, "acquire", t0);
    in.run = run;
    in.limit = limit;
    in.creation_us = created;
    Op& out = Done(t1);
    out.acquired = true;
    out.lease = Grant{run, lease, token};
    return *this;
  }
  // An acquire answered "queued at `position`" (0: not queued).
  History& Queued(const std::string& proc, const std::string& run,
                  int64_t limit, double t0, double t1, int64_t position,
                  bool enqueue = true, int64_t created = 0) {
    Op& in = Invoke(proc, "acquire", t0);
    in.run = run;
    in.limit = limit;
    in.enqueue = enqueue;
    in.creation_us = created;
    Done(t1).position = position;
    return *this;
  }
  // A release by lease id; `t1` < 0: no completion (unknown outcome).
  History& Release(const std::string& proc, const std::string& lease, double t0,
                   double t1, std::vector<Grant> admitted = {}) {
    Invoke(proc, "release", t0).lease_id = lease;
    if (t1 >= 0) {
      Op& out = Done(t1);
      out.released = true;
      out.admitted = std::move(admitted);
    }
    return *this;
  }
  // A renewal that failed (UNAVAILABLE) 500 ms after it was sent.
  History& Failed(const std::string& proc, double t0) {
    Invoke(proc, "renew", t0).lease_id = "L1";
    Op& out = Done(t0 + 500);
    out.phase = Phase::kFail;
    out.error = "UNAVAILABLE";
    return *this;
  }
  // A release by run key (a withdrawal when the run is queued).
  History& ReleaseByKey(const std::string& proc, const std::string& run,
                        double t0, double t1) {
    Invoke(proc, "release", t0).run = run;
    Done(t1).released = true;
    return *this;
  }
  // An acquire refused as removed from the queue (RUN_REMOVED, `reason`).
  History& Removed(const std::string& proc, const std::string& run, double t0,
                   double t1, const std::string& reason) {
    Op& in = Invoke(proc, "acquire", t0);
    in.run = run;
    in.enqueue = false;
    Op& out = Done(t1);
    out.phase = Phase::kFail;
    out.error = "FAILED_PRECONDITION";
    out.removed = reason;
    return *this;
  }
  // A clear that removed `runs`.
  History& Clear(const std::string& proc, double t0, double t1,
                 std::vector<std::string> runs) {
    Invoke(proc, "clear", t0);
    Done(t1).queued = std::move(runs);
    return *this;
  }
  History& SetLimit(const std::string& proc, int64_t limit, double t0,
                    double t1) {
    Invoke(proc, "set_limit", t0).limit = limit;
    Done(t1);
    return *this;
  }
  History& Mark(const std::string& kind, double t) {
    Invoke("torture", kind, t).repo.clear();
    Done(t).repo.clear();
    return *this;
  }
  History& Drain(double t) {
    Invoke("drain", "drain", t);
    Done(t);
    return *this;
  }
  History& Snapshot(double t0, double t1, std::vector<std::string> queued) {
    Invoke("drain", "snapshot", t0);
    Done(t1).queued = std::move(queued);
    return *this;
  }
  const std::vector<Op>& ops() const { return ops_; }
  // The calls that follow name repository `repo` ("ns/app" until then).
  History& InRepo(const std::string& repo) {
    repo_ = repo;
    return *this;
  }
  // The coordinator's shared limit `name` of `limit` over `members`.
  History& Shared(const std::string& name, int64_t limit,
                  std::vector<std::string> members, double t0, double t1) {
    Op& in = Invoke("torture", "shared", t0);
    in.repo.clear();
    in.note = name;
    in.limit = limit;
    in.members = std::move(members);
    Done(t1);
    return *this;
  }

 private:
  Op& Invoke(const std::string& proc, const std::string& kind, double t) {
    Op op;
    op.t_ns = static_cast<int64_t>(t * kMs);
    op.proc = proc;
    op.id = ++next_;
    op.kind = kind;
    op.repo = repo_;
    ops_.push_back(op);
    last_ = ops_.size() - 1;
    return ops_.back();
  }
  Op& Done(double t) {
    Op op = ops_[last_];
    op.t_ns = static_cast<int64_t>(t * kMs);
    op.phase = Phase::kOk;
    op.run.clear();
    op.lease_id.clear();
    op.limit = -1;
    ops_.push_back(op);
    return ops_.back();
  }
  std::vector<Op> ops_;
  size_t last_ = 0;
  int64_t next_ = 0;
  std::string repo_ = "ns/app";
};

Report CheckIt(const History& h) {
  std::vector<Op> sorted = h.ops();
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const Op& a, const Op& b) { return a.t_ns < b.t_ns; });
  CheckOptions o;
  o.ttl = absl::Seconds(2);
  o.drain_bound = absl::Seconds(5);
  return Check(sorted, o);
}

std::vector<std::string> Kinds(const Report& r) {
  std::vector<std::string> k;
  for (const Violation& v : r.violations) k.push_back(v.kind);
  return k;
}

TEST(CheckerTest, AReleaseThatAdmitsTheQueueHeadIsClean) {
  History h;
  h.Granted("w1", "ns/a", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/b", 1, 2, 3, 1)
      .Release("w1", "L1", 10, 11, {Grant{"ns/b", "L2", 2}})
      .Queued("w2", "ns/b", 1, 12, 13, 0, /*enqueue=*/false)
      .Release("w2", "L2", 20, 21);
  Report r = CheckIt(h);
  EXPECT_THAT(Kinds(r), ::testing::IsEmpty());
  EXPECT_EQ(r.grants, 2);
  EXPECT_EQ(r.calls, 5);
}

TEST(CheckerTest, TwoHoldersUnderLimitOneIsOverLimit) {
  History h;
  h.Granted("w1", "ns/a", 1, 0, 1, "L1", 1)
      .Granted("w2", "ns/b", 1, 2, 3, "L2", 2);
  Report r = CheckIt(h);
  ASSERT_THAT(Kinds(r), ::testing::ElementsAre("over_limit"));
  EXPECT_THAT(r.violations[0].what, HasSubstr("2 holders at once"));
  EXPECT_EQ(r.violations[0].t_ns, 3 * kMs);
}

TEST(CheckerTest, AReleaseOfUnknownOutcomeSentBeforeIsNoViolation) {
  History h;
  h.Granted("w1", "ns/a", 1, 0, 1, "L1", 1)
      .Release("w1", "L1", 1.5, -1)  // timed out: it may have released
      .Granted("w2", "ns/b", 1, 2, 3, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::IsEmpty());
}

// Seen in a PostgreSQL run: x, queued, is withdrawn by its worker while a
// release admits it; the withdrawal releases the fresh lease and completes
// just before the admitting release reports it. The lease never counted.
TEST(CheckerTest, AWithdrawalRacingTheAdmissionEndsTheAdmittedLease) {
  History h;
  h.Granted("w1", "ns/h", 1, 0, 1, "L1", 1).Queued("w2", "ns/x", 1, 2, 3, 1);
  // w2 withdraws x by key: [10, 12]; w1's release [9, 13] admitted x.
  {
    History& b = h;
    b.ReleaseByKey("w2", "ns/x", 10, 12)
        .Release("w1", "L1", 9, 13, {Grant{"ns/x", "L2", 2}})
        .Granted("w3", "ns/y", 1, 20, 21, "L3", 3);
  }
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::IsEmpty());
}

TEST(CheckerTest, ALeasePastItsTtlCountsForNothing) {
  History h;
  h.Granted("w1", "ns/a", 1, 0, 1, "L1", 1)
      .Granted("w2", "ns/b", 1, 3000, 3001, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::IsEmpty());
  // Within the TTL (less the margin) it still counts.
  History close;
  close.Granted("w1", "ns/a", 1, 0, 1, "L1", 1)
      .Granted("w2", "ns/b", 1, 1800, 1801, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(close)), ::testing::ElementsAre("over_limit"));
}

// Seen in a PostgreSQL run (seed 920734): limit 1 set over [0, 5] and 3
// over [1, 4]; either may have committed last, so two holders after both
// break nothing. Set one after the other, the later one binds.
TEST(CheckerTest, OfTwoOverlappingLimitChangesEitherMayBeInForce) {
  History h;
  h.SetLimit("w1", 1, 0, 5)
      .SetLimit("w2", 3, 1, 4)
      .Granted("w3", "ns/a", -1, 10, 11, "L1", 1)
      .Granted("w4", "ns/b", -1, 12, 13, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::IsEmpty());
  History seq;
  seq.SetLimit("w2", 3, 0, 1)
      .SetLimit("w1", 1, 2, 5)
      .Granted("w3", "ns/a", -1, 10, 11, "L1", 1)
      .Granted("w4", "ns/b", -1, 12, 13, "L2", 2);
  Report r = CheckIt(seq);
  ASSERT_THAT(Kinds(r), ::testing::ElementsAre("over_limit"));
  EXPECT_THAT(r.violations[0].what, HasSubstr("under limit 1"));
}

TEST(CheckerTest, ALoweredLimitEvictsNobodyButBindsLaterGrants) {
  History h;
  h.Granted("w1", "ns/a", 2, 0, 1, "L1", 1)
      .Granted("w2", "ns/b", 2, 2, 3, "L2", 2)
      .SetLimit("w3", 1, 5, 6);
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::IsEmpty());
  h.Granted("w4", "ns/c", 1, 10, 11, "L3", 3);
  Report r = CheckIt(h);
  ASSERT_THAT(Kinds(r), ::testing::ElementsAre("over_limit"));
  EXPECT_THAT(r.violations[0].what, HasSubstr("under limit 2"));
}

TEST(CheckerTest, OneRunHoldingTwoLeasesIsADoubleGrant) {
  History h;
  h.Granted("w1", "ns/a", 3, 0, 1, "L1", 1)
      .Granted("w2", "ns/a", 3, 2, 3, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::ElementsAre("double_grant"));
}

TEST(CheckerTest, TokensReusedOrOutOfOrderAreCaught) {
  History reused;
  reused.Granted("w1", "ns/a", 3, 0, 1, "L1", 7)
      .Granted("w2", "ns/b", 3, 2, 3, "L2", 7);
  EXPECT_THAT(Kinds(CheckIt(reused)), ::testing::Contains("token_reused"));
  History order;
  order.Granted("w1", "ns/a", 3, 0, 1, "L1", 10)
      .Granted("w2", "ns/b", 3, 5, 6, "L2", 9);
  EXPECT_THAT(Kinds(CheckIt(order)), ::testing::ElementsAre("token_order"));
  // Concurrent grants may carry their tokens in either order.
  History concurrent;
  concurrent.Granted("w1", "ns/a", 3, 0, 4, "L1", 10)
      .Granted("w2", "ns/b", 3, 1, 3, "L2", 9);
  EXPECT_THAT(Kinds(CheckIt(concurrent)), ::testing::IsEmpty());
}

TEST(CheckerTest, AdmittingARunBehindAQueuedOneBreaksFifo) {
  History h;
  h.Granted("w1", "ns/h", 1, 0, 1, "L1", 1, 50)
      .Queued("w2", "ns/x", 1, 2, 3, 1, true, 100)
      .Queued("w3", "ns/y", 1, 4, 5, 2, true, 200)
      .Release("w1", "L1", 10, 11, {Grant{"ns/y", "L2", 2}})
      .Queued("w2", "ns/x", 1, 12, 13, 1, /*enqueue=*/false);
  Report r = CheckIt(h);
  ASSERT_THAT(Kinds(r), ::testing::ElementsAre("fifo"));
  EXPECT_THAT(r.violations[0].what, HasSubstr("ns/y was admitted while ns/x"));
  // Equal creation times: the one queued first is ahead.
  History tie;
  tie.Granted("w1", "ns/h", 1, 0, 1, "L1", 1, 50)
      .Queued("w2", "ns/x", 1, 2, 3, 1, true, 100)
      .Queued("w3", "ns/y", 1, 4, 5, 2, true, 100)
      .Release("w1", "L1", 10, 11, {Grant{"ns/y", "L2", 2}})
      .Queued("w2", "ns/x", 1, 12, 13, 1, false);
  EXPECT_THAT(Kinds(CheckIt(tie)), ::testing::ElementsAre("fifo"));
  // A younger run ahead in time but behind in creation order is fine.
  History older;
  older.Granted("w1", "ns/h", 1, 0, 1, "L1", 1, 50)
      .Queued("w2", "ns/x", 1, 2, 3, 1, true, 300)
      .Queued("w3", "ns/y", 1, 4, 5, 1, true, 200)
      .Release("w1", "L1", 10, 11, {Grant{"ns/y", "L2", 2}})
      .Queued("w2", "ns/x", 1, 12, 13, 1, false);
  EXPECT_THAT(Kinds(CheckIt(older)), ::testing::IsEmpty());
}

TEST(CheckerTest, AQueuedRunThatVanishesIsLost) {
  History h;
  h.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/x", 1, 2, 3, 1)
      .Queued("w2", "ns/x", 1, 100, 101, 1, false)
      .Queued("w2", "ns/x", 1, 200, 201, 0, false);
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::ElementsAre("lost_queued"));
  // A gap longer than the TTL between two looks could hide an admission
  // and an expiry: no claim.
  History gap;
  gap.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/x", 1, 2, 3, 1)
      .Queued("w2", "ns/x", 1, 100, 101, 1, false)
      .Queued("w2", "ns/x", 1, 2500, 2501, 0, false);
  EXPECT_THAT(Kinds(CheckIt(gap)), ::testing::IsEmpty());
}

// A run refused as superseded, or named by a clear, and then reported
// holding a slot by a call sent later was admitted after its removal. A
// release by its key in between ends its record (it may be submitted
// again as a new run): no claim then, nor for a report by a call sent
// before the removal was known.
TEST(CheckerTest, ARunAdmittedAfterItWasRemovedIsCaught) {
  History h;
  h.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/x", 1, 2, 3, 1)
      .Removed("w2", "ns/x", 10, 11, "superseded")
      .Release("w1", "L1", 20, 21, {Grant{"ns/x", "L2", 2}});
  const Report r = CheckIt(h);
  EXPECT_THAT(Kinds(r), ::testing::ElementsAre("removed_admitted"));
  EXPECT_THAT(r.violations[0].what, HasSubstr("ns/x"));
  History cleared;
  cleared.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/y", 1, 2, 3, 1)
      .Clear("w3", 5, 6, {"ns/y"})
      .Release("w1", "L1", 20, 21, {Grant{"ns/y", "L2", 2}});
  EXPECT_THAT(Kinds(CheckIt(cleared)),
              ::testing::ElementsAre("removed_admitted"));
  History released;
  released.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/x", 1, 2, 3, 1)
      .Removed("w2", "ns/x", 10, 11, "cleared")
      .ReleaseByKey("w2", "ns/x", 12, 13)
      .Release("w1", "L1", 20, 21, {Grant{"ns/x", "L2", 2}});
  EXPECT_THAT(Kinds(CheckIt(released)), ::testing::IsEmpty());
  History before;
  before.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/x", 1, 2, 3, 1)
      .Release("w1", "L1", 9, 21, {Grant{"ns/x", "L2", 2}})
      .Removed("w2", "ns/x", 10, 11, "timed-out");
  EXPECT_THAT(Kinds(CheckIt(before)), ::testing::IsEmpty());
}

TEST(CheckerTest, HoldersOfTwoRepositoriesOverTheirSharedLimitAreCaught) {
  History h;
  h.Shared("pool", 1, {"ns/a", "ns/b"}, 0, 1)
      .InRepo("ns/a")
      .Granted("w1", "ns/a1", 5, 2, 3, "L1", 1)
      .InRepo("ns/b")
      .Granted("w2", "ns/b1", 5, 4, 5, "L2", 2);
  const Report r = CheckIt(h);
  EXPECT_THAT(Kinds(r), ::testing::ElementsAre("over_shared_limit"));
  EXPECT_THAT(r.violations[0].what, HasSubstr("ns/a1 of ns/a"));
  // Released first: one holder at a time.
  History ok;
  ok.Shared("pool", 1, {"ns/a", "ns/b"}, 0, 1)
      .InRepo("ns/a")
      .Granted("w1", "ns/a1", 5, 2, 3, "L1", 1)
      .Release("w1", "L1", 3.5, 3.8)
      .InRepo("ns/b")
      .Granted("w2", "ns/b1", 5, 4, 5, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(ok)), ::testing::IsEmpty());
  // A repository outside the shared limit does not count.
  History outside;
  outside.Shared("pool", 1, {"ns/a"}, 0, 1)
      .InRepo("ns/a")
      .Granted("w1", "ns/a1", 5, 2, 3, "L1", 1)
      .InRepo("ns/b")
      .Granted("w2", "ns/b1", 5, 4, 5, "L2", 2);
  EXPECT_THAT(Kinds(CheckIt(outside)), ::testing::IsEmpty());
}

TEST(CheckerTest, AQueueLeftAfterTheDrainIsNotDrained) {
  History h;
  h.Granted("w1", "ns/h", 1, 0, 1, "L1", 1)
      .Queued("w2", "ns/x", 1, 2, 3, 1)
      .Drain(1000)
      .Snapshot(1100, 1101, {"ns/x"});
  Report r = CheckIt(h);
  ASSERT_THAT(Kinds(r), ::testing::Contains("not_drained"));
  History late;
  late.Drain(1000)
      .Snapshot(1100, 1101, {"ns/x"})
      .Snapshot(7000, 7001, {"ns/x"})
      .Snapshot(7100, 7101, {});
  EXPECT_THAT(Kinds(CheckIt(late)), ::testing::ElementsAre("not_drained"));
  History unseen;  // the backend never answered a snapshot
  unseen.Queued("w2", "ns/x", 1, 2, 3, 1).Drain(1000);
  EXPECT_THAT(Kinds(CheckIt(unseen)), ::testing::ElementsAre("not_drained"));
  History fine;
  fine.Drain(1000).Snapshot(1100, 1101, {"ns/x"}).Snapshot(2000, 2001, {});
  EXPECT_THAT(Kinds(CheckIt(fine)), ::testing::IsEmpty());
}

TEST(CheckerTest, AWorkerWithNoAnswerLongAfterAFaultHealedStalled) {
  History h;
  h.Granted("w1", "ns/a", 3, 0, 1, "L1", 1)
      .Mark("fault", 100)
      .Mark("heal", 1000)
      .Queued("w1", "ns/b", 3, 1100, 3100, 0)  // answered: fine
      .Queued("w2", "ns/c", 3, 7000, 7001, 1);
  // w2 made no call in the window, so it is not judged.
  EXPECT_THAT(Kinds(CheckIt(h)), ::testing::IsEmpty());
  History stuck;
  stuck.Granted("w1", "ns/a", 3, 0, 1, "L1", 1)
      .Mark("fault", 100)
      .Mark("heal", 1000);
  // Calls that fail for 6 s after the heal.
  for (int i = 0; i < 6; ++i) stuck.Failed("w1", 1100 + i * 1000);
  ASSERT_THAT(Kinds(CheckIt(stuck)), ::testing::ElementsAre("stalled"));
  // Another fault within the bound excuses it.
  stuck.Mark("fault", 3000);
  EXPECT_THAT(Kinds(CheckIt(stuck)), ::testing::IsEmpty());
}

TEST(CheckerTest, AStepOfTheWallClockIsReported) {
  History h;
  h.Granted("w1", "ns/a", 3, 0, 1, "L1", 1)
      .Granted("w1", "ns/b", 3, 100, 101, "L2", 2);
  std::vector<Op> ops = h.ops();
  // 100 ms of CLOCK_MONOTONIC between the calls, 1.7 s of wall clock.
  ops[0].wall_us = 1'000'000;
  ops[1].wall_us = 1'001'000;
  ops[2].wall_us = 2'700'000;
  ops[3].wall_us = 2'701'000;
  Report r = Check(ops, CheckOptions{});
  EXPECT_NEAR(static_cast<double>(r.clock_step_us), 1'600'000.0, 2'000.0);
  EXPECT_EQ(r.clock_step_at_ns, 100 * kMs);
}

TEST(CheckerTest, WindowShowsTheLinesAroundAViolation) {
  History h;
  h.Granted("w1", "ns/a", 1, 0, 1, "L1", 1)
      .Granted("w2", "ns/b", 1, 2, 3, "L2", 2);
  std::vector<Op> ops = h.ops();
  std::string w = Window(ops, "ns/app", 3 * kMs, absl::Seconds(1), 3);
  EXPECT_THAT(w, HasSubstr("\"L2\""));
  EXPECT_EQ(std::count(w.begin(), w.end(), '\n'), 3);
}

TEST(HistoryTest, LinesRoundTripAndATornLastLineIsSkipped) {
  Op op;
  op.t_ns = 42;
  op.proc = "w1";
  op.id = 7;
  op.phase = Phase::kOk;
  op.kind = "release";
  op.repo = "ns/app";
  op.released = true;
  op.admitted = {Grant{"ns/b", "L2", 9}};
  op.cancel_requested = true;
  auto back = FromJsonLine(ToJsonLine(op));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->cancel_requested);
  Op in;
  in.proc = "w2";
  in.kind = "acquire";
  in.group = "g1";
  in.cancel = true;
  in.max_queue_us = 250000;
  auto in_back = FromJsonLine(ToJsonLine(in));
  ASSERT_TRUE(in_back.ok()) << in_back.status();
  EXPECT_EQ(in_back->group, "g1");
  EXPECT_TRUE(in_back->cancel);
  EXPECT_EQ(in_back->max_queue_us, 250000);
  Op refused = in;
  refused.phase = Phase::kFail;
  refused.error = "FAILED_PRECONDITION";
  refused.removed = "superseded";
  EXPECT_EQ(FromJsonLine(ToJsonLine(refused))->removed, "superseded");
  EXPECT_EQ(back->admitted.size(), 1u);
  EXPECT_EQ(back->admitted[0].token, 9);
  EXPECT_TRUE(back->released);
  EXPECT_EQ(back->wall_us, 0);
  op.wall_us = 1796460387720603;
  EXPECT_EQ(FromJsonLine(ToJsonLine(op))->wall_us, 1796460387720603);
  const std::string path =
      testing::TempDir() + "/history-" + std::to_string(getpid());
  {
    std::ofstream out(path);
    out << ToJsonLine(op) << "\n" << ToJsonLine(op).substr(0, 10);
  }
  auto all = ReadHistory({path});
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 1u);
  {
    std::ofstream out(path);
    out << "{broken\n" << ToJsonLine(op) << "\n";
  }
  auto bad = ReadHistory({path});
  EXPECT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(":1:"));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace pac::concurrency::torture
