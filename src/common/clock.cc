#include "pac/concurrency/clock.h"

#include <chrono>
#include <vector>

#include "src/common/steady_wall_clock.h"

namespace pac::concurrency {
namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The system clock at first use, advanced by std::chrono::steady_clock
// (CLOCK_MONOTONIC, one vDSO call; absl::Now() adds a cycle-clock
// calibration layer that costs more than the rest of an acquire). A step of
// the system clock does not move it: leases timed by it expire after their
// TTL, not earlier or later.
class RealClock final : public Clock {
 public:
  RealClock()
      : clock_(
            [] { return absl::FromChrono(std::chrono::system_clock::now()); },
            SteadyNanos) {}
  absl::Time Now() const override { return clock_.Now(); }

 private:
  const internal::SteadyWallClock clock_;
};

}  // namespace

Clock* Clock::Real() {
  static RealClock* const clock = new RealClock();
  return clock;
}

absl::Time ManualClock::Now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_;
}

int ManualClock::AddAdvanceListener(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  int id = next_id_++;
  listeners_.emplace(id, std::move(fn));
  return id;
}

void ManualClock::RemoveAdvanceListener(int id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    listeners_.erase(id);
  }
  // Wait for a running Advance, which may hold a copy of the listener.
  std::lock_guard<std::mutex> call_lock(call_mu_);
}

void ManualClock::Advance(absl::Duration d) {
  std::lock_guard<std::mutex> call_lock(call_mu_);
  std::vector<std::function<void()>> to_call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (d > absl::ZeroDuration()) now_ += d;
    for (auto& [id, fn] : listeners_) to_call.push_back(fn);
  }
  for (auto& fn : to_call) fn();
}

}  // namespace pac::concurrency
