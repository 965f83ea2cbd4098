#include "src/server/api.h"

#include <string>

#include "pac/concurrency/status.h"
#include "src/common/strings.h"

namespace pac::concurrency::server {

using internal::AV;
using internal::Cat;
using internal::SV;

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

absl::StatusOr<absl::Time> ParseTimestamp(std::string_view text,
                                          std::string_view field) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, AV(text), &t, &err)) {
    return absl::InvalidArgumentError(
        Cat(field, ": not an RFC 3339 time (\"", text.substr(0, 64), "\")"));
  }
  return t;
}

Json LeaseToJson(const Lease& lease) {
  return Json{{"lease_id", lease.lease_id},
              {"repository", lease.repository_key},
              {"pipeline_run", lease.pipeline_run_key},
              {"acquired_at", FormatTimestamp(lease.acquired_at)},
              {"expires_at", FormatTimestamp(lease.expires_at)},
              {"fencing_token", lease.fencing_token}};
}

Json LeasesToJson(const std::vector<Lease>& leases) {
  Json out = Json::array();
  for (const Lease& l : leases) out.push_back(LeaseToJson(l));
  return out;
}

std::string_view WatchEventTypeName(WatchEventType type) {
  switch (type) {
    case WatchEventType::kReleased:
      return "released";
    case WatchEventType::kExpired:
      return "expired";
    case WatchEventType::kAdmitted:
      return "admitted";
    case WatchEventType::kLimitChanged:
      return "limit_changed";
    case WatchEventType::kCleaned:
      return "cleaned";
    case WatchEventType::kResync:
      return "resync";
  }
  return "unknown";
}

namespace {

struct CodeInfo {
  absl::StatusCode code;
  const char* name;
  int http;
};

constexpr CodeInfo kCodes[] = {
    {absl::StatusCode::kCancelled, "CANCELLED", 499},
    {absl::StatusCode::kUnknown, "UNKNOWN", 500},
    {absl::StatusCode::kInvalidArgument, "INVALID_ARGUMENT", 400},
    {absl::StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED", 504},
    {absl::StatusCode::kNotFound, "NOT_FOUND", 404},
    {absl::StatusCode::kAlreadyExists, "ALREADY_EXISTS", 409},
    {absl::StatusCode::kPermissionDenied, "PERMISSION_DENIED", 403},
    {absl::StatusCode::kResourceExhausted, "RESOURCE_EXHAUSTED", 429},
    {absl::StatusCode::kFailedPrecondition, "FAILED_PRECONDITION", 409},
    {absl::StatusCode::kAborted, "ABORTED", 409},
    {absl::StatusCode::kOutOfRange, "OUT_OF_RANGE", 400},
    {absl::StatusCode::kUnimplemented, "UNIMPLEMENTED", 501},
    {absl::StatusCode::kInternal, "INTERNAL", 500},
    {absl::StatusCode::kUnavailable, "UNAVAILABLE", 503},
    {absl::StatusCode::kDataLoss, "DATA_LOSS", 500},
    {absl::StatusCode::kUnauthenticated, "UNAUTHENTICATED", 401},
};

const CodeInfo* FindCode(absl::StatusCode code) {
  for (const CodeInfo& c : kCodes) {
    if (c.code == code) return &c;
  }
  return nullptr;
}

}  // namespace

std::string ErrorCodeName(const absl::Status& status) {
  if (IsLeaseLost(status)) return "LEASE_LOST";
  const CodeInfo* c = FindCode(status.code());
  return c != nullptr ? c->name : "UNKNOWN";
}

Json ErrorToJson(const absl::Status& status) {
  return Json{{"error",
               {{"code", ErrorCodeName(status)},
                {"message", std::string(SV(status.message()))}}}};
}

int HttpStatusFor(const absl::Status& status) {
  if (IsLeaseLost(status)) return 410;
  const CodeInfo* c = FindCode(status.code());
  return c != nullptr ? c->http : 500;
}

absl::Status StatusFromErrorJson(int http_status, std::string_view body) {
  Json doc = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_object() && doc.contains("error") && doc["error"].is_object()) {
    const Json& e = doc["error"];
    std::string code = e.value("code", "UNKNOWN");
    std::string message = e.value("message", "");
    if (code == "LEASE_LOST") return LeaseLostError(message);
    for (const CodeInfo& c : kCodes) {
      if (code == c.name) return absl::Status(c.code, message);
    }
    return absl::UnknownError(message);
  }
  std::string snippet(body.substr(0, 200));
  switch (http_status) {
    case 400:
    case 413:
      return absl::InvalidArgumentError(
          Cat("HTTP ", http_status, ": ", snippet));
    case 401:
      return absl::UnauthenticatedError(Cat("HTTP 401: ", snippet));
    case 404:
      return absl::NotFoundError(Cat("HTTP 404: ", snippet));
    case 503:
      return absl::UnavailableError(Cat("HTTP 503: ", snippet));
    default:
      return absl::UnknownError(Cat("HTTP ", http_status, ": ", snippet));
  }
}

}  // namespace pac::concurrency::server
