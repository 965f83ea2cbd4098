#include "tests/conformance/driver_conformance.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"

namespace pac::concurrency::conformance {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::string RandomNamespace() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  return absl::StrFormat("conf-%08x-%d", rd(), counter++);
}

}  // namespace

std::vector<std::string> RunKeys(const std::vector<Lease>& leases) {
  std::vector<std::string> out;
  for (const auto& l : leases) out.push_back(l.pipeline_run_key);
  return out;
}

std::vector<std::string> RunKeys(const std::vector<QueueEntry>& entries) {
  std::vector<std::string> out;
  for (const auto& e : entries) out.push_back(e.pipeline_run_key);
  return out;
}

WatchCallback EventLog::Callback() {
  return [this](const WatchEvent& e) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(e);
    cv_.notify_all();
  };
}

bool EventLog::HasLocked(WatchEventType type, const std::string& run) const {
  for (const auto& e : events_) {
    if (e.type == type && (run.empty() || e.pipeline_run_key == run)) {
      return true;
    }
  }
  return false;
}

bool EventLog::Has(WatchEventType type, const std::string& run) {
  std::lock_guard<std::mutex> lock(mu_);
  return HasLocked(type, run);
}

bool EventLog::Await(WatchEventType type, const std::string& run) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::seconds(10),
                      [&] { return HasLocked(type, run); });
}

size_t EventLog::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

void DriverConformanceTest::SetUp() {
  if (factory().manual_clock) {
    manual_clock_ = std::make_unique<ManualClock>();
    clock_ = manual_clock_.get();
    ttl_ = absl::Seconds(30);
  } else {
    clock_ = Clock::Real();
    ttl_ = factory().real_ttl;
  }
  ns_ = RandomNamespace();
  driver_ = MakeDriver();
  ASSERT_NE(driver_, nullptr);
}

void DriverConformanceTest::TearDown() {
  if (driver_ != nullptr) {
    EXPECT_TRUE(driver_->Close().ok());
  }
}

std::unique_ptr<Driver> DriverConformanceTest::MakeDriver(
    bool background_cleanup) {
  ConformanceEnv env;
  env.clock = clock_;
  env.lease_ttl = ttl_;
  env.background_cleanup = background_cleanup;
  auto d = factory().make(env);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? std::move(*d) : nullptr;
}

Repository DriverConformanceTest::Repo(const std::string& name, int32_t limit) {
  return Repository{ns_, name, limit};
}

std::string DriverConformanceTest::Run(const std::string& name) const {
  return absl::StrCat(ns_, "/", name);
}

void DriverConformanceTest::Advance(absl::Duration d) {
  if (manual_clock_ != nullptr) {
    manual_clock_->Advance(d);
  } else {
    absl::SleepFor(d);
  }
}

void DriverConformanceTest::PassTTL() {
  Advance(ttl_ + (manual_clock_ != nullptr ? absl::Seconds(1)
                                           : absl::Milliseconds(500)));
}

void RaceCounters::HoldAndRelease(Driver* d, const Context& ctx,
                                  const std::string& lease_id,
                                  std::chrono::milliseconds hold) {
  int now = ++holding;
  int seen = most.load();
  while (now > seen && !most.compare_exchange_weak(seen, now)) {
  }
  std::this_thread::sleep_for(hold);
  --holding;
  if (!d->ReleaseSlot(ctx, lease_id, "", "").ok()) ++errors;
}

