// A std::mutex with Clang thread-safety annotations, so members can be
// declared PAC_GUARDED_BY(mu_) and -Wthread-safety checks them. It is a plain
// pthread mutex underneath, which ThreadSanitizer understands.
#ifndef PAC_SRC_COMMON_MUTEX_H_
#define PAC_SRC_COMMON_MUTEX_H_

#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "pac/concurrency/context.h"

#define PAC_GUARDED_BY(x) ABSL_GUARDED_BY(x)
#define PAC_REQUIRES(...) ABSL_EXCLUSIVE_LOCKS_REQUIRED(__VA_ARGS__)
#define PAC_EXCLUDES(...) ABSL_LOCKS_EXCLUDED(__VA_ARGS__)

namespace pac::concurrency::internal {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  std::mutex& native() { return mu_; }
  // Tells the analysis the caller holds this mutex, where it cannot follow
  // (a set of locks taken in a loop). Checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  std::mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* mu_;
};

// Condition variable for Mutex. The caller holds `mu` (annotated).
class CondVar {
 public:
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->native(), std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }
  // Waits until notified or the real-time `deadline`. True if it timed out.
  bool WaitUntil(Mutex* mu, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->native(), std::adopt_lock);
    bool timed_out = false;
    if (deadline == absl::InfiniteFuture()) {
      cv_.wait(lock);
    } else {
      timed_out = cv_.wait_until(lock, absl::ToChronoTime(deadline)) ==
                  std::cv_status::timeout;
    }
    lock.release();
    return timed_out;
  }
  void NotifyOne() { cv_.notify_one(); }
  void NotifyAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

// While alive, cancelling `ctx` wakes the waiters of `cv` (which wait with
// `mu` held, until ctx.deadline()). Create it before taking `mu`, and let it
// go after releasing `mu`: the callback takes `mu`, and runs at once if
// `ctx` is already cancelled.
class WakeOnCancel {
 public:
  WakeOnCancel(const Context& ctx, Mutex* mu, CondVar* cv)
      : ctx_(ctx), id_(ctx.AddCancelCallback([mu, cv] {
          MutexLock lock(mu);
          cv->NotifyAll();
        })) {}
  ~WakeOnCancel() { ctx_.RemoveCancelCallback(id_); }
  WakeOnCancel(const WakeOnCancel&) = delete;
  WakeOnCancel& operator=(const WakeOnCancel&) = delete;

 private:
  const Context& ctx_;
  const int64_t id_;
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_COMMON_MUTEX_H_
