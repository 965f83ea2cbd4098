#include "pac/concurrency/context.h"

#include <atomic>
#include <thread>

#include "gtest/gtest.h"
#include "pac/concurrency/clock.h"
#include "pac/concurrency/status.h"

namespace pac::concurrency {
namespace {

TEST(ContextTest, BackgroundIsNeverDone) {
  Context ctx = Context::Background();
  EXPECT_TRUE(ctx.Err().ok());
  EXPECT_EQ(ctx.deadline(), absl::InfiniteFuture());
}

TEST(ContextTest, DeadlinePassesAndNamesItself) {
  Context ctx =
      Context::WithTimeout(Context::Background(), absl::Milliseconds(500));
  EXPECT_TRUE(ctx.Err().ok());
  absl::SleepFor(absl::Milliseconds(600));
  EXPECT_TRUE(absl::IsDeadlineExceeded(ctx.Err()));
}

TEST(ContextTest, ChildTakesEarlierDeadline) {
  absl::Time soon = absl::Now() + absl::Seconds(1);
  Context parent = Context::WithDeadline(Context::Background(), soon);
  Context child = Context::WithDeadline(parent, soon + absl::Hours(1));
  EXPECT_EQ(child.deadline(), soon);
  Context tighter =
      Context::WithDeadline(parent, soon - absl::Milliseconds(500));
  EXPECT_EQ(tighter.deadline(), soon - absl::Milliseconds(500));
}

TEST(ContextTest, CancelPropagatesToChildrenAndCallbacks) {
  auto [parent, cancel] = Context::WithCancel(Context::Background());
  Context child = Context::WithTimeout(parent, absl::Hours(1));
  std::atomic<int> calls{0};
  child.AddCancelCallback([&] { ++calls; });
  int64_t removed = child.AddCancelCallback([&] { calls += 100; });
  child.RemoveCancelCallback(removed);
  cancel.Cancel();
  cancel.Cancel();  // no-op
  EXPECT_TRUE(absl::IsCancelled(parent.Err()));
  EXPECT_TRUE(absl::IsCancelled(child.Err()));
  EXPECT_EQ(calls.load(), 1);
  // A callback added after cancellation runs at once.
  child.AddCancelCallback([&] { ++calls; });
  EXPECT_EQ(calls.load(), 2);
}

TEST(ContextTest, CancelFromAnotherThread) {
  auto [ctx, cancel] = Context::WithCancel(Context::Background());
  std::thread t([c = cancel] { c.Cancel(); });
  t.join();
  EXPECT_TRUE(ctx.Done());
}

TEST(ManualClockTest, AdvanceMovesTimeAndCallsListeners) {
  ManualClock clock(absl::FromUnixSeconds(100));
  int calls = 0;
  int id = clock.AddAdvanceListener([&] { ++calls; });
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(105));
  clock.RemoveAdvanceListener(id);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(calls, 1);
}

TEST(StatusTest, LeaseLostIsDistinct) {
  absl::Status lost = LeaseLostError("gone");
  EXPECT_TRUE(IsLeaseLost(lost));
  EXPECT_FALSE(IsLeaseLost(absl::FailedPreconditionError("closed")));
  EXPECT_FALSE(IsRetryable(lost));
  EXPECT_TRUE(IsRetryable(absl::UnavailableError("down")));
}

}  // namespace
}  // namespace pac::concurrency
