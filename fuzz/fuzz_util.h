// Shared by the fuzz targets: a memory driver and a Service over it, made
// once per process (libFuzzer calls the target many times in one process),
// and a check that fails the run loudly.
#ifndef PAC_FUZZ_FUZZ_UTIL_H_
#define PAC_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "pac/concurrency/concurrency.h"
#include "src/server/service.h"

namespace pac::concurrency::fuzz {

struct Backend {
  std::unique_ptr<Driver> driver;
  server::Metrics metrics;
  std::unique_ptr<server::Service> service;
};

// The process's Backend (a memory driver with a 5-minute TTL).
inline Backend& SharedBackend() {
  static Backend* b = [] {
    auto* x = new Backend;
    x->driver = *NewMemoryDriver(MemoryConfig{absl::Minutes(5)});
    x->service = std::make_unique<server::Service>(x->driver.get(), nullptr,
                                                   &x->metrics);
    return x;
  }();
  return *b;
}

// Aborts (a finding for libFuzzer) when `ok` is false.
inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz check failed: %s\n", what);
    std::abort();
  }
}

}  // namespace pac::concurrency::fuzz

#endif  // PAC_FUZZ_FUZZ_UTIL_H_
