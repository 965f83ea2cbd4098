// The conformance suite, cancelling running runs (docs/policies.md,
// "Cancelling running runs"): a new submit with cancel_running asks the
// other running runs of its supersede group to stop, in the same step;
// their holders learn it from the watch, the renew answer and listings,
// and their slots stay held until they release.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "tests/conformance/driver_conformance.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

AcquireOptions Cancelling(const std::string& group, int64_t at_seconds) {
  AcquireOptions o;
  o.group = group;
  o.creation_time = absl::FromUnixSeconds(at_seconds);
  o.cancel_running = true;
  return o;
}

// The runs `d` shows asked to stop in `repo`.
std::vector<std::string> Cancelled(Driver* d, const Context& ctx,
                                   const Repository& repo) {
  std::vector<std::string> out;
  auto running = d->GetRunningPipelineRuns(ctx, repo.Key());
  EXPECT_TRUE(running.ok()) << running.status();
  if (!running.ok()) return out;
  for (const Lease& l : *running) {
    if (l.cancel_requested) out.push_back(l.pipeline_run_key);
  }
  return out;
}

TEST_P(DriverConformanceTest, Cancel_ANewRunAsksTheGroupsRunningRunsToStop) {
  Repository repo = Repo("cancel", 2);
  EventLog log;
  auto watch = driver_->WatchSlotAvailability(ctx_, repo.Key(), log.Callback());
  ASSERT_TRUE(watch.ok()) << watch.status();
  AcquireOptions a_opts;
  a_opts.group = "pr-1";
  a_opts.creation_time = absl::FromUnixSeconds(100);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"), a_opts);
  ASSERT_TRUE(a.ok() && a->acquired) << a.status();
  EXPECT_FALSE(a->lease.cancel_requested);
  auto b = driver_->AcquireSlot(ctx_, repo, Run("b"), Cancelling("pr-2", 110));
  ASSERT_TRUE(b.ok() && b->acquired) << b.status();
  // c of pr-1 queues (both slots are held) and asks a, not b, to stop.
  auto c = driver_->AcquireSlot(ctx_, repo, Run("c"), Cancelling("pr-1", 120));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->position, 1);
  EXPECT_TRUE(log.Await(WatchEventType::kCancelRequested, Run("a")));
  EXPECT_FALSE(log.Has(WatchEventType::kCancelRequested, Run("b")));
  EXPECT_THAT(Cancelled(driver_.get(), ctx_, repo), ElementsAre(Run("a")));
  // The renew answer says so, through this driver and another.
  auto renewed = driver_->RenewLease(ctx_, a->lease.lease_id);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_TRUE(renewed->cancel_requested);
  auto other = MakeDriver();
  auto again = other->RenewLease(ctx_, a->lease.lease_id);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->cancel_requested);
  auto b_renewed = other->RenewLease(ctx_, b->lease.lease_id);
  ASSERT_TRUE(b_renewed.ok()) << b_renewed.status();
  EXPECT_FALSE(b_renewed->cancel_requested);
  auto snapshot = other->GetRepositorySnapshot(ctx_, repo.Key());
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_EQ(snapshot->running.size(), 2u);
  for (const Lease& l : snapshot->running) {
    EXPECT_EQ(l.cancel_requested, l.pipeline_run_key == Run("a"))
        << l.pipeline_run_key;
  }
  // a still holds its slot: c waits until a releases.
  EXPECT_EQ(*other->GetCurrentSlots(ctx_, repo.Key()), 2);
  auto c_again =
      other->AcquireSlot(ctx_, repo, Run("c"), Cancelling("pr-1", 120));
  ASSERT_TRUE(c_again.ok()) << c_again.status();
  EXPECT_FALSE(c_again->acquired);
  auto rel = driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok()) << rel.status();
  ASSERT_EQ(rel->admitted.size(), 1u);
  EXPECT_EQ(rel->admitted[0].pipeline_run_key, Run("c"));
  EXPECT_FALSE(rel->admitted[0].cancel_requested);
  EXPECT_THAT(Cancelled(driver_.get(), ctx_, repo), IsEmpty());
  ASSERT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, Cancel_OnlyANewSubmitWithTheFlagCancels) {
  Repository repo = Repo("cancelonly", 3);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"), Cancelling("main", 100));
  ASSERT_TRUE(a.ok() && a->acquired) << a.status();
  // b of the group without the flag: a keeps running undisturbed.
  AcquireOptions plain;
  plain.group = "main";
  plain.creation_time = absl::FromUnixSeconds(110);
  auto b = driver_->AcquireSlot(ctx_, repo, Run("b"), plain);
  ASSERT_TRUE(b.ok() && b->acquired) << b.status();
  EXPECT_THAT(Cancelled(driver_.get(), ctx_, repo), IsEmpty());
  // c with the flag, admitted at once, asks a and b to stop.
  auto c = driver_->AcquireSlot(ctx_, repo, Run("c"), Cancelling("main", 120));
  ASSERT_TRUE(c.ok() && c->acquired) << c.status();
  EXPECT_FALSE(c->lease.cancel_requested);
  std::vector<std::string> cancelled = Cancelled(driver_.get(), ctx_, repo);
  std::sort(cancelled.begin(), cancelled.end());
  EXPECT_THAT(cancelled, ElementsAre(Run("a"), Run("b")));
  // a submitted again (a client retrying) finds its lease: nobody new is
  // asked to stop, c least of all.
  auto a_again =
      driver_->AcquireSlot(ctx_, repo, Run("a"), Cancelling("main", 100));
  ASSERT_TRUE(a_again.ok() && a_again->acquired) << a_again.status();
  EXPECT_EQ(a_again->lease.lease_id, a->lease.lease_id);
  EXPECT_TRUE(a_again->lease.cancel_requested);
  EXPECT_FALSE(driver_->RenewLease(ctx_, c->lease.lease_id)->cancel_requested);
  // The flag needs a group: InvalidArgument, nothing written.
  AcquireOptions bad;
  bad.cancel_running = true;
  auto refused = driver_->AcquireSlot(ctx_, repo, Run("d"), bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 3);
  EXPECT_THAT(QueuedRuns(driver_.get(), repo), IsEmpty());
  // A run granted again after its release starts with no request.
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "").ok());
  auto a_new = driver_->AcquireSlot(ctx_, repo, Run("a"), plain);
  ASSERT_TRUE(a_new.ok() && a_new->acquired) << a_new.status();
  EXPECT_FALSE(a_new->lease.cancel_requested);
  EXPECT_FALSE(
      driver_->RenewLease(ctx_, a_new->lease.lease_id)->cancel_requested);
}

