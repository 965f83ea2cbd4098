// Input checks shared by the drivers (internal).
#ifndef PAC_SRC_COMMON_KEYS_H_
#define PAC_SRC_COMMON_KEYS_H_

#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "pac/concurrency/driver.h"
#include "pac/concurrency/repository.h"
#include "pac/concurrency/status.h"

namespace pac::concurrency::internal {

// The refusal of a run that a record says was removed from the queue of
// `repo` for `reason` (docs/policies.md), as every driver words it.
inline absl::Status RemovedRunError(std::string_view repo, std::string_view run,
                                    std::string_view reason) {
  return RunRemovedError(reason, std::string("pipeline run ")
                                     .append(run)
                                     .append(" of ")
                                     .append(repo)
                                     .append(" was removed from the queue (")
                                     .append(reason)
                                     .append(")"));
}

// The refusal of a run older than the queued run of its supersede group.
inline absl::Status SupersededRunError(std::string_view repo,
                                       std::string_view run,
                                       std::string_view group) {
  return RunRemovedError(kRemovedSuperseded,
                         std::string("pipeline run ")
                             .append(run)
                             .append(" of ")
                             .append(repo)
                             .append(" was superseded by a newer run of group ")
                             .append(group));
}

// The keys of a ReleaseSlot call. Without a lease id the run is named by
// (repository, run), so both must be valid keys; with one, the keys are
// optional filters and are not checked here.
inline absl::Status ValidateReleaseKeys(std::string_view lease_id,
                                        std::string_view run_key,
                                        std::string_view repo_key) {
  if (!lease_id.empty()) return absl::OkStatus();
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  return ValidateKey(run_key, "pipeline_run");
}

// A queue time limit (AcquireOptions, RepositoryPolicy): 1 ms to
// kMaxQueueTimeLimit, in whole microseconds (as every backend stores it).
inline absl::Status ValidateQueueTimeLimit(absl::Duration d,
                                           std::string_view field) {
  if (d < absl::Milliseconds(1) || d > kMaxQueueTimeLimit ||
      d != absl::Trunc(d, absl::Microseconds(1))) {
    return absl::InvalidArgumentError(
        std::string(field) + ": between 1ms and " +
        absl::FormatDuration(kMaxQueueTimeLimit) +
        " in whole microseconds (got " + absl::FormatDuration(d) + ")");
  }
  return absl::OkStatus();
}

inline absl::Status ValidatePolicy(const RepositoryPolicy& policy) {
  if (policy.max_queue_time.has_value()) {
    if (absl::Status s =
            ValidateQueueTimeLimit(*policy.max_queue_time, "max_queue_time");
        !s.ok()) {
      return s;
    }
  }
  if (policy.shared_limits.size() > kMaxSharedLimitsPerRepository) {
    return absl::InvalidArgumentError(
        "shared_limits: at most " +
        std::to_string(kMaxSharedLimitsPerRepository) + " (got " +
        std::to_string(policy.shared_limits.size()) + ")");
  }
  for (size_t i = 0; i < policy.shared_limits.size(); ++i) {
    if (absl::Status s =
            ValidateSharedLimitName(policy.shared_limits[i], "shared_limits");
        !s.ok()) {
      return s;
    }
    if (i > 0 && policy.shared_limits[i - 1] >= policy.shared_limits[i]) {
      return absl::InvalidArgumentError(
          "shared_limits: sorted, each name once (\"" +
          policy.shared_limits[i] + "\" after \"" +
          policy.shared_limits[i - 1] + "\")");
    }
  }
  return absl::OkStatus();
}

inline absl::Status ValidateSharedLimit(const SharedLimit& limit) {
  if (absl::Status s = ValidateSharedLimitName(limit.name, "name"); !s.ok()) {
    return s;
  }
  if (limit.limit < 0) {
    return absl::InvalidArgumentError(
        "limit: must be 0 (no limit) or more (got " +
        std::to_string(limit.limit) + ")");
  }
  return absl::OkStatus();
}

// The options of an AcquireSlot call: a creation time, when given, lies in
// the years 0001-9999 (RFC 3339's range, which every backend stores and
// orders exactly, before 1970 too).
inline absl::Status ValidateAcquireOptions(const AcquireOptions& options) {
  if (options.group.size() > 253) {
    return absl::InvalidArgumentError("group: at most 253 bytes (got " +
                                      std::to_string(options.group.size()) +
                                      ")");
  }
  for (size_t i = 0; i < options.group.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(options.group[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "group: printable ASCII without spaces only (byte " +
          std::to_string(c) + " at offset " + std::to_string(i) + ")");
    }
  }
  if (options.cancel_running && options.group.empty()) {
    return absl::InvalidArgumentError(
        "cancel_running: needs a group (the runs it stops are the group's)");
  }
  if (options.max_queue_time.has_value()) {
    if (absl::Status s =
            ValidateQueueTimeLimit(*options.max_queue_time, "max_queue_time");
        !s.ok()) {
      return s;
    }
  }
  if (!options.creation_time.has_value()) return absl::OkStatus();
  static const absl::Time kFirst =
      absl::FromCivil(absl::CivilSecond(1, 1, 1, 0, 0, 0), absl::UTCTimeZone());
  static const absl::Time kEnd = absl::FromCivil(
      absl::CivilSecond(10000, 1, 1, 0, 0, 0), absl::UTCTimeZone());
  if (*options.creation_time < kFirst || *options.creation_time >= kEnd) {
    return absl::InvalidArgumentError(
        "creation_time: outside the years 0001-9999 (" +
        absl::FormatTime(absl::RFC3339_full, *options.creation_time,
                         absl::UTCTimeZone()) +
        ")");
  }
  return absl::OkStatus();
}

// An ImportRuns call: a valid repository, at most kMaxImportRuns valid run
// keys, none named twice, creation times and groups as
// ValidateAcquireOptions.
inline absl::Status ValidateImportRequest(const Repository& repo,
                                          const ImportRequest& request) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  const size_t n = request.running.size() + request.waiting.size();
  if (n > Driver::kMaxImportRuns) {
    return absl::InvalidArgumentError(
        "import: " + std::to_string(n) + " runs; at most " +
        std::to_string(Driver::kMaxImportRuns) + " per call");
  }
  absl::flat_hash_set<std::string_view> seen;
  seen.reserve(n);
  auto check = [&](std::string_view run) -> absl::Status {
    if (absl::Status s = ValidateKey(run, "pipeline_run"); !s.ok()) return s;
    if (!seen.insert(run).second) {
      return absl::InvalidArgumentError("import: pipeline_run " +
                                        std::string(run) + " given twice");
    }
    return absl::OkStatus();
  };
  for (const std::string& run : request.running) {
    if (absl::Status s = check(run); !s.ok()) return s;
  }
  for (const ImportRequest::Waiting& w : request.waiting) {
    if (absl::Status s = check(w.pipeline_run_key); !s.ok()) return s;
    AcquireOptions o;
    o.creation_time = w.creation_time;
    o.group = w.group;
    if (absl::Status s = ValidateAcquireOptions(o); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// An ImportBatch call: every part valid, distinct repositories, the
// whole within the driver's capacity.
inline absl::Status ValidateImportBatch(
    const std::vector<RepositoryImport>& parts,
    const ImportCapacity& capacity) {
  absl::flat_hash_set<std::string> repos;
  for (const RepositoryImport& p : parts) {
    if (absl::Status s = ValidateImportRequest(p.repository, p.request);
        !s.ok()) {
      return s;
    }
    if (!repos.insert(p.repository.Key()).second) {
      return absl::InvalidArgumentError("import: repository " +
                                        p.repository.Key() + " given twice");
    }
  }
  if (const size_t cost = capacity.CostOf(parts); cost > capacity.runs) {
    return absl::InvalidArgumentError(
        "import: a batch of " + std::to_string(parts.size()) +
        " repositories costs " + std::to_string(cost) +
        "; this backend takes " + std::to_string(capacity.runs) +
        " per batch (each run 1, each " + "repository " +
        std::to_string(capacity.per_repository) + ")");
  }
  return absl::OkStatus();
}

// The namespace of a ListRepositories call: empty (every namespace) or a
// valid namespace name.
inline absl::Status ValidateNamespaceFilter(std::string_view namespace_name) {
  if (namespace_name.empty()) return absl::OkStatus();
  return ValidateNamespace(namespace_name, "namespace");
}

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_COMMON_KEYS_H_
