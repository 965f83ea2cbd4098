// Error scheme of pac-concurrency.
//
// Every fallible call returns absl::Status or absl::StatusOr<T> with one of
// the canonical codes below. The code says what the caller can do about it:
//
//   InvalidArgument     the input is wrong (a key, a limit, a config field);
//                       the message names the field. Nothing was written.
//   DeadlineExceeded    the Context's deadline passed. Nothing is held.
//   Cancelled           the Context was cancelled. Nothing is held.
//   Unavailable         the backend could not be reached or failed in a way
//                       that is safe to retry (IsRetryable() is true).
//   FailedPrecondition  with the lease-lost payload (IsLeaseLost()): the lease
//                       expired or was released; the holder lost its slot.
//                       With the run-removed payload (IsRunRemoved()): the
//                       run was removed from its queue (a cleared queue)
//                       and is not queued or admitted again.
//                       Without either: the object is closed.
//   NotFound            a state that was never set.
//   Internal            a bug or a backend answer that makes no sense.
//
// Messages never contain secrets (passwords, keys, tokens).
#ifndef PAC_CONCURRENCY_STATUS_H_
#define PAC_CONCURRENCY_STATUS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pac::concurrency {

// Payload type URL attached to lease-lost errors.
inline constexpr std::string_view kLeaseLostPayloadUrl =
    "type.pac-concurrency.dev/LeaseLost";

// A FailedPrecondition status that marks a lease as expired or lost.
[[nodiscard]] absl::Status LeaseLostError(std::string_view message);

// True when `status` says that a lease expired or was lost (fencing, rule 4).
[[nodiscard]] bool IsLeaseLost(const absl::Status& status);

// Payload type URL attached to run-removed errors; its value is the reason.
inline constexpr std::string_view kRunRemovedPayloadUrl =
    "type.pac-concurrency.dev/RunRemoved";

// A FailedPrecondition status that says the run was removed from its queue
// for `reason` (driver.h: kRemovedCleared) and will not be admitted.
[[nodiscard]] absl::Status RunRemovedError(std::string_view reason,
                                           std::string_view message);

// True when `status` is a RunRemovedError.
[[nodiscard]] bool IsRunRemoved(const absl::Status& status);

// The reason of a RunRemovedError; empty for any other status.
[[nodiscard]] std::string RunRemovedReason(const absl::Status& status);

// True when the same call may succeed if retried later (Unavailable or
// Aborted). DeadlineExceeded and Cancelled are not retryable by themselves:
// the caller's own budget ran out.
[[nodiscard]] bool IsRetryable(const absl::Status& status);

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_STATUS_H_