// Each worker pushes the runs of its own group one after another, each
// with cancel_running, through two drivers: a run holds its slot until it
// is asked to stop (by its group's next run) and then releases. Every run
// but each group's last is asked to stop, none is asked twice or by
// another group, and the limit holds throughout.
TEST_P(DriverConformanceTest, Cancel_RacesKeepTheLimitAndReachEveryHolder) {
  Repository repo = Repo("crace", 2);
  auto other = MakeDriver();
  constexpr int kGroups = 4;
  constexpr int kRuns = 6;
  std::mutex mu;
  std::map<std::string, int> asked;  // run -> cancel events; guarded by mu
  auto watch = driver_->WatchSlotAvailability(
      ctx_, repo.Key(), [&](const WatchEvent& e) {
        if (e.type != WatchEventType::kCancelRequested) return;
        std::lock_guard<std::mutex> lock(mu);
        ++asked[e.pipeline_run_key];
      });
  ASSERT_TRUE(watch.ok()) << watch.status();
  RaceCounters c;
  std::atomic<int> stopped{0};  // holders that saw their request
  std::vector<std::thread> workers;
  const int64_t base = absl::ToUnixSeconds(absl::Now());
  for (int g = 0; g < kGroups; ++g) {
    workers.emplace_back([&, g] {
      Driver* d = g % 2 == 0 ? driver_.get() : other.get();
      const std::string group = absl::StrCat("pr-", g);
      std::thread holder;  // the group's run that holds a slot
      for (int i = 0; i < kRuns; ++i) {
        const std::string run = Run(absl::StrCat("g", g, "-", i));
        const absl::Time until = absl::Now() + absl::Seconds(60);
        std::optional<Lease> lease;
        bool submitted = false;
        while (!lease.has_value() && absl::Now() < until) {
          // The first submit is the new one; the next ones find the run.
          auto r = d->AcquireSlot(ctx_, repo, run, Cancelling(group, base + i));
          if (!r.ok()) {
            ++c.errors;
            return;
          }
          submitted = true;
          if (r->acquired)
            lease = r->lease;
          else
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        if (!submitted || !lease.has_value()) {
          ++c.errors;
          return;
        }
        if (holder.joinable()) holder.join();
        const int now = ++c.holding;
        for (int m = c.most.load();
             now > m && !c.most.compare_exchange_weak(m, now);) {
        }
        const bool last = i == kRuns - 1;
        holder = std::thread([&, d, id = lease->lease_id, last] {
          // Hold until asked to stop (renewing, as a holder does); the
          // group's last run holds 5 ms.
          const absl::Time end = absl::Now() + absl::Seconds(60);
          while (absl::Now() < end) {
            auto r = d->RenewLease(ctx_, id);
            if (!r.ok()) {
              ++c.errors;
              break;
            }
            if (r->cancel_requested) {
              ++stopped;
              break;
            }
            if (last) {
              std::this_thread::sleep_for(std::chrono::milliseconds(5));
              break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
          }
          --c.holding;
          if (!d->ReleaseSlot(ctx_, id, "", "").ok()) ++c.errors;
        });
      }
      if (holder.joinable()) holder.join();
    });
  }
  for (auto& w : workers) w.join();
  EXPECT_EQ(c.errors.load(), 0);
  EXPECT_LE(c.most.load(), 2);
  EXPECT_EQ(stopped.load(), kGroups * (kRuns - 1));
  // Every run but each group's last was asked once, and a last never.
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return asked.size() == size_t{kGroups * (kRuns - 1)};
  }));
  std::lock_guard<std::mutex> lock(mu);
  for (int g = 0; g < kGroups; ++g) {
    for (int i = 0; i < kRuns; ++i) {
      const std::string run = Run(absl::StrCat("g", g, "-", i));
      EXPECT_EQ(asked.count(run) ? asked[run] : 0, i < kRuns - 1 ? 1 : 0)
          << run;
    }
  }
  ASSERT_TRUE(other->Close().ok());
}

}  // namespace
}  // namespace pac::concurrency::conformance
