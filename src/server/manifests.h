// Reading Pipelines-as-Code objects: Repository manifests (YAML) and the
// output of `kubectl get pipelineruns -A -o json`, for the import.
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

// Pipelines-as-Code annotations on a PipelineRun.
inline constexpr char kStateAnnotation[] = "pipelinesascode.tekton.dev/state";
inline constexpr char kRepositoryAnnotation[] =
    "pipelinesascode.tekton.dev/repository";
inline constexpr char kExecutionOrderAnnotation[] =
    "pipelinesascode.tekton.dev/execution-order";

// Parses one or more Repository manifests (YAML or JSON; several documents,
// or a `kind: List`). Each needs metadata.name and metadata.namespace;
// spec.concurrency_limit, when present, is a non-negative integer (absent:
// unlimited). InvalidArgument names the document and the field.
[[nodiscard]] absl::StatusOr<std::vector<Repository>> ParseRepositoryManifests(
    std::string_view yaml);

// A PipelineRun as the import sees it.
struct ImportedRun {
  std::string repository_key;  // <namespace>/<repository annotation>
  std::string run_key;         // <namespace>/<name>
  bool running = false;        // state "started" (else "queued")
  absl::Time creation_time;
  int order = 0;  // place in its execution-order annotation (0 if absent)
};

struct PipelineRunScan {
  std::vector<ImportedRun> runs;  // running first, then queued in order
  // Runs left out, with the reason (no annotation, completed, bad key).
  std::vector<std::pair<std::string, std::string>> skipped;
};

// Reads a `kubectl get pipelineruns -o json` List (or a single
// PipelineRun). Runs whose state is neither "started" nor "queued" are
// skipped; queued runs come in (creationTimestamp, execution-order, name)
// order.
[[nodiscard]] absl::StatusOr<PipelineRunScan> ParsePipelineRuns(
    const nlohmann::json& doc);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_MANIFESTS_H_
