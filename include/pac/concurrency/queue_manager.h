// QueueManager: the queue operations of the specification, over a Driver.
//
// It keeps no queue of its own: the queue lives in the driver, so every
// process sharing a backend sees the same one. Thread-safe; it does not own
// the driver, which must outlive it.
#ifndef PAC_CONCURRENCY_QUEUE_MANAGER_H_
#define PAC_CONCURRENCY_QUEUE_MANAGER_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/context.h"
#include "pac/concurrency/driver.h"
#include "pac/concurrency/repository.h"

namespace pac::concurrency {

// A PipelineRun as seen in the cluster, for InitQueues.
struct PipelineRunRecord {
  std::string key;             // "ns/name"
  std::string repository_key;  // "ns/repo"
  std::string state;           // "started" (running) or "queued"
  absl::Time creation_time;
};

// Told of every lease a QueueManager call granted and of every run it
// released, so that the Manager can keep granted leases alive.
struct LeaseObserver {
  // A lease granted to the caller of a QueueManager call.
  std::function<void(const Lease&)> on_granted;
  // A lease granted to another run, admitted from the queue by a call
  // (a release, a raised limit). Unset: on_granted is told.
  std::function<void(const Lease&)> on_admitted;
  std::function<void(std::string_view repo_key, std::string_view run_key)>
      on_released;
};

class QueueManager {
 public:
  QueueManager(Driver* driver, std::shared_ptr<spdlog::logger> logger,
               LeaseObserver observer = {});

  // Rebuilds the backend's queues from the cluster's view: runs "started"
  // are recorded as running (even above the limit: nobody is evicted), runs
  // "queued" are queued by creation time. Repositories set their limits.
  [[nodiscard]] absl::Status InitQueues(
      const Context& ctx, const std::vector<Repository>& repositories,
      const std::vector<PipelineRunRecord>& runs);

  // Removes every lease, queue entry and state of the repository.
  [[nodiscard]] absl::Status RemoveRepository(const Context& ctx,
                                              const Repository& repo);

  // Queued runs in admission order / running runs, as keys.
  [[nodiscard]] absl::StatusOr<std::vector<std::string>> QueuedPipelineRuns(
      const Context& ctx, const Repository& repo);
  [[nodiscard]] absl::StatusOr<std::vector<std::string>> RunningPipelineRuns(
      const Context& ctx, const Repository& repo);

  // Queues each run (in the given order, by creation time when given) and
  // admits as many as the limit allows, oldest first. Returns the keys of
  // the runs of `runs` that hold a slot afterwards.
  [[nodiscard]] absl::StatusOr<std::vector<std::string>> AddListToRunningQueue(
      const Context& ctx, const Repository& repo,
      const std::vector<std::string>& runs);

  // Queues the runs. If slots are free they are admitted at once, since a
  // free slot never waits (the admitted keys are returned).
  [[nodiscard]] absl::StatusOr<std::vector<std::string>> AddToPendingQueue(
      const Context& ctx, const Repository& repo,
      const std::vector<std::string>& runs,
      std::optional<absl::Time> creation_time = std::nullopt);

  // Removes the run whether it runs or waits. True if anything was removed.
  // A freed slot goes to the head of the queue.
  [[nodiscard]] absl::StatusOr<bool> RemoveFromQueue(const Context& ctx,
                                                     std::string_view repo_key,
                                                     std::string_view run_key);

  // Releases a finished run and returns the runs admitted in its place.
  [[nodiscard]] absl::StatusOr<std::vector<std::string>>
  RemoveAndTakeItemFromQueue(const Context& ctx, const Repository& repo,
                             std::string_view run_key);

  // Takes a slot if one is free and no older run waits; queues nothing.
  [[nodiscard]] absl::StatusOr<AcquireResult> TryAcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run_key);

  // Calls `callback` when a slot frees or a run is admitted.
  [[nodiscard]] absl::StatusOr<std::unique_ptr<WatchHandle>> SetupWatcher(
      const Context& ctx, const Repository& repo, WatchCallback callback);

 private:
  void Granted(const AcquireResult& result);
  void Granted(const std::vector<Lease>& leases);

  Driver* driver_;
  std::shared_ptr<spdlog::logger> logger_;
  LeaseObserver observer_;
};

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_QUEUE_MANAGER_H_
