#include "src/server/api.h"

#include <algorithm>
#include <string>

#include "pac/concurrency/status.h"
#include "src/common/escape.h"
#include "src/common/keys.h"
#include "src/common/strings.h"

namespace pac::concurrency::server {

using internal::AV;
using internal::Cat;
using internal::SV;

absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view what) {
  // The deepest nesting, outside strings.
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(
            Cat(what, ": JSON nested deeper than ", kMaxJsonDepth, " levels"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    size_t bad = 0;
    if (!internal::IsValidUtf8(text, &bad)) {
      return absl::InvalidArgumentError(Cat(
          what, ": not valid JSON (byte ", bad,
          " is not UTF-8: ", internal::EscapeBytes(text.substr(bad, 1)), ")"));
    }
    return absl::InvalidArgumentError(Cat(what, ": not valid JSON"));
  }
  return doc;
}

namespace {

// Where the first string of `doc` (a key or a value) that is not valid
// UTF-8 is, as "/field/0", with the string escaped; empty if none.
std::string FirstInvalidUtf8(const Json& doc, const std::string& at) {
  if (doc.is_string()) {
    const std::string& v = doc.get_ref<const std::string&>();
    return internal::IsValidUtf8(v)
               ? ""
               : Cat(at.empty() ? "/" : at, " (\"",
                     internal::EscapeBytes(std::string_view(v).substr(0, 80)),
                     v.size() > 80 ? "…" : "", "\")");
  }
  if (doc.is_object()) {
    for (const auto& [k, v] : doc.items()) {
      if (!internal::IsValidUtf8(k)) {
        return Cat(at, "/", internal::EscapeBytes(k), " (a field name)");
      }
      if (std::string bad = FirstInvalidUtf8(v, Cat(at, "/", k));
          !bad.empty()) {
        return bad;
      }
    }
  } else if (doc.is_array()) {
    for (size_t i = 0; i < doc.size(); ++i) {
      if (std::string bad = FirstInvalidUtf8(doc[i], Cat(at, "/", i));
          !bad.empty()) {
        return bad;
      }
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<std::string> DumpStrict(const Json& doc, std::string_view what) {
  try {
    return doc.dump();
  } catch (const Json::type_error&) {
    return absl::InvalidArgumentError(
        Cat(what, ": ", FirstInvalidUtf8(doc, ""), " is not valid UTF-8"));
  }
}

std::string DumpSafe(const Json& doc, int indent) {
  return doc.dump(indent, ' ', false, Json::error_handler_t::replace);
}

absl::Status CheckFields(const Json& body,
                         std::initializer_list<std::string_view> allowed) {
  if (!body.is_object()) {
    return absl::InvalidArgumentError("request body: must be a JSON object");
  }
  for (auto it = body.begin(); it != body.end(); ++it) {
    bool known = false;
    for (std::string_view a : allowed) known = known || it.key() == a;
    if (!known) {
      return absl::InvalidArgumentError(
          Cat("request body: unknown field \"", it.key().substr(0, 64), "\""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<absl::Duration>> ParseQueueSeconds(
    const Json& value, std::string_view field) {
  if (value.is_null()) return std::optional<absl::Duration>();
  if (!value.is_number()) {
    return absl::InvalidArgumentError(
        Cat(field, ": a number of seconds, or null for none"));
  }
  const double seconds = value.get<double>();
  // To whole microseconds, as the backends keep it; NaN and huge values
  // fail the range check below (a duration saturates to infinity).
  const absl::Duration d =
      seconds != seconds
          ? absl::ZeroDuration()
          : absl::Trunc(absl::Seconds(seconds) + absl::Nanoseconds(500),
                        absl::Microseconds(1));
  if (absl::Status s = internal::ValidateQueueTimeLimit(d, field); !s.ok()) {
    return s;
  }
  return std::optional<absl::Duration>(d);
}

absl::StatusOr<int32_t> ParsePriority(const Json& value,
                                      std::string_view field) {
  if (!value.is_number_integer() || value.get<int64_t>() < INT32_MIN ||
      value.get<int64_t>() > INT32_MAX) {
    return absl::InvalidArgumentError(
        Cat(field,
            ": an integer of 32 bits (higher is admitted first under the "
            "priority mode)"));
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

absl::StatusOr<std::vector<std::string>> ParseSharedLimitNames(
    const Json& value) {
  std::vector<std::string> names;
  if (value.is_null()) return names;
  if (!value.is_array()) {
    return absl::InvalidArgumentError(
        "shared_limits: an array of shared limit names, or null");
  }
  for (const Json& v : value) {
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          "shared_limits: an array of shared limit names, or null");
    }
    names.push_back(v.get<std::string>());
  }
  std::sort(names.begin(), names.end());
  return names;
}

Json PolicyToJson(std::string_view repo_key, const RepositoryPolicy& policy) {
  Json out{{"repository", std::string(repo_key)},
           {"max_queue_seconds", nullptr},
           {"queue_mode", QueueModeName(policy.mode)},
           {"shared_limits", policy.shared_limits}};
  if (policy.max_queue_time.has_value()) {
    out["max_queue_seconds"] = absl::ToDoubleSeconds(*policy.max_queue_time);
  }
  return out;
}

std::string FormatTimestamp(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

absl::StatusOr<absl::Time> ParseTimestamp(std::string_view text,
                                          std::string_view field) {
  absl::Time t;
  std::string err;
  if (!absl::ParseTime(absl::RFC3339_full, AV(text), &t, &err)) {
    return absl::InvalidArgumentError(
        Cat(field, ": not an RFC 3339 time (\"",
            internal::EscapeBytes(text.substr(0, 64)), "\")"));
  }
  return t;
}

const char* StateKeyField(Api::StateOf of) {
  return of == Api::StateOf::kRepository ? "repository" : "pipeline_run";
}

Json LeaseToJson(const Lease& lease) {
  return Json{{"lease_id", lease.lease_id},
              {"repository", lease.repository_key},
              {"pipeline_run", lease.pipeline_run_key},
              {"acquired_at", FormatTimestamp(lease.acquired_at)},
              {"expires_at", FormatTimestamp(lease.expires_at)},
              {"fencing_token", lease.fencing_token},
              {"cancel_requested", lease.cancel_requested}};
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
    case WatchEventType::kRemoved:
      return "removed";
    case WatchEventType::kCancelRequested:
      return "cancel_requested";
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
  if (IsRunRemoved(status)) return "RUN_REMOVED";
  const CodeInfo* c = FindCode(status.code());
  return c != nullptr ? c->name : "UNKNOWN";
}

Json ErrorToJson(const absl::Status& status) {
  Json out{{"error",
            {{"code", ErrorCodeName(status)},
             {"message", std::string(SV(status.message()))}}}};
  if (IsRunRemoved(status)) out["error"]["reason"] = RunRemovedReason(status);
  return out;
}

int HttpStatusFor(const absl::Status& status) {
  if (IsLeaseLost(status) || IsRunRemoved(status)) return 410;
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
    if (code == "RUN_REMOVED") {
      const bool named = e.contains("reason") && e["reason"].is_string();
      return RunRemovedError(named ? e["reason"].get<std::string>() : "unknown",
                             message);
    }
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
