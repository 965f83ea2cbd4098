// Settings of the throwaway etcd servers that scripts/etcd-test-server.sh
// exports (PAC_TEST_ETCD_*). Missing settings fail the test: never a skip.
#ifndef PAC_TESTS_CONFORMANCE_ETCD_TEST_ENV_H_
#define PAC_TESTS_CONFORMANCE_ETCD_TEST_ENV_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/config.h"
#include "tests/conformance/pg_test_env.h"

namespace pac::concurrency::conformance {

// `var` is PAC_TEST_ETCD_ENDPOINTS (single node) or
// PAC_TEST_ETCD_CLUSTER_ENDPOINTS (three nodes).
inline absl::StatusOr<EtcdConfig> TestEtcdConfig(
    const char* var = "PAC_TEST_ETCD_ENDPOINTS") {
  std::string eps = EnvOr(var);
  if (eps.empty()) {
    return absl::FailedPreconditionError(
        std::string(var) + " is not set: run the tests through `make test`");
  }
  EtcdConfig c;
  c.mode = "etcd";
  for (auto part : absl::StrSplit(eps, ',')) c.endpoints.emplace_back(part);
  c.dial_timeout = absl::Seconds(5);
  c.lease_ttl = absl::Seconds(2);
  return c;
}

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_ETCD_TEST_ENV_H_
