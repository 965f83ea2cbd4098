// Repository manifests (YAML): parsed or refused with InvalidArgument; a
// parsed manifest's repository has a valid key and a limit of at least 0.
#include <string>

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
    fuzz::Check(r.concurrency_limit >= 0, "a limit of at least 0");
  }
  return 0;
}
