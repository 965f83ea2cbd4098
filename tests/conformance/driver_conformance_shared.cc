// The conformance suite, shared limits (docs/policies.md, "Shared limits",
// rules 21-23): a run is admitted only when its repository and every
// shared limit of it have a free slot, across repositories and processes;
// of the members' heads that fit, the one queued earliest goes first, and
// a head that does not fit is passed over; membership and the limits are
// live. A driver without shared limits must say so (Unimplemented) and
// write nothing.
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {

std::string DriverConformanceTest::SharedName(const std::string& what) const {
  return absl::StrCat(ns_, "-", what);
}

bool DriverConformanceTest::SetShared(const std::string& name, int32_t limit) {
  absl::Status s = driver_->SetSharedLimit(ctx_, SharedLimit{name, limit});
  if (absl::IsUnimplemented(s)) {
    // It says so, and nothing is written: a policy naming one is refused
    // the same way.
    RepositoryPolicy p;
    p.shared_limits = {name};
    EXPECT_TRUE(absl::IsUnimplemented(
        driver_->SetRepositoryPolicy(ctx_, Repo("x", 1).Key(), p)));
    EXPECT_TRUE(
        absl::IsUnimplemented(driver_->ListSharedLimits(ctx_).status()));
    auto policy = driver_->GetRepositoryPolicy(ctx_, Repo("x", 1).Key());
    EXPECT_TRUE(policy.ok() && policy->shared_limits.empty());
    return false;
  }
  EXPECT_TRUE(s.ok()) << s;
  return s.ok();
}

void DriverConformanceTest::JoinShared(const Repository& repo,
                                       std::vector<std::string> names) {
  RepositoryPolicy p;
  p.shared_limits = std::move(names);
  absl::Status s = driver_->SetRepositoryPolicy(ctx_, repo.Key(), p);
  EXPECT_TRUE(s.ok()) << s;
}

std::optional<SharedLimitStatus> DriverConformanceTest::SharedStatus(
    Driver* d, const std::string& name) {
  auto list = d->ListSharedLimits(ctx_);
  EXPECT_TRUE(list.ok()) << list.status();
  if (!list.ok()) return std::nullopt;
  for (const SharedLimitStatus& s : *list) {
    if (s.name == name) return s;
  }
  return std::nullopt;
}

std::vector<std::string> DriverConformanceTest::RunningRuns(
    Driver* d, const Repository& repo) {
  auto running = d->GetRunningPipelineRuns(ctx_, repo.Key());
  EXPECT_TRUE(running.ok()) << running.status();
  return running.ok() ? RunKeys(*running) : std::vector<std::string>{};
}

Lease DriverConformanceTest::MustAcquire(const Repository& repo,
                                         const std::string& run) {
  auto r = driver_->AcquireSlot(ctx_, repo, run);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r.ok() && r->acquired) << run << " was not granted";
  return r.ok() ? r->lease : Lease{};
}

int64_t DriverConformanceTest::MustQueue(const Repository& repo,
                                         const std::string& run) {
  auto r = driver_->AcquireSlot(ctx_, repo, run);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r.ok() && !r->acquired) << run << " was granted";
  return r.ok() ? r->position : 0;
}

namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST_P(DriverConformanceTest, Shared_Rule21_TheLimitHoldsAcrossRepositories) {
  const std::string team = SharedName("team");
  if (!SetShared(team, 2)) return;
  Repository a = Repo("a", 5), b = Repo("b", 5), c = Repo("c", 5);
  for (const Repository& r : {a, b, c}) JoinShared(r, {team});
  EventLog c_log;
  auto watch = driver_->WatchSlotAvailability(ctx_, c.Key(), c_log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  Lease a1 = MustAcquire(a, Run("a1"));
  Lease b1 = MustAcquire(b, Run("b1"));
  // The team is full: c's first run waits although c has four free slots,
  // and so does a second run of a.
  EXPECT_EQ(MustQueue(c, Run("c1")), 1);
  EXPECT_EQ(MustQueue(a, Run("a2")), 1);
  auto other = MakeDriver();
  auto st = SharedStatus(other.get(), team);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->limit, 2);
  EXPECT_EQ(st->running, 2);
  EXPECT_EQ(st->queued, 2);
  EXPECT_THAT(st->members, ElementsAre(a.Key(), b.Key(), c.Key()));
  // b's release frees a team slot: c1, queued before a2, takes it.
  auto rel = other->ReleaseSlot(ctx_, b1.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(c_log.Await(WatchEventType::kAdmitted, Run("c1")));
  EXPECT_THAT(RunningRuns(other.get(), c), ElementsAre(Run("c1")));
  EXPECT_THAT(QueuedRuns(other.get(), a), ElementsAre(Run("a2")));
  // A new run of b waits behind the team's queue, though b has room.
  EXPECT_EQ(MustQueue(b, Run("b2")), 1);
  rel = driver_->ReleaseSlot(ctx_, a1.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(Eventually(
      [&] { return RunningRuns(other.get(), a) == std::vector{Run("a2")}; }));
  EXPECT_THAT(QueuedRuns(other.get(), b), ElementsAre(Run("b2")));
  st = SharedStatus(other.get(), team);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->running, 2);
  EXPECT_EQ(st->queued, 1);
  ASSERT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, Shared_Rule22_AHeadThatDoesNotFitIsPassedOver) {
  const std::string narrow = SharedName("narrow"), wide = SharedName("wide");
  if (!SetShared(narrow, 1)) return;
  ASSERT_TRUE(SetShared(wide, 3));
  // p draws from both, q from the wide one only; s is held by its own
  // limit of 1.
  Repository p = Repo("p", 5), q = Repo("q", 5), s = Repo("s", 1);
  JoinShared(p, {narrow, wide});
  JoinShared(q, {wide});
  JoinShared(s, {wide});
  Lease p1 = MustAcquire(p, Run("p1"));   // narrow full, wide 1
  Lease s1 = MustAcquire(s, Run("s1"));   // s full, wide 2
  EXPECT_EQ(MustQueue(p, Run("p2")), 1);  // held by narrow
  EXPECT_EQ(MustQueue(s, Run("s2")), 1);  // held by s's own limit
  // q's run fits: the heads queued before it, held by other limits, do
  // not hold it up.
  Lease q1 = MustAcquire(q, Run("q1"));  // wide full
  EXPECT_EQ(MustQueue(q, Run("q2")), 1);
  // q1's release frees a wide slot. p2 (narrow full) and s2 (s full) were
  // queued first but do not fit: q2 takes it.
  auto rel = driver_->ReleaseSlot(ctx_, q1.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(Eventually(
      [&] { return RunningRuns(driver_.get(), q) == std::vector{Run("q2")}; }));
  EXPECT_THAT(QueuedRuns(driver_.get(), p), ElementsAre(Run("p2")));
  EXPECT_THAT(QueuedRuns(driver_.get(), s), ElementsAre(Run("s2")));
  // p1's release frees narrow and wide: p2, the earliest head, takes it.
  rel = driver_->ReleaseSlot(ctx_, p1.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_TRUE(Eventually(
      [&] { return RunningRuns(driver_.get(), p) == std::vector{Run("p2")}; }));
  EXPECT_THAT(QueuedRuns(driver_.get(), s), ElementsAre(Run("s2")));
  (void)s1;
}

TEST_P(DriverConformanceTest, Shared_Rule23_LimitsAndMembershipAreLive) {
  const std::string team = SharedName("live");
  if (!SetShared(team, 1)) return;
  Repository a = Repo("a", 5), b = Repo("b", 5);
  JoinShared(a, {team});
  JoinShared(b, {team});
  auto other = MakeDriver();
  EXPECT_THAT(other->GetRepositoryPolicy(ctx_, a.Key())->shared_limits,
              ElementsAre(team));
  Lease a1 = MustAcquire(a, Run("a1"));
  EXPECT_EQ(MustQueue(b, Run("b1")), 1);
  // Raising the limit admits the waiting run at once.
  ASSERT_TRUE(other->SetSharedLimit(ctx_, SharedLimit{team, 2}).ok());
  EXPECT_TRUE(Eventually(
      [&] { return RunningRuns(driver_.get(), b) == std::vector{Run("b1")}; }));
  // Lowering it evicts nobody; the next run waits.
  ASSERT_TRUE(other->SetSharedLimit(ctx_, SharedLimit{team, 1}).ok());
  EXPECT_EQ(SharedStatus(other.get(), team)->running, 2);
  EXPECT_EQ(MustQueue(b, Run("b2")), 1);
  // a leaves: its run no longer counts, but b1 alone fills the limit.
  JoinShared(a, {});
  EXPECT_EQ(SharedStatus(other.get(), team)->running, 1);
  EXPECT_THAT(SharedStatus(other.get(), team)->members, ElementsAre(b.Key()));
  EXPECT_THAT(QueuedRuns(driver_.get(), b), ElementsAre(Run("b2")));
  MustAcquire(a, Run("a2"));  // a is held by its own limit only
  // Deleting the limit frees b from it: b2 runs.
  ASSERT_TRUE(other->DeleteSharedLimit(ctx_, team).ok());
  EXPECT_TRUE(Eventually([&] {
    return RunningRuns(driver_.get(), b) == std::vector{Run("b1"), Run("b2")};
  }));
  // A name no limit is set for limits nothing; it lists with no limit.
  auto st = SharedStatus(other.get(), team);
  ASSERT_TRUE(st.has_value());
  EXPECT_FALSE(st->limit.has_value());
  MustAcquire(b, Run("b3"));
  // Joining takes effect for the next admission.
  ASSERT_TRUE(other->SetSharedLimit(ctx_, SharedLimit{team, 3}).ok());
  JoinShared(a, {team});
  EXPECT_EQ(SharedStatus(other.get(), team)->running, 5);
  EXPECT_EQ(MustQueue(a, Run("a3")), 1);
  // A cleaned-up member leaves, and its slots free.
  ASSERT_TRUE(other->CleanupRepository(ctx_, b.Key()).ok());
  EXPECT_TRUE(Eventually([&] {
    return RunningRuns(driver_.get(), a) ==
           std::vector{Run("a1"), Run("a2"), Run("a3")};
  }));
  EXPECT_THAT(SharedStatus(other.get(), team)->members, ElementsAre(a.Key()));
  (void)a1;
  ASSERT_TRUE(other->Close().ok());
}

// An expired lease frees its shared slot without anyone calling: the
// driver's background machinery admits another member's run (rule 9 with
// rule 21).
TEST_P(DriverConformanceTest, Shared_AnExpiredLeaseFreesTheSharedLimit) {
  const std::string team = SharedName("expiry");
  if (!SetShared(team, 1)) return;
  Repository a = Repo("a", 5), b = Repo("b", 5);
  JoinShared(a, {team});
  JoinShared(b, {team});
  EventLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, b.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  MustAcquire(a, Run("a1"));  // never renewed
  EXPECT_EQ(MustQueue(b, Run("b1")), 1);
  PassTTL();
  EXPECT_TRUE(log.Await(WatchEventType::kAdmitted, Run("b1")));
  EXPECT_TRUE(Eventually(
      [&] { return RunningRuns(driver_.get(), b) == std::vector{Run("b1")}; }));
}

TEST_P(DriverConformanceTest, Shared_BadInputIsRefusedAndWritesNothing) {
  const std::string team = SharedName("bad");
  if (!SetShared(team, 1)) return;
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->SetSharedLimit(ctx_, SharedLimit{"Team A", 1})));
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->SetSharedLimit(ctx_, SharedLimit{team, -1})));
  EXPECT_TRUE(absl::IsInvalidArgument(driver_->DeleteSharedLimit(ctx_, "-x")));
  RepositoryPolicy unsorted;
  unsorted.shared_limits = {SharedName("z"), SharedName("y")};
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->SetRepositoryPolicy(ctx_, Repo("a", 1).Key(), unsorted)));
  RepositoryPolicy twice;
  twice.shared_limits = {team, team};
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->SetRepositoryPolicy(ctx_, Repo("a", 1).Key(), twice)));
  RepositoryPolicy many;
  for (int i = 0; i < 9; ++i)
    many.shared_limits.push_back(SharedName(absl::StrCat(i)));
  EXPECT_TRUE(absl::IsInvalidArgument(
      driver_->SetRepositoryPolicy(ctx_, Repo("a", 1).Key(), many)));
  auto st = SharedStatus(driver_.get(), team);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->limit, 1);
  EXPECT_THAT(st->members, IsEmpty());
}

