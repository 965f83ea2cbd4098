// The conformance suite: one test (at least) per rule of docs/contract.md
// (RuleNN_ names the rule), written once and instantiated for every driver:
//
//   INSTANTIATE_TEST_SUITE_P(Memory, DriverConformanceTest,
//                            testing::Values(MemoryFactory()),
//                            [](const auto& info) { return info.param.name; });
//
// Each test uses repositories with a fresh random namespace, so drivers on a
// shared backend (PostgreSQL, etcd) need no wipe between tests.
#ifndef PAC_TESTS_CONFORMANCE_DRIVER_CONFORMANCE_H_
#define PAC_TESTS_CONFORMANCE_DRIVER_CONFORMANCE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"

namespace pac::concurrency::conformance {

// Collects watch events; thread-safe. The log must outlive the watch.
class EventLog {
 public:
  WatchCallback Callback();
  // Whether an event of `type` (for `run`, unless empty) has arrived.
  bool Has(WatchEventType type, const std::string& run = "");
  // Has(), waiting up to 10 s for it.
  bool Await(WatchEventType type, const std::string& run = "");
  size_t size();

 private:
  bool HasLocked(WatchEventType type, const std::string& run) const;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<WatchEvent> events_;
};

struct ConformanceEnv {
  Clock* clock = nullptr;  // a ManualClock when the driver supports one
  absl::Duration lease_ttl;
  bool background_cleanup = true;
};

struct DriverFactory {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<Driver>>(const ConformanceEnv&)>
      make;
  // True if the driver judges expiry by DriverOptions::clock, so tests
  // advance a ManualClock; false: tests use `real_ttl` and sleep past it.
  bool manual_clock = true;
  absl::Duration real_ttl = absl::Seconds(2);
  // Upper bound a test waits for a watcher callback or a background step.
  absl::Duration patience = absl::Seconds(10);
};

// gtest names a failed case's parameter by this, not by its bytes.
inline void PrintTo(const DriverFactory& f, std::ostream* os) { *os << f.name; }

class DriverConformanceTest : public ::testing::TestWithParam<DriverFactory> {
 protected:
  void SetUp() override;
  void TearDown() override;

  // A new driver on the same backend (another "process").
  std::unique_ptr<Driver> MakeDriver(bool background_cleanup = true);
  // A repository with a namespace unique to this test.
  Repository Repo(const std::string& name, int32_t limit);
  std::string Run(const std::string& name) const;
  // Moves time past the lease TTL (a ManualClock jump or a real sleep).
  void Advance(absl::Duration d);
  void PassTTL();
  absl::Duration ttl() const { return ttl_; }
  // A queue time limit a test waits past (a manual clock jumps, a real one
  // is slept through), and the wait past `times` of it: twice is shorter
  // than the lease TTL.
  absl::Duration QueueLimit() const;
  void PassQueueLimit(int times = 1);
  // The runs `d` shows queued in `repo`, in order.
  std::vector<std::string> QueuedRuns(Driver* d, const Repository& repo);
  // Polls `pred` until it is true or the factory's patience runs out.
  bool Eventually(const std::function<bool()>& pred);

  const DriverFactory& factory() const { return GetParam(); }

  // Shared limits (driver_conformance_shared.cc). A limit name unique to
  // this test.
  std::string SharedName(const std::string& what) const;
  // Sets the limit through driver_; false, having checked that the driver
  // says Unimplemented and writes nothing, when it has no shared limits.
  bool SetShared(const std::string& name, int32_t limit);
  void JoinShared(const Repository& repo, std::vector<std::string> names);
  std::optional<SharedLimitStatus> SharedStatus(Driver* d,
                                                const std::string& name);
  std::vector<std::string> RunningRuns(Driver* d, const Repository& repo);
  Lease MustAcquire(const Repository& repo, const std::string& run);
  int64_t MustQueue(const Repository& repo, const std::string& run);

  std::unique_ptr<ManualClock> manual_clock_;
  Clock* clock_ = nullptr;
  absl::Duration ttl_;
  std::string ns_;
  std::unique_ptr<Driver> driver_;
  Context ctx_ = Context::Background();
};

// The kRemoved events of a watch, with their reasons; thread-safe.
class RemovedLog {
 public:
  WatchCallback Callback() {
    return [this](const WatchEvent& e) {
      if (e.type != WatchEventType::kRemoved) return;
      std::lock_guard<std::mutex> lock(mu_);
      runs_.push_back(e.pipeline_run_key + " " + e.reason);
    };
  }
  std::vector<std::string> runs() {
    std::lock_guard<std::mutex> lock(mu_);
    return runs_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> runs_;
};

// The counters of a race test: how many runs held a slot at once, at
// most, and how many calls failed. Thread-safe.
struct RaceCounters {
  std::atomic<int> holding{0};
  std::atomic<int> most{0};
  std::atomic<int> errors{0};
  // Counts a holder for `hold`, then releases `lease_id` through `d`.
  void HoldAndRelease(Driver* d, const Context& ctx,
                      const std::string& lease_id,
                      std::chrono::milliseconds hold);
};

// Submits `run` through `d` every 2 ms, as a waiting client re-submits,
// until it is admitted (then held for `hold` and released: kAdmitted) or
// refused as removed (kRemoved); any other failure counts in c->errors
// (kFailed).
enum class RaceOutcome { kAdmitted, kRemoved, kFailed };
RaceOutcome AdmitHoldRelease(Driver* d, const Context& ctx,
                             const Repository& repo, const std::string& run,
                             const AcquireOptions& options,
                             std::chrono::milliseconds hold, RaceCounters* c);

// The runs of `leases` or `entries`, in their order.
std::vector<std::string> RunKeys(const std::vector<Lease>& leases);
std::vector<std::string> RunKeys(const std::vector<QueueEntry>& entries);

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_DRIVER_CONFORMANCE_H_