RaceOutcome AdmitHoldRelease(Driver* d, const Context& ctx,
                             const Repository& repo, const std::string& run,
                             const AcquireOptions& options,
                             std::chrono::milliseconds hold, RaceCounters* c) {
  while (true) {
    auto r = d->AcquireSlot(ctx, repo, run, options);
    if (IsRunRemoved(r.status())) return RaceOutcome::kRemoved;
    if (!r.ok()) {
      ++c->errors;
      return RaceOutcome::kFailed;
    }
    if (r->acquired) {
      c->HoldAndRelease(d, ctx, r->lease.lease_id, hold);
      return RaceOutcome::kAdmitted;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

absl::Duration DriverConformanceTest::QueueLimit() const {
  return manual_clock_ != nullptr ? absl::Seconds(4) : absl::Milliseconds(500);
}

void DriverConformanceTest::PassQueueLimit(int times) {
  Advance(times * QueueLimit() + (manual_clock_ != nullptr
                                      ? absl::Milliseconds(500)
                                      : absl::Milliseconds(300)));
}

std::vector<std::string> DriverConformanceTest::QueuedRuns(
    Driver* d, const Repository& repo) {
  auto q = d->GetQueuedPipelineRuns(ctx_, repo.Key());
  EXPECT_TRUE(q.ok()) << q.status();
  return q.ok() ? RunKeys(*q) : std::vector<std::string>{};
}

bool DriverConformanceTest::Eventually(const std::function<bool()>& pred) {
  absl::Time give_up = absl::Now() + factory().patience;
  while (absl::Now() < give_up) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return pred();
}

// ---------------------------------------------------------------------------
// Rule 1: the limit is never exceeded.

TEST_P(DriverConformanceTest, Rule01_LimitIsEnforced) {
  Repository repo = Repo("limited", 2);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  auto b = driver_->AcquireSlot(ctx_, repo, Run("b"));
  auto c = driver_->AcquireSlot(ctx_, repo, Run("c"));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(a->acquired);
  EXPECT_TRUE(b->acquired);
  EXPECT_FALSE(c->acquired);
  EXPECT_EQ(c->position, 1);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 2);
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("c")));
}

