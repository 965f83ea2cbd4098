// The kubectl import: `kubectl get pipelineruns -o json` documents into
// ParsePipelineRuns. Every run it keeps has valid keys; running runs come
// before queued ones.
#include <string>

#include "fuzz/fuzz_util.h"
#include "src/server/api.h"
#include "src/server/manifests.h"

using namespace pac::concurrency;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto doc = server::ParseJson(
      std::string_view(reinterpret_cast<const char*>(data), size), "input");
  if (!doc.ok()) return 0;
  auto scan = server::ParsePipelineRuns(*doc);
  if (!scan.ok()) return 0;
  bool queued_seen = false;
  for (const server::ImportedRun& r : scan->runs) {
    fuzz::Check(ValidateKey(r.repository_key, "repository").ok(),
                "a valid repository key");
    fuzz::Check(ValidateKey(r.run_key, "run").ok(), "a valid run key");
    fuzz::Check(!(r.running && queued_seen), "running runs come first");
    queued_seen = queued_seen || !r.running;
  }
  return 0;
}
