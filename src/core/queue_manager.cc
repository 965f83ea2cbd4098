#include "pac/concurrency/queue_manager.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "src/common/logging.h"
#include "src/common/strings.h"

namespace pac::concurrency {

QueueManager::QueueManager(Driver* driver,
                           std::shared_ptr<spdlog::logger> logger,
                           LeaseObserver observer)
    : driver_(driver),
      logger_(internal::OrNullLogger(std::move(logger))),
      observer_(std::move(observer)) {}

void QueueManager::Granted(const AcquireResult& result) {
  if (result.acquired && observer_.on_granted) {
    observer_.on_granted(result.lease);
  }
  Granted(result.admitted);
}

void QueueManager::Granted(const std::vector<Lease>& admitted) {
  const auto& tell =
      observer_.on_admitted ? observer_.on_admitted : observer_.on_granted;
  if (!tell) return;
  for (const Lease& l : admitted) tell(l);
}

absl::Status QueueManager::InitQueues(
    const Context& ctx, const std::vector<Repository>& repositories,
    const std::vector<PipelineRunRecord>& runs) {
  // Check everything before writing anything.
  for (const Repository& repo : repositories) {
    if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  }
  for (const PipelineRunRecord& run : runs) {
    if (absl::Status s = ValidateKey(run.key, "pipeline_run"); !s.ok())
      return s;
    if (absl::Status s = ValidateKey(run.repository_key, "repository");
        !s.ok()) {
      return s;
    }
    if (run.state != "started" && run.state != "queued") {
      return absl::InvalidArgumentError(
          internal::Cat("pipeline_run ", run.key,
                        ": state must be started or "
                        "queued, got \"",
                        run.state, "\""));
    }
  }
  std::map<std::string, Repository> by_key;
  for (const Repository& repo : repositories) by_key[repo.Key()] = repo;
  for (const PipelineRunRecord& run : runs) {
    if (!by_key.count(run.repository_key)) {
      auto repo = Repository::FromKey(run.repository_key);
      if (!repo.ok()) return repo.status();
      by_key[run.repository_key] = *repo;
    }
  }
  // Running runs first, so queued ones never take their slots; queued runs
  // in creation order.
  std::vector<PipelineRunRecord> ordered = runs;
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const PipelineRunRecord& a, const PipelineRunRecord& b) {
                     if ((a.state == "started") != (b.state == "started")) {
                       return a.state == "started";
                     }
                     return a.creation_time < b.creation_time;
                   });
  for (const PipelineRunRecord& run : ordered) {
    AcquireOptions options;
    options.creation_time = run.creation_time;
    options.adopt_running = run.state == "started";
    auto result =
        driver_->AcquireSlot(ctx, by_key[run.repository_key], run.key, options);
    if (!result.ok()) return result.status();
    Granted(*result);
  }
  for (const auto& [key, repo] : by_key) {
    auto admitted = driver_->SetRepositoryLimit(ctx, repo);
    if (!admitted.ok()) return admitted.status();
    Granted(*admitted);
  }
  logger_->info("queues initialised: {} repositories, {} pipeline runs",
                by_key.size(), runs.size());
  return absl::OkStatus();
}

absl::Status QueueManager::RemoveRepository(const Context& ctx,
                                            const Repository& repo) {
  const std::string repo_key = repo.Key();
  absl::Status s = driver_->CleanupRepository(ctx, repo_key);
  // An empty run key stands for every run of the repository.
  if (s.ok() && observer_.on_released) observer_.on_released(repo_key, "");
  return s;
}

absl::StatusOr<std::vector<std::string>> QueueManager::QueuedPipelineRuns(
    const Context& ctx, const Repository& repo) {
  auto entries = driver_->GetQueuedPipelineRuns(ctx, repo.Key());
  if (!entries.ok()) return entries.status();
  std::vector<std::string> out;
  out.reserve(entries->size());
  for (auto& e : *entries) out.push_back(std::move(e.pipeline_run_key));
  return out;
}