TEST_P(DriverConformanceTest, Rule01_RecordedLimitIsReadBack) {
  Repository repo = Repo("readback", 2);
  auto unknown = driver_->GetRepositoryLimit(ctx_, repo.Key());
  ASSERT_TRUE(unknown.ok()) << unknown.status();
  EXPECT_FALSE(unknown->has_value());
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("a"))->acquired);
  EXPECT_EQ(*driver_->GetRepositoryLimit(ctx_, repo.Key()), 2);
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, Repo("readback", 5)).ok());
  EXPECT_EQ(*driver_->GetRepositoryLimit(ctx_, repo.Key()), 5);
  // Another process sees the same record.
  std::unique_ptr<Driver> other = MakeDriver();
  EXPECT_EQ(*other->GetRepositoryLimit(ctx_, repo.Key()), 5);
  ASSERT_TRUE(driver_->CleanupRepository(ctx_, repo.Key()).ok());
  EXPECT_FALSE(driver_->GetRepositoryLimit(ctx_, repo.Key())->has_value());
  EXPECT_EQ(driver_->GetRepositoryLimit(ctx_, "Bad Key").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// GetRepositoryCounts (what /metrics reads): every repository
// ListRepositories lists, with the sizes its snapshot shows, read by
// another process too.
// Keys that are prefixes of others cut at '-' or '.' ("b" and "b-c")
// sort differently as keys and as etcd's `key/` prefixes: listings and
// their pages still come in key order, and pages join into the whole.
TEST_P(DriverConformanceTest, Rule01_ListingPagesComeInKeyOrder) {
  std::vector<std::string> names = {"b", "b-c", "b.d", "b0", "b-c-d", "a"};
  for (size_t i = 0; i < names.size(); ++i) {
    Repository r = Repo(names[i], 1);
    for (size_t q = 0; q <= i % 3; ++q) {
      ASSERT_TRUE(
          driver_->AcquireSlot(ctx_, r, Run(absl::StrCat("l", i, "-", q)))
              .ok());
    }
  }
  std::vector<std::string> want;
  for (const std::string& n : names) want.push_back(ns_ + "/" + n);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(*driver_->ListRepositories(ctx_, ns_), want);
  for (size_t size : {1, 2, 4, 0}) {
    std::vector<std::string> keys;
    std::string after;
    for (int pages = 0; pages < 10; ++pages) {
      auto page = driver_->ListRepositorySnapshots(ctx_, ns_, after, size);
      ASSERT_TRUE(page.ok()) << page.status();
      for (const RepositoryListing& r : *page) {
        keys.push_back(r.repository_key);
        auto snap = driver_->GetRepositorySnapshot(ctx_, r.repository_key);
        ASSERT_TRUE(snap.ok());
        EXPECT_EQ(r.snapshot.limit, snap->limit) << r.repository_key;
        EXPECT_EQ(r.snapshot.running.size(), snap->running.size());
        ASSERT_EQ(r.snapshot.queued.size(), snap->queued.size());
        for (size_t q = 0; q < snap->queued.size(); ++q) {
          EXPECT_EQ(r.snapshot.queued[q].pipeline_run_key,
                    snap->queued[q].pipeline_run_key);
          EXPECT_EQ(r.snapshot.queued[q].position, q + 1);
        }
      }
      if (size == 0 || page->size() < size) break;
      after = page->back().repository_key;
    }
    EXPECT_EQ(keys, want) << "pages of " << size;
  }
  // `after` need not be a key; the whole backend's listing holds ours in
  // the same order.
  auto from = driver_->ListRepositorySnapshots(ctx_, ns_, ns_ + "/b-", 2);
  ASSERT_TRUE(from.ok());
  ASSERT_EQ(from->size(), 2u);
  EXPECT_EQ((*from)[0].repository_key, ns_ + "/b-c");
  EXPECT_EQ((*from)[1].repository_key, ns_ + "/b-c-d");
  auto all = driver_->ListRepositorySnapshots(ctx_, "", ns_ + "/", 0);
  ASSERT_TRUE(all.ok());
  std::vector<std::string> ours;
  for (const RepositoryListing& r : *all) {
    if (absl::StartsWith(r.repository_key, ns_ + "/")) {
      ours.push_back(r.repository_key);
    }
  }
  EXPECT_EQ(ours, want);
  EXPECT_FALSE(driver_->ListRepositorySnapshots(ctx_, "Bad_NS", "", 1).ok());
}

TEST_P(DriverConformanceTest,
       Rule01_CountsOfEveryRepositoryMatchTheirSnapshots) {
  Repository busy = Repo("cbusy", 2);
  for (const char* r : {"a", "b", "c", "d", "e"}) {
    (void)*driver_->AcquireSlot(ctx_, busy, Run(r));
  }
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, Repo("cidle", 4)).ok());
  Repository freed = Repo("cfreed", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, freed, Run("f"))->acquired);
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, "", Run("f"), freed.Key()).ok());
  ASSERT_TRUE(driver_->SetRepositoryState(ctx_, Repo("cstate", 1), "x").ok());
  std::unique_ptr<Driver> other = MakeDriver();
  for (Driver* d : {driver_.get(), other.get()}) {
    auto counts = d->GetRepositoryCounts(ctx_);
    ASSERT_TRUE(counts.ok()) << counts.status();
    std::vector<std::string> keys;
    for (const RepositoryCounts& c : *counts) {
      if (!absl::StartsWith(c.repository_key, ns_ + "/")) continue;
      keys.push_back(c.repository_key);
      auto snap = d->GetRepositorySnapshot(ctx_, c.repository_key);
      ASSERT_TRUE(snap.ok());
      EXPECT_EQ(c.limit, snap->limit) << c.repository_key;
      EXPECT_EQ(c.running, static_cast<int64_t>(snap->running.size()))
          << c.repository_key;
      EXPECT_EQ(c.queued, static_cast<int64_t>(snap->queued.size()))
          << c.repository_key;
    }
    EXPECT_EQ(keys, *d->ListRepositories(ctx_, ns_));
    EXPECT_EQ(keys.size(), 3u);
  }
  auto counts = driver_->GetRepositoryCounts(ctx_);
  ASSERT_TRUE(counts.ok());
  for (const RepositoryCounts& c : *counts) {
    if (c.repository_key == busy.Key()) {
      EXPECT_EQ(c.limit, 2);
      EXPECT_EQ(c.running, 2);
      EXPECT_EQ(c.queued, 3);
    }
  }
  EXPECT_TRUE(other->Close().ok());
}

