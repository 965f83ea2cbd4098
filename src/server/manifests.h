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

// A Repository manifest's annotation pac-concurrency.dev/shared-limits:
// the shared limits the repository draws from (docs/policies.md), sorted;
// an empty annotation: none.
struct SharedLimitsNote {
  std::string repository_key;
  std::vector<std::string> names;
};

// Parses one or more Repository manifests (YAML or JSON; several documents,
// or a `kind: List`). Each needs metadata.name and metadata.namespace;
// spec.concurrency_limit, when present, is a non-negative integer (absent:
// left unset, which is unlimited). With `shared`, the manifests that carry
// the shared-limits annotation are added to it (comma-separated valid
// names, each once). InvalidArgument names the document and the field.
[[nodiscard]] absl::StatusOr<std::vector<Repository>> ParseRepositoryManifests(
    std::string_view yaml, std::vector<SharedLimitsNote>* shared = nullptr);

// Pipelines-as-Code's global Repository: the one its controller names by
// PAC_CONTROLLER_GLOBAL_REPOSITORY ("pipelines-as-code" unless set) in the
// controller's namespace. A Repository whose manifest sets no
// concurrency_limit takes the global one's (its RepositorySpec.Merge); an
// explicit 0 stays 0.
inline constexpr char kDefaultGlobalRepositoryName[] = "pipelines-as-code";

// Merges the global Repository's limit into `repos`. `global`: its key
// ("namespace/name"); "" finds it, a Repository named
// kDefaultGlobalRepositoryName (none found, or several in different
// namespaces: nothing is merged, and a note says so); "none": no merge.
// Returns notes for the report (which global Repository was used, and for
// how many repositories). InvalidArgument when `global` names a
// Repository the manifests do not hold.
[[nodiscard]] absl::StatusOr<std::vector<std::string>> MergeGlobalRepository(
    std::vector<Repository>& repos, std::string_view global);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_MANIFESTS_H_
