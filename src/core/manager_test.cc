#include "pac/concurrency/manager.h"

#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace pac::concurrency {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::shared_ptr<spdlog::logger> CaptureLogger(std::ostringstream& out) {
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  auto logger = std::make_shared<spdlog::logger>("test", sink);
  logger->set_level(spdlog::level::trace);
  return logger;
}

TEST(ManagerTest, NewManagerRejectsBadConfig) {
  DriverConfig config;
  config.driver = "nosuch";
  auto m = Manager::NewManager(config, nullptr);
  ASSERT_FALSE(m.ok());
  EXPECT_TRUE(absl::IsInvalidArgument(m.status()));
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("concurrency-driver"));
}

TEST(ManagerTest, SpecUsageExampleOnMemory) {
  std::ostringstream logs;
  DriverConfig config;
  config.driver = "memory";
  config.memory = MemoryConfig{absl::Minutes(1)};
  auto manager = Manager::NewManager(config, CaptureLogger(logs));
  ASSERT_TRUE(manager.ok()) << manager.status();
  EXPECT_EQ((*manager)->GetDriverType(), "memory");
  Repository repo{"namespace", "repo", 2};
  Context ctx = Context::Background();
  auto r = (*manager)->AcquireSlot(ctx, repo, "namespace/pipeline-run-1");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->acquired);
  auto& qm = (*manager)->GetQueueManager();
  auto acquired = qm.AddListToRunningQueue(
      ctx, repo, {"namespace/pipeline-run-2", "namespace/pipeline-run-3"});
  ASSERT_TRUE(acquired.ok());
  EXPECT_EQ(acquired->size(), 1u);
  EXPECT_EQ(*qm.QueuedPipelineRuns(ctx, repo),
            std::vector<std::string>{"namespace/pipeline-run-3"});
  auto rel = (*manager)->ReleaseSlot(ctx, r->lease.lease_id,
                                     "namespace/pipeline-run-1", repo.Key());
  ASSERT_TRUE(rel.ok());
  ASSERT_EQ(rel->admitted.size(), 1u);
  EXPECT_EQ(rel->admitted[0].pipeline_run_key, "namespace/pipeline-run-3");
  EXPECT_TRUE((*manager)->Close().ok());
  // Monitoring: acquisition, limit reached and admission are logged.
  EXPECT_THAT(logs.str(), HasSubstr("slot acquired"));
  EXPECT_THAT(logs.str(), HasSubstr("concurrency limit 2"));
  EXPECT_THAT(logs.str(), HasSubstr("admitted namespace/pipeline-run-3"));
}

TEST(ManagerTest, SecretsNeverLogged) {
  std::ostringstream logs;
  DriverConfig config;
  config.driver = "postgresql";  // not built in this issue: fails to start
  config.postgresql = PostgreSQLConfig{};
  config.postgresql->password = "hunter2-do-not-log";
  auto m = Manager::NewManager(config, CaptureLogger(logs));
  EXPECT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), Not(HasSubstr("hunter2")));
  EXPECT_THAT(logs.str(), Not(HasSubstr("hunter2")));
  EXPECT_FALSE(logs.str().empty());  // the failure itself is logged
}

TEST(ManagerTest, QueueManagerGrantsAreKeptAlive) {
  ManualClock clock;
  ManagerOptions options;
  options.clock = &clock;
  DriverConfig config;
  auto manager = Manager::NewManager(config, nullptr, options);
  ASSERT_TRUE(manager.ok());
  auto& qm = (*manager)->GetQueueManager();
  Context ctx;
  Repository repo{"ns", "repo", 1};
  ASSERT_TRUE(qm.AddListToRunningQueue(ctx, repo, {"ns/a", "ns/b"}).ok());
  EXPECT_EQ((*manager)->TrackedLeaseCount(), 1u);
  auto next = qm.RemoveAndTakeItemFromQueue(ctx, repo, "ns/a");
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, std::vector<std::string>{"ns/b"});
  EXPECT_EQ((*manager)->TrackedLeaseCount(), 1u);  // b now, a untracked
  ASSERT_TRUE(qm.RemoveRepository(ctx, repo).ok());
  EXPECT_EQ((*manager)->TrackedLeaseCount(), 0u);
}

TEST(QueueManagerTest, InitQueuesRebuildsWithoutEvicting) {
  auto driver = NewMemoryDriver(MemoryConfig{});
  ASSERT_TRUE(driver.ok());
  QueueManager qm(driver->get(), nullptr);
  Context ctx;
  Repository repo{"ns", "repo", 1};
  absl::Time t0 = absl::FromUnixSeconds(1000);
  std::vector<PipelineRunRecord> runs = {
      {"ns/q2", "ns/repo", "queued", t0 + absl::Seconds(20)},
      {"ns/s1", "ns/repo", "started", t0},
      {"ns/s2", "ns/repo", "started", t0 + absl::Seconds(1)},
      {"ns/q1", "ns/repo", "queued", t0 + absl::Seconds(10)},
  };
  ASSERT_TRUE(qm.InitQueues(ctx, {repo}, runs).ok());
  EXPECT_EQ(*qm.RunningPipelineRuns(ctx, repo),
            (std::vector<std::string>{"ns/s1", "ns/s2"}));
  EXPECT_EQ(*qm.QueuedPipelineRuns(ctx, repo),
            (std::vector<std::string>{"ns/q1", "ns/q2"}));
  // Bad input anywhere writes nothing.
  Repository other{"ns", "other", 1};
  auto bad = qm.InitQueues(ctx, {other},
                           {{"ns/ok", "ns/other", "started", t0},
                            {"ns/bad", "ns/other", "finished", t0}});
  EXPECT_TRUE(absl::IsInvalidArgument(bad));
  EXPECT_TRUE(qm.RunningPipelineRuns(ctx, other)->empty());
}

}  // namespace
}  // namespace pac::concurrency