TEST_P(DriverConformanceTest, Rule01_RepositoriesWithARecordAreListed) {
  auto none = driver_->ListRepositories(ctx_, ns_);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  // A repository with a running and a queued run, one with only a limit,
  // one with only a state (not listed), and one in a namespace whose name
  // starts with this one's (not listed under this namespace).
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, Repo("busy", 1), Run("a"))->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, Repo("busy", 1), Run("b"))->acquired);
  ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, Repo("idle", 3)).ok());
  ASSERT_TRUE(
      driver_->SetRepositoryState(ctx_, Repo("state-only", 1), "x").ok());
  const std::string neighbour_ns = ns_ + "x";
  Repository neighbour{neighbour_ns, "busy", 1};
  ASSERT_TRUE(
      driver_->AcquireSlot(ctx_, neighbour, neighbour_ns + "/r")->acquired);
  // Enough repositories for the listing to take several pages.
  std::vector<std::string> want = {Repo("busy", 1).Key(),
                                   Repo("idle", 3).Key()};
  for (int i = 0; i < 300; ++i) {
    Repository r = Repo(absl::StrFormat("many-%03d", i), 2);
    ASSERT_TRUE(driver_->SetRepositoryLimit(ctx_, r).ok());
    want.push_back(r.Key());
  }
  std::sort(want.begin(), want.end());
  auto listed = driver_->ListRepositories(ctx_, ns_);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(*listed, want);
  // Another process sees the same; the whole listing holds both namespaces.
  std::unique_ptr<Driver> other = MakeDriver();
  EXPECT_EQ(*other->ListRepositories(ctx_, ns_), want);
  auto all = other->ListRepositories(ctx_, "");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(std::is_sorted(all->begin(), all->end()));
  EXPECT_THAT(*all, testing::IsSupersetOf(want));
  EXPECT_THAT(*all, testing::Contains(neighbour.Key()));
  EXPECT_THAT(*all,
              testing::Not(testing::Contains(Repo("state-only", 1).Key())));
  EXPECT_EQ(*other->ListRepositories(ctx_, neighbour_ns),
            std::vector<std::string>{neighbour.Key()});
  ASSERT_TRUE(other->Close().ok());
  // A cleaned repository is gone from the listing.
  ASSERT_TRUE(driver_->CleanupRepository(ctx_, Repo("busy", 1).Key()).ok());
  want.erase(std::find(want.begin(), want.end(), Repo("busy", 1).Key()));
  EXPECT_EQ(*driver_->ListRepositories(ctx_, ns_), want);
  auto bad = driver_->ListRepositories(ctx_, "Bad_NS");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("namespace"), std::string::npos)
      << bad.status();
}

TEST_P(DriverConformanceTest, Rule01_ZeroOrUnsetLimitIsUnlimited) {
  Repository zero = Repo("zero", 0);
  Repository unset{ns_, "unset", std::nullopt};
  for (int i = 0; i < 20; ++i) {
    auto r = driver_->AcquireSlot(ctx_, zero, Run(absl::StrCat("z", i)));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->acquired);
    auto u = driver_->AcquireSlot(ctx_, unset, Run(absl::StrCat("u", i)));
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_TRUE(u->acquired);
  }
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, zero.Key()), 20);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, unset.Key()), 20);
}

