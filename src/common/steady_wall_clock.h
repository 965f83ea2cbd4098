// The arithmetic of Clock::Real(): the wall clock read once, advanced by a
// monotonic clock, so a step of the system clock (an operator's `date -s`,
// NTP stepping at boot, a VM resumed from a snapshot) neither expires a
// lease early nor keeps one alive. Split out so a test can feed it clocks
// that step.
#ifndef PAC_SRC_COMMON_STEADY_WALL_CLOCK_H_
#define PAC_SRC_COMMON_STEADY_WALL_CLOCK_H_

#include <cstdint>
#include <functional>

#include "absl/time/time.h"

namespace pac::concurrency::internal {

class SteadyWallClock {
 public:
  // `wall` is read once, now; `monotonic_ns` (nanoseconds of a clock that
  // never steps) on every Now(). Thread-safe once constructed.
  SteadyWallClock(const std::function<absl::Time()>& wall,
                  std::function<int64_t()> monotonic_ns)
      : monotonic_ns_(std::move(monotonic_ns)),
        anchor_mono_ns_(monotonic_ns_()),
        anchor_wall_(wall()) {}

  absl::Time Now() const {
    return anchor_wall_ + absl::Nanoseconds(monotonic_ns_() - anchor_mono_ns_);
  }

 private:
  const std::function<int64_t()> monotonic_ns_;
  const int64_t anchor_mono_ns_;
  const absl::Time anchor_wall_;
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_COMMON_STEADY_WALL_CLOCK_H_
