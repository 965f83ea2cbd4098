// The specification's usage example, in C++: create a Manager from a
// DriverConfig, take a slot, queue runs past the limit, watch for freed
// slots, release, and see the queue admitted oldest first.
//
//   basic_usage [config.yaml]   (default: the memory driver)
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "pac/concurrency/concurrency.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

using pac::concurrency::Context;
using pac::concurrency::DriverConfig;
using pac::concurrency::Manager;
using pac::concurrency::MemoryConfig;
using pac::concurrency::Repository;
using pac::concurrency::WatchEvent;

int main(int argc, char** argv) {
  auto logger = spdlog::stdout_color_mt("pac");
  logger->set_level(spdlog::level::info);

  // Configure the driver.
  DriverConfig config;
  if (argc > 1) {
    auto loaded = pac::concurrency::LoadConfigFromYamlFile(argv[1]);
    if (!loaded.ok()) {
      logger->error("bad config: {}", loaded.status().ToString());
      return 2;
    }
    config = *loaded;
  } else {
    config.driver = "memory";
    config.memory = MemoryConfig{absl::Minutes(30)};
  }

  // Create the manager.
  auto manager = Manager::NewManager(config, logger);
  if (!manager.ok()) {
    logger->critical("failed to create manager: {}",
                     manager.status().ToString());
    return 1;
  }

  // A repository with a concurrency limit of 2.
  Repository repo{"namespace", "repo", 2};
  Context ctx = Context::WithTimeout(Context::Background(), absl::Seconds(30));

  auto first = (*manager)->AcquireSlot(ctx, repo, "namespace/pipeline-run-1");
  if (!first.ok()) {
    logger->error("failed to acquire slot: {}", first.status().ToString());
    return 1;
  }
  if (first->acquired) {
    logger->info("acquired slot with lease ID: {} (fencing token {})",
                 first->lease.lease_id, first->lease.fencing_token);
  }

  // Using the queue manager: try to start three more runs.
  auto& queue_manager = (*manager)->GetQueueManager();
  std::vector<std::string> pipeline_runs = {"namespace/pipeline-run-2",
                                            "namespace/pipeline-run-3",
                                            "namespace/pipeline-run-4"};
  auto acquired = queue_manager.AddListToRunningQueue(ctx, repo, pipeline_runs);
  if (!acquired.ok()) {
    logger->error("failed to add to running queue: {}",
                  acquired.status().ToString());
    return 1;
  }
  logger->info("acquired {} slots out of {} pipeline runs", acquired->size(),
               pipeline_runs.size());
  logger->info(
      "currently running: [{}]",
      absl::StrJoin(*queue_manager.RunningPipelineRuns(ctx, repo), ", "));
  logger->info(
      "queued: [{}]",
      absl::StrJoin(*queue_manager.QueuedPipelineRuns(ctx, repo), ", "));

  // Set up a watcher for slot availability.
  auto watch = queue_manager.SetupWatcher(ctx, repo, [&](const WatchEvent& e) {
    logger->info("watch: slot event for {} ({}), triggering reconciliation",
                 e.repository_key, e.pipeline_run_key);
  });
  if (!watch.ok()) {
    logger->error("failed to watch: {}", watch.status().ToString());
    return 1;
  }

  // Run 1 finishes: the oldest queued run takes its slot in the same step.
  auto next = queue_manager.RemoveAndTakeItemFromQueue(
      ctx, repo, "namespace/pipeline-run-1");
  if (!next.ok()) {
    logger->error("failed to release: {}", next.status().ToString());
    return 1;
  }
  logger->info("pipeline-run-1 finished; admitted in its place: [{}]",
               absl::StrJoin(*next, ", "));
  logger->info(
      "currently running: [{}]",
      absl::StrJoin(*queue_manager.RunningPipelineRuns(ctx, repo), ", "));
  logger->info(
      "queued: [{}]",
      absl::StrJoin(*queue_manager.QueuedPipelineRuns(ctx, repo), ", "));

  absl::SleepFor(absl::Milliseconds(50));  // let the watcher print
  (*watch)->Stop();
  if (auto s = queue_manager.RemoveRepository(ctx, repo); !s.ok()) {
    logger->error("cleanup failed: {}", s.ToString());
    return 1;
  }
  logger->info("repository cleaned up; closing");
  return (*manager)->Close().ok() ? 0 : 1;
}