// Many threads, each with its own driver instance where the backend is
// shared, hammer one repository. The checker counts what it observed: a
// grant raises `inflight`, and the holder lowers it before releasing, so
// `inflight` never exceeds the number of leases the driver has out.
TEST_P(DriverConformanceTest, Rule01_StressNeverOverAdmits) {
  constexpr int kLimit = 3;
  constexpr int kThreads = 12;
  const int kOpsPerThread = factory().manual_clock ? 400 : 40;
  Repository repo = Repo("stress", kLimit);
  std::atomic<int> inflight{0};
  std::atomic<int> max_seen{0};
  std::atomic<int> grants{0};
  std::atomic<int> releases{0};
  std::atomic<int> errors{0};
  std::mutex first_error_mu;
  std::string first_error;  // what went wrong first, for the failure message
  auto error = [&](const std::string& what) {
    ++errors;
    std::lock_guard<std::mutex> lock(first_error_mu);
    if (first_error.empty()) first_error = what;
  };
  // Each thread its own driver: on PostgreSQL and etcd its own connections
  // and caches, as separate processes would have.
  std::vector<std::unique_ptr<Driver>> drivers;
  for (int t = 0; t < kThreads; ++t) {
    drivers.push_back(MakeDriver());
    ASSERT_NE(drivers.back(), nullptr);
  }
  // How long a grant is held, counted in `inflight`: long enough for other
  // threads' acquires to run meanwhile, so that an over-admission shows.
  const absl::Duration hold =
      factory().manual_clock ? absl::Microseconds(200) : absl::Milliseconds(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Driver* d = drivers[t].get();
      for (int i = 0; i < kOpsPerThread; ++i) {
        std::string run = Run(absl::StrCat("t", t, "-", i));
        AcquireOptions opts;
        opts.enqueue = false;
        auto r = d->AcquireSlot(ctx_, repo, run, opts);
        if (!r.ok()) {
          error(absl::StrCat("acquire: ", r.status().ToString()));
          continue;
        }
        if (!r->acquired) continue;
        ++grants;
        int now = ++inflight;
        int prev = max_seen.load();
        while (now > prev && !max_seen.compare_exchange_weak(prev, now)) {
        }
        absl::SleepFor(hold);
        --inflight;
        auto rel = d->ReleaseSlot(ctx_, r->lease.lease_id, run, repo.Key());
        if (!rel.ok()) {
          error(absl::StrCat("release: ", rel.status().ToString()));
        } else if (!rel->released) {
          error(absl::StrCat("release: ", run, " held no slot"));
        }
        ++releases;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& d : drivers) EXPECT_TRUE(d->Close().ok());
  EXPECT_EQ(errors.load(), 0) << first_error;
  EXPECT_LE(max_seen.load(), kLimit);
  EXPECT_GT(grants.load(), kThreads);
  EXPECT_EQ(grants.load(), releases.load());
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
}

// Waiters queue and are promoted by releases: the limit still holds, and
// every grant the driver made (direct or by promotion) is released once.
TEST_P(DriverConformanceTest, Rule01_StressWithQueueAndPromotions) {
  constexpr int kLimit = 2;
  constexpr int kThreads = 8;
  const int kRunsPerThread = factory().manual_clock ? 100 : 15;
  Repository repo = Repo("promote-stress", kLimit);
  std::mutex mu;
  std::set<std::string> held;  // runs the checker knows hold a slot
  std::set<std::string> done;  // runs whose release has begun
  size_t max_held = 0;
  std::atomic<int> errors{0};
  auto note_grant = [&](const std::string& run) {
    std::lock_guard<std::mutex> lock(mu);
    if (done.count(run)) return;  // a late report of an old grant
    held.insert(run);
    max_held = std::max(max_held, held.size());
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRunsPerThread && errors.load() == 0; ++i) {
        std::string run = Run(absl::StrCat("w", t, "-", i));
        auto r = driver_->AcquireSlot(ctx_, repo, run);
        if (!r.ok()) {
          ++errors;
          continue;
        }
        for (const Lease& l : r->admitted) note_grant(l.pipeline_run_key);
        // Poll until admitted (a release elsewhere promotes us); a bounded
        // wait, so a driver that never promotes fails instead of hanging.
        absl::Time give_up = absl::Now() + factory().patience;
        while (!r->acquired) {
          if (absl::Now() > give_up) {
            ++errors;
            break;
          }
          std::this_thread::yield();
          r = driver_->AcquireSlot(ctx_, repo, run);
          if (!r.ok()) {
            ++errors;
            break;
          }
          for (const Lease& l : r->admitted) note_grant(l.pipeline_run_key);
        }
        if (!r.ok() || !r->acquired) continue;
        note_grant(run);
        {
          std::lock_guard<std::mutex> lock(mu);
          held.erase(run);
          done.insert(run);
        }
        auto rel = driver_->ReleaseSlot(ctx_, "", run, repo.Key());
        if (!rel.ok()) {
          ++errors;
          continue;
        }
        for (const Lease& l : rel->admitted) note_grant(l.pipeline_run_key);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  // `held` holds only runs the driver reported as granted and whose release
  // has not begun, so it never exceeds what the driver has out.
  EXPECT_LE(max_held, static_cast<size_t>(kLimit));
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 0);
  EXPECT_TRUE(driver_->GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
}

// ---------------------------------------------------------------------------
// Rule 2: one slot per run.

TEST_P(DriverConformanceTest, Rule02_ReacquireReturnsSameLease) {
  Repository repo = Repo("same", 2);
  auto first = driver_->AcquireSlot(ctx_, repo, Run("a"));
  auto second = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(first->acquired && second->acquired);
  EXPECT_EQ(first->lease.lease_id, second->lease.lease_id);
  EXPECT_EQ(first->lease.fencing_token, second->lease.fencing_token);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 1);
  EXPECT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
}

TEST_P(DriverConformanceTest, Rule02_ConcurrentAcquiresOfOneRunTakeOneSlot) {
  Repository repo = Repo("same-concurrent", 5);
  std::vector<std::thread> threads;
  std::mutex mu;
  std::set<std::string> ids;
  std::atomic<int> errors{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      auto r = driver_->AcquireSlot(ctx_, repo, Run("only"));
      if (!r.ok() || !r->acquired) {
        ++errors;
        return;
      }
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(r->lease.lease_id);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 1);
}

TEST_P(DriverConformanceTest, Rule02_QueuedRunKeepsItsPlace) {
  Repository repo = Repo("keep-place", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("holder"))->acquired);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("q1"))->position, 1);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("q2"))->position, 2);
  EXPECT_EQ(driver_->AcquireSlot(ctx_, repo, Run("q1"))->position, 1);
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("q1"), Run("q2")));
}

