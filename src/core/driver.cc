#include "pac/concurrency/driver.h"

namespace pac::concurrency {

absl::StatusOr<RepositorySnapshot> Driver::GetRepositorySnapshot(
    const Context& ctx, std::string_view repo_key) {
  RepositorySnapshot out;
  auto limit = GetRepositoryLimit(ctx, repo_key);
  if (!limit.ok()) return limit.status();
  out.limit = *limit;
  auto running = GetRunningPipelineRuns(ctx, repo_key);
  if (!running.ok()) return running.status();
  out.running = *std::move(running);
  auto queued = GetQueuedPipelineRuns(ctx, repo_key);
  if (!queued.ok()) return queued.status();
  out.queued = *std::move(queued);
  return out;
}

}  // namespace pac::concurrency
