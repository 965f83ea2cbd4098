// The memory driver: the conformance suite, plus what only it promises.
#include "src/memory/memory_driver.h"

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "tests/conformance/driver_conformance.h"
#include "tests/conformance/forwarding_driver.h"

namespace pac::concurrency {
namespace {

conformance::DriverFactory MemoryFactory() {
  conformance::DriverFactory f;
  f.name = "memory";
  f.manual_clock = true;
  f.make = [](const conformance::ConformanceEnv& env)
      -> absl::StatusOr<std::unique_ptr<Driver>> {
    static std::mutex mu;
    static std::map<Clock*, std::weak_ptr<Driver>> stores;
    DriverOptions options;
    options.clock = env.clock;
    options.background_cleanup = env.background_cleanup;
    if (!env.background_cleanup) {
      // A store of its own, with no background cleanup.
      return NewMemoryDriver(MemoryConfig{env.lease_ttl}, options);
    }
    std::lock_guard<std::mutex> lock(mu);
    std::shared_ptr<Driver> store = stores[env.clock].lock();
    if (store == nullptr) {
      auto created = NewMemoryDriver(MemoryConfig{env.lease_ttl}, options);
      if (!created.ok()) return created.status();
      store = std::shared_ptr<Driver>(std::move(*created));
      stores[env.clock] = store;
    }
    // The suite's "other process" is another handle on that one instance.
    return std::unique_ptr<Driver>(new conformance::ForwardingDriver(store));
  };
  return f;
}

using conformance::DriverConformanceTest;
INSTANTIATE_TEST_SUITE_P(Memory, DriverConformanceTest,
                         ::testing::Values(MemoryFactory()),
                         [](const auto& info) { return info.param.name; });

// --- Memory-only behaviour -------------------------------------------------

TEST(MemoryDriverTest, LeaseIdsArePrintableAndUnique) {
  auto d = NewMemoryDriver(MemoryConfig{});
  ASSERT_TRUE(d.ok());
  std::set<std::string> ids;
  Context ctx;
  for (int r = 0; r < 50; ++r) {
    Repository repo{"ns", absl::StrCat("repo", r), 0};
    for (int i = 0; i < 4; ++i) {
      auto res = (*d)->AcquireSlot(ctx, repo, absl::StrCat("ns/run", i));
      ASSERT_TRUE(res.ok() && res->acquired);
      for (char c : res->lease.lease_id) {
        EXPECT_TRUE(c > 0x20 && c < 0x7f) << res->lease.lease_id;
      }
      ids.insert(res->lease.lease_id);
    }
  }
  EXPECT_EQ(ids.size(), 200u);
}

TEST(MemoryDriverTest, LeaseIdOfAnotherInstanceIsUnknown) {
  auto a = NewMemoryDriver(MemoryConfig{});
  auto b = NewMemoryDriver(MemoryConfig{});
  Context ctx;
  Repository repo{"ns", "repo", 1};
  auto lease = (*a)->AcquireSlot(ctx, repo, "ns/run");
  ASSERT_TRUE(lease->acquired);
  auto rel = (*b)->ReleaseSlot(ctx, lease->lease.lease_id, "", "");
  ASSERT_TRUE(rel.ok());
  EXPECT_FALSE(rel->released);
  EXPECT_TRUE(
      IsLeaseLost((*b)->RenewLease(ctx, lease->lease.lease_id).status()));
}

TEST(MemoryDriverTest, NonPositiveTtlIsRejected) {
  auto d = NewMemoryDriver(MemoryConfig{absl::ZeroDuration()});
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(d.status()));
  EXPECT_NE(d.status().message().find("memory-lease-ttl"), std::string::npos);
}

TEST(MemoryDriverTest, WatchCallbackMayCallTheDriver) {
  auto d = NewMemoryDriver(MemoryConfig{});
  Context ctx;
  Repository repo{"ns", "reentrant", 1};
  std::atomic<int> seen{-1};
  auto watch =
      (*d)->WatchSlotAvailability(ctx, repo.Key(), [&](const WatchEvent&) {
        auto slots = (*d)->GetCurrentSlots(ctx, repo.Key());
        if (slots.ok()) seen = *slots;
      });
  ASSERT_TRUE(watch.ok());
  auto a = (*d)->AcquireSlot(ctx, repo, "ns/a");
  ASSERT_TRUE((*d)->ReleaseSlot(ctx, a->lease.lease_id, "", "")->released);
  for (int i = 0; i < 5000 && seen.load() != 0; ++i)
    absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(seen.load(), 0);
}

}  // namespace
}  // namespace pac::concurrency