// ---------------------------------------------------------------------------
// Rule 3: no demotion.

TEST_P(DriverConformanceTest, Rule03_MarkingRunningRunQueuedKeepsItsSlot) {
  Repository repo = Repo("demote", 1);
  auto held = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(held.ok() && held->acquired);
  ASSERT_TRUE(driver_->SetPipelineRunState(ctx_, Run("a"), "queued").ok());
  // A replayed "queued" event re-submits the run to the queue.
  QueueManager qm(driver_.get(), nullptr);
  auto admitted = qm.AddToPendingQueue(ctx_, repo, {Run("a")});
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 1);
  EXPECT_THAT(RunKeys(*driver_->GetRunningPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("a")));
  EXPECT_TRUE(driver_->GetQueuedPipelineRuns(ctx_, repo.Key())->empty());
  EXPECT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  // The original lease is still valid.
  EXPECT_TRUE(driver_->RenewLease(ctx_, held->lease.lease_id).ok());
}

// ---------------------------------------------------------------------------
// Rule 4: fencing.

TEST_P(DriverConformanceTest, Rule04_FencingTokensStrictlyIncrease) {
  Repository repo = Repo("fence", 1);
  std::vector<int64_t> tokens;
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a.ok() && a->acquired);
  tokens.push_back(a->lease.fencing_token);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
  auto rel =
      driver_->ReleaseSlot(ctx_, a->lease.lease_id, Run("a"), repo.Key());
  ASSERT_TRUE(rel.ok());
  ASSERT_EQ(rel->admitted.size(), 1u);  // b, by promotion
  tokens.push_back(rel->admitted[0].fencing_token);
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, "", Run("b"), repo.Key()).ok());
  auto a2 = driver_->AcquireSlot(ctx_, repo, Run("a"));  // same run again
  ASSERT_TRUE(a2->acquired);
  tokens.push_back(a2->lease.fencing_token);
  EXPECT_NE(a2->lease.lease_id, a->lease.lease_id);
  for (size_t i = 1; i < tokens.size(); ++i) {
    EXPECT_GT(tokens[i], tokens[i - 1]) << "grant " << i;
  }
}

TEST_P(DriverConformanceTest, Rule04_RenewExtendsLiveLease) {
  Repository repo = Repo("renew", 1);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a->acquired);
  Advance(ttl_ / 2);
  auto renewed = driver_->RenewLease(ctx_, a->lease.lease_id);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_GT(renewed->expires_at, a->lease.expires_at);
  EXPECT_EQ(renewed->fencing_token, a->lease.fencing_token);
  Advance(ttl_ / 2 + ttl_ / 4);  // past the first expiry, not the renewed one
  EXPECT_EQ(*driver_->GetCurrentSlots(ctx_, repo.Key()), 1);
  EXPECT_FALSE(driver_->AcquireSlot(ctx_, repo, Run("b"))->acquired);
}

TEST_P(DriverConformanceTest, Rule04_RenewingExpiredLeaseFailsDistinctly) {
  Repository repo = Repo("renew-expired", 1);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a->acquired);
  PassTTL();
  auto renewed = driver_->RenewLease(ctx_, a->lease.lease_id);
  ASSERT_FALSE(renewed.ok());
  EXPECT_TRUE(IsLeaseLost(renewed.status())) << renewed.status();
  EXPECT_FALSE(IsRetryable(renewed.status()));
}

