// Repository manifests (YAML): parsed or refused with InvalidArgument; a
// parsed manifest's repository has a valid key and a limit of at least 0.
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "src/server/manifests.h"

using namespace pac::concurrency;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto repos = server::ParseRepositoryManifests(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (!repos.ok()) {
    fuzz::Check(repos.status().code() == absl::StatusCode::kInvalidArgument,
                "a refusal is InvalidArgument");
    return 0;
  }
  for (const Repository& r : *repos) {
    fuzz::Check(ValidateKey(r.Key(), "repository").ok(), "a valid key");
    fuzz::Check(r.concurrency_limit.value_or(0) >= 0, "a limit of at least 0");
  }
  // The global Repository's merge: found or not, it only fills unset limits.
  std::vector<Repository> merged = *repos;
  auto notes = server::MergeGlobalRepository(merged, "");
  fuzz::Check(notes.ok(), "finding the global Repository never fails");
  for (size_t i = 0; i < merged.size(); ++i) {
    fuzz::Check(
        !(*repos)[i].concurrency_limit.has_value() ||
            merged[i].concurrency_limit == (*repos)[i].concurrency_limit,
        "a set limit is kept");
  }
  return 0;
}
