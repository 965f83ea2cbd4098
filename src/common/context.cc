#include "pac/concurrency/context.h"

#include <atomic>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"

namespace pac::concurrency {

struct ContextState {
  std::shared_ptr<ContextState> parent;
  int64_t parent_callback_id = 0;
  absl::Time deadline = absl::InfiniteFuture();
  std::atomic<bool> cancelled{false};

  std::mutex mu;
  int64_t next_id = 1;
  std::map<int64_t, std::function<void()>> callbacks;

  // Held while callbacks run, so RemoveCallback can wait for them.
  std::mutex call_mu;
  std::atomic<std::thread::id> calling_thread{};

  ~ContextState() {
    if (parent != nullptr && parent_callback_id != 0) {
      parent->RemoveCallback(parent_callback_id);
    }
  }

  void Cancel() {
    std::map<int64_t, std::function<void()>> to_call;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (cancelled.exchange(true)) return;
      to_call.swap(callbacks);
    }
    std::lock_guard<std::mutex> call_lock(call_mu);
    calling_thread = std::this_thread::get_id();
    for (auto& [id, fn] : to_call) fn();
    calling_thread = std::thread::id();
  }

  int64_t AddCallback(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!cancelled.load()) {
        int64_t id = next_id++;
        callbacks.emplace(id, std::move(fn));
        return id;
      }
    }
    fn();
    return 0;
  }

  void RemoveCallback(int64_t id) {
    if (id == 0) return;
    bool removed;
    {
      std::lock_guard<std::mutex> lock(mu);
      removed = callbacks.erase(id) > 0;
    }
    if (!removed && calling_thread.load() != std::this_thread::get_id()) {
      // The callback may be running right now: wait for it to finish.
      std::lock_guard<std::mutex> call_lock(call_mu);
    }
  }
};

Context Context::Background() { return Context(nullptr); }

Context Context::WithDeadline(const Context& parent, absl::Time deadline) {
  auto state = std::make_shared<ContextState>();
  state->deadline = std::min(deadline, parent.deadline());
  if (parent.state_ != nullptr) {
    state->parent = parent.state_;
    std::weak_ptr<ContextState> weak = state;
    state->parent_callback_id = parent.state_->AddCallback([weak] {
      if (auto child = weak.lock()) child->Cancel();
    });
  }
  return Context(std::move(state));
}

Context Context::WithTimeout(const Context& parent, absl::Duration timeout) {
  return WithDeadline(parent, absl::Now() + timeout);
}

std::pair<Context, Context::Canceller> Context::WithCancel(
    const Context& parent) {
  Context child = WithDeadline(parent, absl::InfiniteFuture());
  Canceller canceller;
  canceller.state_ = child.state_;
  return {std::move(child), std::move(canceller)};
}

void Context::Canceller::Cancel() const {
  if (state_ != nullptr) state_->Cancel();
}

absl::Time Context::deadline() const {
  return state_ == nullptr ? absl::InfiniteFuture() : state_->deadline;
}

absl::Status Context::Err() const {
  if (state_ == nullptr) return absl::OkStatus();
  if (state_->cancelled.load(std::memory_order_acquire)) {
    return absl::CancelledError("context cancelled");
  }
  if (state_->deadline != absl::InfiniteFuture() &&
      absl::Now() >= state_->deadline) {
    return absl::DeadlineExceededError("context deadline exceeded");
  }
  return absl::OkStatus();
}

int64_t Context::AddCancelCallback(std::function<void()> fn) const {
  if (state_ == nullptr) return 0;  // never cancelled
  return state_->AddCallback(std::move(fn));
}

void Context::RemoveCancelCallback(int64_t id) const {
  if (state_ != nullptr) state_->RemoveCallback(id);
}

}  // namespace pac::concurrency