absl::StatusOr<std::vector<std::string>> QueueManager::RunningPipelineRuns(
    const Context& ctx, const Repository& repo) {
  auto leases = driver_->GetRunningPipelineRuns(ctx, repo.Key());
  if (!leases.ok()) return leases.status();
  std::vector<std::string> out;
  out.reserve(leases->size());
  for (auto& l : *leases) out.push_back(std::move(l.pipeline_run_key));
  return out;
}

absl::StatusOr<std::vector<std::string>> QueueManager::AddListToRunningQueue(
    const Context& ctx, const Repository& repo,
    const std::vector<std::string>& runs) {
  for (const std::string& run : runs) {
    if (absl::Status s = ValidateKey(run, "pipeline_run"); !s.ok()) return s;
  }
  std::vector<std::string> acquired;
  for (const std::string& run : runs) {
    auto result = driver_->AcquireSlot(ctx, repo, run);
    if (!result.ok()) return result.status();
    Granted(*result);
    if (result->acquired) acquired.push_back(run);
    // A run of this list admitted by an earlier call's promotion.
    for (const Lease& l : result->admitted) {
      if (std::find(runs.begin(), runs.end(), l.pipeline_run_key) !=
              runs.end() &&
          std::find(acquired.begin(), acquired.end(), l.pipeline_run_key) ==
              acquired.end()) {
        acquired.push_back(l.pipeline_run_key);
      }
    }
  }
  return acquired;
}

absl::StatusOr<std::vector<std::string>> QueueManager::AddToPendingQueue(
    const Context& ctx, const Repository& repo,
    const std::vector<std::string>& runs,
    std::optional<absl::Time> creation_time) {
  for (const std::string& run : runs) {
    if (absl::Status s = ValidateKey(run, "pipeline_run"); !s.ok()) return s;
  }
  std::vector<std::string> admitted;
  for (const std::string& run : runs) {
    AcquireOptions options;
    options.creation_time = creation_time;
    auto result = driver_->AcquireSlot(ctx, repo, run, options);
    if (!result.ok()) return result.status();
    Granted(*result);
    if (result->acquired) admitted.push_back(run);
  }
  return admitted;
}

absl::StatusOr<bool> QueueManager::RemoveFromQueue(const Context& ctx,
                                                   std::string_view repo_key,
                                                   std::string_view run_key) {
  auto result = driver_->ReleaseSlot(ctx, "", run_key, repo_key);
  if (!result.ok()) return result.status();
  if (observer_.on_released) observer_.on_released(repo_key, run_key);
  Granted(result->admitted);
  return result->released || result->dequeued;
}

absl::StatusOr<std::vector<std::string>>
QueueManager::RemoveAndTakeItemFromQueue(const Context& ctx,
                                         const Repository& repo,
                                         std::string_view run_key) {
  const std::string repo_key = repo.Key();
  auto result = driver_->ReleaseSlot(ctx, "", run_key, repo_key);
  if (!result.ok()) return result.status();
  if (observer_.on_released) observer_.on_released(repo_key, run_key);
  Granted(result->admitted);
  std::vector<std::string> out;
  for (const Lease& l : result->admitted) out.push_back(l.pipeline_run_key);
  return out;
}

absl::StatusOr<AcquireResult> QueueManager::TryAcquireSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key) {
  AcquireOptions options;
  options.enqueue = false;
  auto result = driver_->AcquireSlot(ctx, repo, run_key, options);
  if (result.ok()) Granted(*result);
  return result;
}

absl::StatusOr<std::unique_ptr<WatchHandle>> QueueManager::SetupWatcher(
    const Context& ctx, const Repository& repo, WatchCallback callback) {
  return driver_->WatchSlotAvailability(ctx, repo.Key(), std::move(callback));
}

}  // namespace pac::concurrency
