// Injectable time source. Drivers and the Manager read time only through a
// Clock, so tests of TTLs advance a ManualClock instead of sleeping.
#ifndef PAC_CONCURRENCY_CLOCK_H_
#define PAC_CONCURRENCY_CLOCK_H_

#include <functional>
#include <map>
#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace pac::concurrency {

// Thread-safe: every method may be called from any thread.
class Clock {
 public:
  virtual ~Clock() = default;

  // The current time.
  [[nodiscard]] virtual absl::Time Now() const = 0;

  // Registers `fn`, called (on the advancing thread, with no lock of the
  // clock held) whenever the clock jumps forward. A real clock never jumps,
  // so it never calls `fn`. Returns an id for RemoveAdvanceListener.
  virtual int AddAdvanceListener(std::function<void()> fn) {
    (void)fn;
    return 0;
  }
  virtual void RemoveAdvanceListener(int id) { (void)id; }

  // The process-wide real clock: the system clock as read at its first use,
  // advanced by CLOCK_MONOTONIC since. A step of the system clock does not
  // move it (leases expire after their TTL, not earlier or later); times it
  // reports may then differ from absl::Now() by that step until the process
  // restarts. Never null, never deleted.
  [[nodiscard]] static Clock* Real();
};

// A clock that only moves when told. For tests.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000))
      : now_(start) {}

  absl::Time Now() const override;
  int AddAdvanceListener(std::function<void()> fn) override;
  void RemoveAdvanceListener(int id) override;

  // Moves the clock forward by `d` (>= 0) and calls the listeners.
  void Advance(absl::Duration d);

 private:
  mutable std::mutex mu_;
  std::mutex call_mu_;  // held while listeners run; Remove waits for it
  absl::Time now_;
  int next_id_ = 1;
  std::map<int, std::function<void()>> listeners_;
};

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_CLOCK_H_
