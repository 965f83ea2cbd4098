#include "src/common/watch_dispatcher.h"

#include <algorithm>

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

std::unique_ptr<WatchHandle> MakeWatchHandle(
    const Context& ctx, std::shared_ptr<WatcherEntry> entry,
    std::function<void()> unregister) {
  std::weak_ptr<WatcherEntry> weak = entry;
  entry->context_callback_id = ctx.AddCancelCallback([weak] {
    if (auto e = weak.lock()) e->stopped.store(true);
  });
  return std::make_unique<EntryWatchHandle>(std::move(entry), ctx,
                                            std::move(unregister));
}

std::unique_ptr<WatchHandle> WatcherRegistry::Add(const Context& ctx,
                                                  std::string repo_key,
                                                  WatchCallback callback) {
  auto entry =
      std::make_shared<WatcherEntry>(std::move(repo_key), std::move(callback));
  {
    MutexLock lock(&mu_);
    watchers_[entry->repository_key].push_back(entry);
  }
  std::weak_ptr<WatcherEntry> weak = entry;
  return MakeWatchHandle(ctx, entry, [this, weak] {
    auto e = weak.lock();
    if (e == nullptr) return;
    MutexLock lock(&mu_);
    auto it = watchers_.find(e->repository_key);
    if (it == watchers_.end()) return;
    auto& list = it->second;
    list.erase(std::remove(list.begin(), list.end(), e), list.end());
    if (list.empty()) watchers_.erase(it);
  });
}

void WatcherRegistry::Collect(const std::string& repo_key, WatchEventType type,
                              const std::string& run_key, PendingEvents* out,
                              std::string_view reason) {
  MutexLock lock(&mu_);
  auto it = watchers_.find(repo_key);
  if (it == watchers_.end()) return;
  for (auto& w : it->second) {
    out->emplace_back(w,
                      WatchEvent{type, repo_key, run_key, std::string(reason)});
  }
}

void WatcherRegistry::CollectAll(WatchEventType type, PendingEvents* out) {
  MutexLock lock(&mu_);
  for (auto& [repo, list] : watchers_) {
    for (auto& w : list) out->emplace_back(w, WatchEvent{type, repo, "", ""});
  }
}

void WatcherRegistry::StopAll() {
  MutexLock lock(&mu_);
  for (auto& [repo, list] : watchers_) {
    for (auto& w : list) w->stopped.store(true);
  }
  watchers_.clear();
}

}  // namespace pac::concurrency::internal
