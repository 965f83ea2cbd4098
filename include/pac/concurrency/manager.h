// Manager: the entry point (the specification's NewManager). It owns a
// driver and a QueueManager, delegates to them, and keeps alive the leases
// its callers hold (rule 10) until they are released or the Manager closes.
//
// Who owns a lease: the holder of its run. The Manager renews the leases
// its callers acquired (AcquireSlot, WaitForSlot), the runs the
// QueueManager's calls grant or hand to their caller (which starts them),
// leases given to TrackLease, and the lease of a run admitted from the
// queue (by a release or a raised limit of this Manager) only while a
// WaitForSlot of this Manager waits for that run. Any other admitted run
// belongs to its own waiter (another process, a controller that re-submits
// when a watch tells it): if nobody picks its lease up and renews it, it
// expires after one TTL and the slot passes on (rule 9). So a waiter that
// died or gave up holds a slot for one TTL at most.
//
// Thread-safe. Destroying the Manager closes it.
#ifndef PAC_CONCURRENCY_MANAGER_H_
#define PAC_CONCURRENCY_MANAGER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/config.h"
#include "pac/concurrency/context.h"
#include "pac/concurrency/driver.h"
#include "pac/concurrency/queue_manager.h"
#include "pac/concurrency/repository.h"

namespace pac::concurrency {

struct ManagerOptions {
  Clock* clock = nullptr;  // null: Clock::Real(); must outlive the Manager
  // Renew a tracked lease when less than this fraction of the TTL is left.
  double renew_when_remaining = 2.0 / 3.0;
  // Called (on the renewal thread) when a tracked lease is lost: it expired
  // before it could be renewed, or another process released it.
  std::function<void(const Lease&, const absl::Status&)> on_lease_lost;
  // Passed to the driver.
  bool background_cleanup = true;
};

class Manager {
 public:
  // Validates `config`, creates its driver and starts lease renewal.
  // `logger` may be null (logs are dropped).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Manager>> NewManager(
      const DriverConfig& config, std::shared_ptr<spdlog::logger> logger,
      ManagerOptions options = {});

  // Takes ownership of an existing driver (for tests and custom drivers).
  [[nodiscard]] static std::unique_ptr<Manager> FromDriver(
      std::unique_ptr<Driver> driver, std::shared_ptr<spdlog::logger> logger,
      ManagerOptions options = {});

  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  // As Driver::AcquireSlot; a granted lease is renewed by this Manager.
  [[nodiscard]] absl::StatusOr<AcquireResult> AcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key,
      const AcquireOptions& options = {});

  // Waits in the queue until `run_key` is admitted, the context ends or the
  // driver fails. On any error the queue entry (or a slot granted
  // meanwhile) is withdrawn, best effort (rule 14). `on_position`
  // (optional) is told the queue position whenever it is re-read.
  [[nodiscard]] absl::StatusOr<Lease> WaitForSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key,
      const AcquireOptions& options = {},
      const std::function<void(int64_t)>& on_position = nullptr);

  // As Driver::ReleaseSlot; stops renewing the lease. Runs admitted in its
  // place are renewed here only if a WaitForSlot of this Manager waits for
  // them (see the top of this file).
  [[nodiscard]] absl::StatusOr<ReleaseResult> ReleaseSlot(
      const Context& ctx, std::string_view lease_id, std::string_view run_key,
      std::string_view repo_key);

  // Starts / stops renewing a lease granted elsewhere (e.g. a promotion
  // announced through a watch).
  void TrackLease(const Lease& lease);
  void UntrackLease(std::string_view lease_id);
  [[nodiscard]] size_t TrackedLeaseCount() const;

  [[nodiscard]] QueueManager& GetQueueManager();
  [[nodiscard]] Driver& GetDriver();
  [[nodiscard]] std::string_view GetDriverType() const;

  // Stops renewal and closes the driver. Idempotent.
  absl::Status Close();

 private:
  Manager(std::unique_ptr<Driver> driver,
          std::shared_ptr<spdlog::logger> logger, ManagerOptions options);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_MANAGER_H_
