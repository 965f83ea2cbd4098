// Reading Pipelines-as-Code Repository manifests (YAML or JSON) for the
// import and `POST /v1/repositories`. PipelineRuns: import_plan.h.
#ifndef PAC_SRC_SERVER_MANIFESTS_H_
#define PAC_SRC_SERVER_MANIFESTS_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "pac/concurrency/repository.h"

namespace pac::concurrency::server {

// Parses one or more Repository manifests (YAML or JSON; several documents,
// or a `kind: List`). Each needs metadata.name and metadata.namespace;
// spec.concurrency_limit, when present, is a non-negative integer (absent:
// unlimited). InvalidArgument names the document and the field.
[[nodiscard]] absl::StatusOr<std::vector<Repository>> ParseRepositoryManifests(
    std::string_view yaml);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_MANIFESTS_H_
