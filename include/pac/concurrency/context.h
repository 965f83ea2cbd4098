// Context: a deadline and a cancellation signal carried by every blocking
// call, modelled on Go's context.Context as the specification uses it.
//
// A Context is a cheap, copyable handle to shared state. Children inherit the
// parent's deadline (the earlier of the two wins) and are cancelled when the
// parent is. Deadlines are absolute time points on the real clock.
//
// Thread-safety: all methods are safe to call concurrently.
#ifndef PAC_CONCURRENCY_CONTEXT_H_
#define PAC_CONCURRENCY_CONTEXT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace pac::concurrency {

class Context {
 public:
  // A context that is never cancelled and has no deadline.
  [[nodiscard]] static Context Background();

  // A child of `parent` whose deadline is `deadline` (or the parent's, if
  // earlier).
  [[nodiscard]] static Context WithDeadline(const Context& parent,
                                            absl::Time deadline);
  [[nodiscard]] static Context WithTimeout(const Context& parent,
                                           absl::Duration timeout);

  // A child of `parent` that is cancelled when `Cancel()` of the returned
  // canceller is called (or the parent is cancelled). Cancelling twice is a
  // no-op.
  class Canceller {
   public:
    void Cancel() const;

   private:
    friend class Context;
    std::shared_ptr<struct ContextState> state_;
  };
  [[nodiscard]] static std::pair<Context, Canceller> WithCancel(
      const Context& parent);

  Context() : Context(Background()) {}

  // The deadline, or absl::InfiniteFuture() when there is none.
  [[nodiscard]] absl::Time deadline() const;

  // OK while the context is live; Cancelled or DeadlineExceeded once it is
  // done. The message names which of the two happened.
  [[nodiscard]] absl::Status Err() const;
  [[nodiscard]] bool Done() const { return !Err().ok(); }

  // Calls `fn` once when the context is cancelled (not when the deadline
  // passes: waiters use deadline() for that). If already cancelled, `fn` runs
  // before this returns. Returns an id for RemoveCancelCallback; `fn` is never
  // called after RemoveCancelCallback returns.
  int64_t AddCancelCallback(std::function<void()> fn) const;
  void RemoveCancelCallback(int64_t id) const;

 private:
  explicit Context(std::shared_ptr<struct ContextState> state)
      : state_(std::move(state)) {}
  std::shared_ptr<struct ContextState> state_;  // null for Background()
};

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_CONTEXT_H_
