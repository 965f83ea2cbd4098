// ElasticThreadPool: tasks that block (as a connection kept open does)
// never keep a later task waiting while the pool may grow; it never grows
// past its maximum; extra threads end once idle; shutdown runs what was
// queued.
#include "src/server/thread_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace pac::concurrency::server {
namespace {

// Waits (up to 10 s) until `done` holds.
template <typename F>
bool Eventually(F done) {
  for (int i = 0; i < 1000; ++i) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

// Enqueues `n` tasks that count themselves started, block until `release`
// is notified (as a connection kept open holds its thread), then count
// themselves finished if asked to.
void EnqueueBlocking(ElasticThreadPool& pool, int n, std::atomic<int>& started,
                     absl::Notification& release,
                     std::atomic<int>* finished = nullptr) {
  for (int i = 0; i < n; ++i) {
    pool.Enqueue([&started, &release, finished] {
      ++started;
      release.WaitForNotification();
      if (finished != nullptr) ++*finished;
    });
  }
}

TEST(ElasticThreadPoolTest, BlockedThreadsDoNotHoldBackNewTasks) {
  ElasticThreadPool pool({/*core=*/2, /*max=*/8, absl::Seconds(30)});
  EXPECT_EQ(pool.threads(), 2);
  absl::Notification release;
  std::atomic<int> started{0};
  // Six tasks that block: a fixed pool of two would run only two.
  EnqueueBlocking(pool, 6, started, release);
  EXPECT_TRUE(Eventually([&] { return started == 6; })) << started;
  EXPECT_EQ(pool.threads(), 6);
  EXPECT_EQ(pool.busy(), 6);
  release.Notify();
  EXPECT_TRUE(Eventually([&] { return pool.busy() == 0; }));
}

TEST(ElasticThreadPoolTest, NeverMoreThreadsThanTheMaximum) {
  ElasticThreadPool pool({/*core=*/1, /*max=*/3, absl::Seconds(30)});
  absl::Notification release;
  std::atomic<int> started{0}, finished{0};
  EnqueueBlocking(pool, 7, started, release, &finished);
  ASSERT_TRUE(Eventually([&] { return started == 3; }));
  // The other four wait for a thread rather than get one of their own.
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(started, 3);
  EXPECT_EQ(pool.threads(), 3);
  release.Notify();
  EXPECT_TRUE(Eventually([&] { return finished == 7; })) << finished;
  EXPECT_LE(pool.threads(), 3);
}

TEST(ElasticThreadPoolTest, ExtraThreadsEndOnceIdleAndCoreThreadsStay) {
  ElasticThreadPool pool({/*core=*/2, /*max=*/16, absl::Milliseconds(50)});
  for (int round = 0; round < 2; ++round) {
    absl::Notification release;
    std::atomic<int> started{0};
    EnqueueBlocking(pool, 10, started, release);
    ASSERT_TRUE(Eventually([&] { return started == 10; }));
    EXPECT_EQ(pool.threads(), 10);
    release.Notify();
    EXPECT_TRUE(Eventually([&] { return pool.threads() == 2; }))
        << pool.threads();
  }
  // The two left still run tasks.
  std::atomic<int> ran{0};
  for (int i = 0; i < 20; ++i) pool.Enqueue([&] { ++ran; });
  EXPECT_TRUE(Eventually([&] { return ran == 20; }));
}

TEST(ElasticThreadPoolTest, ShutdownRunsTheQueuedTasksAndJoins) {
  std::atomic<int> ran{0};
  absl::Notification release;
  {
    ElasticThreadPool pool({/*core=*/1, /*max=*/1, absl::Seconds(30)});
    pool.Enqueue([&] { release.WaitForNotification(); });
    for (int i = 0; i < 5; ++i) pool.Enqueue([&] { ++ran; });
    EXPECT_EQ(ran, 0);  // one thread, blocked
    release.Notify();
    pool.Shutdown();
    EXPECT_EQ(ran, 5);
    pool.Enqueue([&] { ++ran; });  // after shutdown: dropped
  }
  EXPECT_EQ(ran, 5);
}

// Many threads enqueue at once while threads start and end: every task
// runs exactly once (run under TSan with the threaded tests).
TEST(ElasticThreadPoolTest, ConcurrentEnqueuesRunEveryTaskOnce) {
  ElasticThreadPool pool({/*core=*/2, /*max=*/6, absl::Milliseconds(1)});
  std::atomic<int> ran{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < 4; ++p) {
    producers.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        pool.Enqueue([&] { ++ran; });
        if (i % 50 == 0) absl::SleepFor(absl::Milliseconds(2));
      }
    });
  }
  for (auto& t : producers) t.join();
  EXPECT_TRUE(Eventually([&] { return ran == 2000; })) << ran;
  EXPECT_LE(pool.threads(), 6);
}

}  // namespace
}  // namespace pac::concurrency::server
