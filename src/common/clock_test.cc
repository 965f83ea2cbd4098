#include "pac/concurrency/clock.h"

#include <atomic>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "src/common/steady_wall_clock.h"

namespace pac::concurrency {
namespace {

// A system clock stepped by an operator or NTP must not move the time that
// leases are measured by: only the monotonic clock does.
TEST(SteadyWallClockTest, AStepOfTheWallClockDoesNotMoveIt) {
  std::atomic<int64_t> wall_s{1'800'000'000};
  std::atomic<int64_t> mono_ns{5'000'000'000};
  internal::SteadyWallClock clock(
      [&] { return absl::FromUnixSeconds(wall_s.load()); },
      [&] { return mono_ns.load(); });
  const absl::Time start = clock.Now();
  EXPECT_EQ(start, absl::FromUnixSeconds(1'800'000'000));
  wall_s += 3;  // the system clock jumps forward 3 s
  EXPECT_EQ(clock.Now(), start);
  mono_ns += 1'500'000'000;  // 1.5 s really pass
  EXPECT_EQ(clock.Now(), start + absl::Milliseconds(1500));
  wall_s -= 3600;  // and back an hour
  mono_ns += 500'000'000;
  EXPECT_EQ(clock.Now(), start + absl::Seconds(2));
}

TEST(RealClockTest, StartsAtTheSystemClockAndNeverGoesBack) {
  Clock* clock = Clock::Real();
  EXPECT_LT(absl::AbsDuration(clock->Now() - absl::Now()), absl::Seconds(1));
  absl::Time last = clock->Now();
  for (int i = 0; i < 10000; ++i) {
    const absl::Time now = clock->Now();
    ASSERT_GE(now, last);
    last = now;
  }
}

}  // namespace
}  // namespace pac::concurrency
