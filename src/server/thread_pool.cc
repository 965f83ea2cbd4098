#include "src/server/thread_pool.h"

#include <algorithm>
#include <utility>

namespace pac::concurrency::server {

using internal::MutexLock;

ElasticThreadPool::ElasticThreadPool(Options options)
    : options_([&] {
        options.core = std::max(1, options.core);
        options.max = std::max(options.core, options.max);
        return options;
      }()) {
  MutexLock lock(&mu_);
  for (int i = 0; i < options_.core; ++i) StartThreadLocked();
}

ElasticThreadPool::~ElasticThreadPool() { Shutdown(); }

void ElasticThreadPool::StartThreadLocked() {
  // The new thread waits for mu_ before it looks at its handle.
  Handle self = threads_.emplace(threads_.end());
  ++pending_;
  *self = std::thread([this, self] { Work(self); });
}

void ElasticThreadPool::Enqueue(std::function<void()> task) {
  {
    MutexLock lock(&mu_);
    if (shutdown_) return;
    tasks_.push_back(std::move(task));
    if (!idle_.empty()) {
      // The thread idle for the shortest time; the others may end.
      Idle* w = idle_.back();
      idle_.pop_back();
      w->woken = true;
      ++pending_;
      w->cv.NotifyOne();
    } else if (tasks_.size() > static_cast<size_t>(pending_) &&
               threads_.size() < static_cast<size_t>(options_.max)) {
      // Each pending thread takes one queued task; this one needs its own.
      StartThreadLocked();
    }  // else a thread that finishes its task takes it
  }
  JoinEnded();
}

void ElasticThreadPool::Work(Handle self) {
  Idle me;
  absl::Time idle_since = absl::Now();
  mu_.Lock();
  --pending_;  // started
  for (;;) {
    if (!tasks_.empty()) {
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      mu_.Unlock();
      task();
      task = nullptr;
      mu_.Lock();
      idle_since = absl::Now();
      continue;
    }
    if (shutdown_) break;
    me.woken = false;
    idle_.push_back(&me);
    while (!me.woken && !shutdown_) {
      const bool extra = threads_.size() > static_cast<size_t>(options_.core);
      const absl::Time deadline =
          extra ? idle_since + options_.idle_timeout : absl::InfiniteFuture();
      const bool timed_out = me.cv.WaitUntil(&mu_, deadline);
      if (timed_out && !me.woken && !shutdown_ &&
          threads_.size() > static_cast<size_t>(options_.core) &&
          absl::Now() >= deadline) {
        // Retire; Enqueue or Shutdown joins this thread.
        idle_.erase(std::find(idle_.begin(), idle_.end(), &me));
        ended_.push_back(std::move(*self));
        threads_.erase(self);
        mu_.Unlock();
        return;
      }
    }
    if (me.woken) {
      --pending_;
    } else {  // shutting down
      idle_.erase(std::find(idle_.begin(), idle_.end(), &me));
    }
  }
  mu_.Unlock();
}

void ElasticThreadPool::JoinEnded() {
  std::vector<std::thread> ended;
  {
    MutexLock lock(&mu_);
    ended.swap(ended_);
  }
  for (std::thread& t : ended) t.join();
}

void ElasticThreadPool::Shutdown() {
  std::list<std::thread> all;
  {
    MutexLock lock(&mu_);
    shutdown_ = true;  // from now on no thread retires or starts
    all.splice(all.end(), threads_);
    for (Idle* w : idle_) w->cv.NotifyOne();
  }
  for (std::thread& t : all) t.join();
  JoinEnded();
}

int ElasticThreadPool::threads() const {
  MutexLock lock(&mu_);
  return static_cast<int>(threads_.size());
}

int ElasticThreadPool::busy() const {
  MutexLock lock(&mu_);
  return std::max(0,
                  static_cast<int>(threads_.size() - idle_.size()) - pending_);
}

}  // namespace pac::concurrency::server
