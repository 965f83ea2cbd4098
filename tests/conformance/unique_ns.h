// A namespace no other test process or test uses, for repositories of
// tests that share a real backend (PostgreSQL, etcd) with other suites.
#ifndef PAC_TESTS_CONFORMANCE_UNIQUE_NS_H_
#define PAC_TESTS_CONFORMANCE_UNIQUE_NS_H_

#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"

namespace pac::concurrency {

// "<what>-<pid>-<n>", n counting up within the process.
inline std::string UniqueNs(const char* what) {
  static std::atomic<int> n{0};
  return absl::StrCat(what, "-", getpid(), "-", n++);
}

}  // namespace pac::concurrency

#endif  // PAC_TESTS_CONFORMANCE_UNIQUE_NS_H_