TEST_P(DriverConformanceTest, Rule04_RenewingReleasedLeaseFailsDistinctly) {
  Repository repo = Repo("renew-released", 1);
  auto a = driver_->AcquireSlot(ctx_, repo, Run("a"));
  ASSERT_TRUE(a->acquired);
  ASSERT_TRUE(driver_->ReleaseSlot(ctx_, a->lease.lease_id, "", "")->released);
  auto renewed = driver_->RenewLease(ctx_, a->lease.lease_id);
  EXPECT_TRUE(IsLeaseLost(renewed.status())) << renewed.status();
}

// ---------------------------------------------------------------------------
// Rule 6: FIFO.

TEST_P(DriverConformanceTest, Rule06_AdmitsByCreationTimeThenSequence) {
  Repository repo = Repo("fifo", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("holder"))->acquired);
  absl::Time t0 = absl::FromUnixSeconds(1'600'000'000);
  // Enqueued out of creation order; c1 and c2 share a creation time, so
  // their enqueue order decides.
  std::vector<std::pair<std::string, absl::Time>> arrivals = {
      {"late", t0 + absl::Seconds(30)},
      {"c1", t0 + absl::Seconds(10)},
      {"early", t0},
      {"c2", t0 + absl::Seconds(10)},
      {"mid", t0 + absl::Seconds(20)}};
  for (const auto& [name, created] : arrivals) {
    AcquireOptions opts;
    opts.creation_time = created;
    auto r = driver_->AcquireSlot(ctx_, repo, Run(name), opts);
    ASSERT_TRUE(r.ok());
    ASSERT_FALSE(r->acquired);
  }
  std::vector<std::string> want = {Run("early"), Run("c1"), Run("c2"),
                                   Run("mid"), Run("late")};
  auto queued = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
  EXPECT_THAT(RunKeys(*queued), ElementsAreArray(want));
  for (size_t i = 0; i < queued->size(); ++i) {
    EXPECT_EQ((*queued)[i].position, static_cast<int64_t>(i + 1));
  }
  std::vector<std::string> admitted;
  std::string current = Run("holder");
  for (int i = 0; i < 5; ++i) {
    auto rel = driver_->ReleaseSlot(ctx_, "", current, repo.Key());
    ASSERT_TRUE(rel.ok());
    ASSERT_EQ(rel->admitted.size(), 1u);
    current = rel->admitted[0].pipeline_run_key;
    admitted.push_back(current);
  }
  EXPECT_THAT(admitted, ElementsAreArray(want));
}

// Creation times are ordered over the whole range the API accepts (RFC 3339
// years 0001-9999), before 1970 too: no driver clamps them.
TEST_P(DriverConformanceTest, Rule06_CreationTimesBefore1970KeepTheirOrder) {
  Repository repo = Repo("fifo-1900s", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("holder"))->acquired);
  const absl::Time y1 =
      absl::FromCivil(absl::CivilSecond(1, 1, 1, 0, 0, 0), absl::UTCTimeZone());
  const absl::Time y9999 = absl::FromCivil(
      absl::CivilSecond(9999, 12, 31, 23, 59, 59), absl::UTCTimeZone());
  std::vector<std::pair<std::string, absl::Time>> arrivals = {
      {"y2020", absl::FromUnixSeconds(1'600'000'000)},
      {"y1969", absl::FromUnixSeconds(-1)},
      {"y9999", y9999},
      {"y1960", absl::FromUnixSeconds(-315'619'200)},
      {"epoch", absl::UnixEpoch()},
      {"y0001", y1},
      {"y1960b", absl::FromUnixSeconds(-315'619'200) + absl::Microseconds(1)}};
  for (const auto& [name, created] : arrivals) {
    AcquireOptions opts;
    opts.creation_time = created;
    auto r = driver_->AcquireSlot(ctx_, repo, Run(name), opts);
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    ASSERT_FALSE(r->acquired);
  }
  std::vector<std::string> want = {Run("y0001"), Run("y1960"), Run("y1960b"),
                                   Run("y1969"), Run("epoch"), Run("y2020"),
                                   Run("y9999")};
  auto queued = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_THAT(RunKeys(*queued), ElementsAreArray(want));
  for (const QueueEntry& q : *queued) {
    for (const auto& [name, created] : arrivals) {
      if (q.pipeline_run_key == Run(name)) {
        EXPECT_EQ(q.creation_time, created) << name;
      }
    }
  }
  std::vector<std::string> admitted;
  std::string current = Run("holder");
  for (size_t i = 0; i < want.size(); ++i) {
    auto rel = driver_->ReleaseSlot(ctx_, "", current, repo.Key());
    ASSERT_TRUE(rel.ok()) << rel.status();
    ASSERT_EQ(rel->admitted.size(), 1u);
    current = rel->admitted[0].pipeline_run_key;
    admitted.push_back(current);
  }
  EXPECT_THAT(admitted, ElementsAreArray(want));
  // Outside those years: refused, naming the field, nothing written.
  for (absl::Time bad : {absl::InfinitePast(), y1 - absl::Microseconds(1),
                         y9999 + absl::Seconds(1), absl::InfiniteFuture()}) {
    AcquireOptions opts;
    opts.creation_time = bad;
    auto r = driver_->AcquireSlot(ctx_, repo, Run("out-of-range"), opts);
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("creation_time"));
  }
  auto after = driver_->GetQueuedPipelineRuns(ctx_, repo.Key());
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->empty());
}