// Workers of two drivers submit, hold and release runs of six member
// repositories: at no moment do more than the limit hold slots.
TEST_P(DriverConformanceTest, Shared_Rule21_RacesNeverExceedTheLimit) {
  const std::string team = SharedName("race");
  if (!SetShared(team, 3)) return;
  std::vector<Repository> repos;
  for (int i = 0; i < 6; ++i) {
    repos.push_back(Repo(absl::StrCat("r", i), 2));
    JoinShared(repos.back(), {team});
  }
  auto other = MakeDriver();
  constexpr int kWorkers = 8;
  constexpr int kRuns = 8;
  RaceCounters c;
  std::atomic<int> admitted{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      Driver* d = w % 2 == 0 ? driver_.get() : other.get();
      for (int i = 0; i < kRuns; ++i) {
        const Repository& repo = repos[(w + i) % repos.size()];
        if (AdmitHoldRelease(d, ctx_, repo, Run(absl::StrCat("w", w, "-", i)),
                             {}, std::chrono::milliseconds(3),
                             &c) == RaceOutcome::kAdmitted) {
          ++admitted;
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(c.errors.load(), 0);
  EXPECT_EQ(admitted.load(), kWorkers * kRuns);
  EXPECT_LE(c.most.load(), 3);
  EXPECT_GE(c.most.load(), 2);  // the race did contend
  auto st = SharedStatus(other.get(), team);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->running, 0);
  EXPECT_EQ(st->queued, 0);
  ASSERT_TRUE(other->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency::conformance
