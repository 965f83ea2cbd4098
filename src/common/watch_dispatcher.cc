#include "src/common/watch_dispatcher.h"

namespace pac::concurrency::internal {

void WatcherEntry::StopAndWait() {
  stopped.store(true);
  if (calling.load() != std::this_thread::get_id()) {
    std::lock_guard<std::mutex> lock(call_mu);
  }
}

WatchDispatcher::WatchDispatcher() : thread_([this] { Loop(); }) {}

WatchDispatcher::~WatchDispatcher() { Shutdown(); }

void WatchDispatcher::Post(PendingEvents events) {
  if (events.empty()) return;
  {
    MutexLock lock(&mu_);
    if (shutdown_) return;
    for (auto& e : events) queue_.push_back(std::move(e));
  }
  cv_.NotifyOne();
}

void WatchDispatcher::Shutdown() {
  {
    MutexLock lock(&mu_);
    if (shutdown_) return;
    shutdown_ = true;
    queue_.clear();
  }
  cv_.NotifyAll();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) {
    thread_.join();
  } else if (thread_.joinable()) {
    thread_.detach();
  }
}

void WatchDispatcher::Loop() {
  while (true) {
    std::deque<std::pair<std::shared_ptr<WatcherEntry>, WatchEvent>> batch;
    {
      MutexLock lock(&mu_);
      while (queue_.empty() && !shutdown_) cv_.Wait(&mu_);
      if (shutdown_) return;
      batch.swap(queue_);
    }
    for (auto& [entry, event] : batch) {
      if (entry->stopped.load()) continue;
      std::lock_guard<std::mutex> call_lock(entry->call_mu);
      if (entry->stopped.load()) continue;
      entry->calling.store(std::this_thread::get_id());
      try {
        entry->callback(event);
      } catch (...) {
        // A throwing callback must not take the dispatcher down.
      }
      entry->calling.store(std::thread::id());
    }
  }
}

void EntryWatchHandle::Stop() {
  std::call_once(once_, [this] {
    entry_->StopAndWait();
    ctx_.RemoveCancelCallback(entry_->context_callback_id);
    if (on_stop_) on_stop_();
  });
}

}  // namespace pac::concurrency::internal