TEST_P(DriverConformanceTest, Rule06_RunBehindTheHeadCannotJumpAhead) {
  auto lazy = MakeDriver(/*background_cleanup=*/false);
  Repository repo = Repo("no-jump", 1);
  ASSERT_TRUE(lazy->AcquireSlot(ctx_, repo, Run("holder"))->acquired);
  ASSERT_EQ(lazy->AcquireSlot(ctx_, repo, Run("head"))->position, 1);
  ASSERT_EQ(lazy->AcquireSlot(ctx_, repo, Run("tail"))->position, 2);
  PassTTL();  // the holder dies; nobody reclaims its slot in the background
  // The tail asks first, but the slot goes to the head.
  auto tail = lazy->AcquireSlot(ctx_, repo, Run("tail"));
  ASSERT_TRUE(tail.ok());
  EXPECT_FALSE(tail->acquired);
  EXPECT_EQ(tail->position, 1);
  EXPECT_THAT(RunKeys(*lazy->GetRunningPipelineRuns(ctx_, repo.Key())),
              ElementsAre(Run("head")));
  // A newcomer with an old creation time is queued by that time.
  AcquireOptions old;
  old.creation_time = absl::FromUnixSeconds(1);
  auto newcomer = lazy->AcquireSlot(ctx_, repo, Run("old"), old);
  EXPECT_FALSE(newcomer->acquired);
  EXPECT_EQ(newcomer->position, 1);
  EXPECT_TRUE(lazy->Close().ok());
}

TEST_P(DriverConformanceTest, Rule06_StressConcurrentEnqueueKeepsGlobalOrder) {
  Repository repo = Repo("fifo-stress", 1);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, repo, Run("holder"))->acquired);
  constexpr int kThreads = 8;
  const int kPerThread = factory().manual_clock ? 50 : 8;
  absl::Time t0 = absl::FromUnixSeconds(1'600'000'000);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  // Thread t enqueues creation times t, t+kThreads, ...: interleaved, so the
  // global order mixes every thread.
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        int n = i * kThreads + t;
        AcquireOptions opts;
        opts.creation_time = t0 + absl::Seconds(n);
        auto r = driver_->AcquireSlot(ctx_, repo,
                                      Run(absl::StrFormat("r%05d", n)), opts);
        if (!r.ok() || r->acquired) ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(errors.load(), 0);
  const int total = kThreads * kPerThread;
  std::vector<std::string> want;
  for (int n = 0; n < total; ++n)
    want.push_back(Run(absl::StrFormat("r%05d", n)));
  EXPECT_THAT(RunKeys(*driver_->GetQueuedPipelineRuns(ctx_, repo.Key())),
              ElementsAreArray(want));
  // Drain from another driver instance: the same order everywhere.
  auto other = MakeDriver();
  std::vector<std::string> admitted;
  std::string current = Run("holder");
  for (int n = 0; n < total; ++n) {
    auto rel = other->ReleaseSlot(ctx_, "", current, repo.Key());
    ASSERT_TRUE(rel.ok());
    ASSERT_EQ(rel->admitted.size(), 1u);
    current = rel->admitted[0].pipeline_run_key;
    admitted.push_back(current);
  }
  EXPECT_THAT(admitted, ElementsAreArray(want));
  EXPECT_TRUE(other->Close().ok());
}

}  // namespace pac::concurrency::conformance
