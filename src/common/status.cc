#include "pac/concurrency/status.h"

#include "absl/strings/cord.h"
#include "src/common/strings.h"

namespace pac::concurrency {

absl::Status LeaseLostError(std::string_view message) {
  absl::Status status = absl::FailedPreconditionError(internal::AV(message));
  status.SetPayload(internal::AV(kLeaseLostPayloadUrl),
                    absl::Cord("lease-lost"));
  return status;
}

bool IsLeaseLost(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(internal::AV(kLeaseLostPayloadUrl)).has_value();
}

absl::Status RunRemovedError(std::string_view reason,
                             std::string_view message) {
  absl::Status status = absl::FailedPreconditionError(internal::AV(message));
  status.SetPayload(internal::AV(kRunRemovedPayloadUrl),
                    absl::Cord(internal::AV(reason)));
  return status;
}

bool IsRunRemoved(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(internal::AV(kRunRemovedPayloadUrl)).has_value();
}

std::string RunRemovedReason(const absl::Status& status) {
  if (!IsRunRemoved(status)) return "";
  return std::string(*status.GetPayload(internal::AV(kRunRemovedPayloadUrl)));
}

bool IsRetryable(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kAborted;
}

}  // namespace pac::concurrency
