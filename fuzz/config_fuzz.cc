// The configuration loaders: a YAML file (nested or a ConfigMap) is loaded
// or refused with InvalidArgument; a loaded one names a known driver.
#include <string>

#include "fuzz/fuzz_util.h"

using namespace pac::concurrency;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = LoadConfigFromYaml(text);
  if (config.ok()) {
    fuzz::Check(config->driver == "memory" || config->driver == "etcd" ||
                    config->driver == "postgresql",
                "a known driver");
  } else {
    fuzz::Check(config.status().code() == absl::StatusCode::kInvalidArgument,
                "a refusal is InvalidArgument");
  }
  auto flat = FlattenYaml(text);
  if (flat.ok()) (void)LoadConfigFromConfigMap(*flat);
  return 0;
}
