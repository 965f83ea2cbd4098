// Repository and PipelineRun keys.
//
// A key is `namespace/name` with Kubernetes name rules: the namespace is a
// DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an
// alphanumeric, at most 63 characters) and the name a DNS-1123 subdomain
// (labels of that kind joined by '.', at most 253 characters).
#ifndef PAC_CONCURRENCY_REPOSITORY_H_
#define PAC_CONCURRENCY_REPOSITORY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pac::concurrency {

// A Pipelines-as-Code Repository as far as concurrency is concerned.
struct Repository {
  std::string ns;    // Kubernetes namespace
  std::string name;  // Repository name
  // Unset or 0: unlimited. Negative: invalid input.
  std::optional<int32_t> concurrency_limit;

  // "ns/name".
  [[nodiscard]] std::string Key() const { return ns + "/" + name; }

  // Builds a Repository from "ns/name"; InvalidArgument if the key is bad.
  [[nodiscard]] static absl::StatusOr<Repository> FromKey(
      std::string_view key, std::optional<int32_t> limit = std::nullopt);
};

// Checks a `namespace/name` key. `field` names the input in the error, for
// example "repository" or "pipeline_run".
[[nodiscard]] absl::Status ValidateKey(std::string_view key,
                                       std::string_view field);

// Checks a namespace name alone (a DNS-1123 label). `field` names the input
// in the error, for example "namespace".
[[nodiscard]] absl::Status ValidateNamespace(std::string_view ns,
                                             std::string_view field);

// Checks a state string of Set{Repository,PipelineRun}State: 1 to
// kMaxStateLength characters of valid UTF-8, no control characters (the
// specification's tables keep it in a VARCHAR(50)). `field` names the
// input in the error.
inline constexpr size_t kMaxStateLength = 50;
[[nodiscard]] absl::Status ValidateState(std::string_view state,
                                         std::string_view field = "state");

// Checks both parts of `repo` and its limit.
[[nodiscard]] absl::Status ValidateRepository(const Repository& repo);

// The effective limit: 0 means unlimited.
[[nodiscard]] inline int32_t EffectiveLimit(const Repository& repo) {
  return repo.concurrency_limit.value_or(0);
}

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_REPOSITORY_H_
