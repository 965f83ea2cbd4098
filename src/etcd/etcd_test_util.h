// Helpers shared by the etcd driver's tests on the mock store.
#ifndef PAC_SRC_ETCD_ETCD_TEST_UTIL_H_
#define PAC_SRC_ETCD_ETCD_TEST_UTIL_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_rpc.pb.h"

namespace pac::concurrency::testing_etcd {

// A mock-mode driver over `kv` (a wrapper around a MockEtcd), with a 60 s
// lease TTL on `clock`.
inline std::unique_ptr<Driver> MockDriverOver(
    std::shared_ptr<internal::EtcdKV> kv, ManualClock* clock) {
  EtcdConfig c;
  c.mode = "mock";
  c.lease_ttl = absl::Seconds(60);
  DriverOptions o;
  o.clock = clock;
  auto d = internal::EtcdDriver::Create(std::move(kv), c, o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *std::move(d) : nullptr;
}

// Whether `req` succeeds with a put (`put`) or a delete of a slot key.
inline bool WritesASlot(const internal::etcdpb::TxnRequest& req, bool put) {
  for (const auto& op : req.success()) {
    const std::string& key =
        put ? op.request_put().key() : op.request_delete_range().key();
    if ((put ? op.has_request_put() : op.has_request_delete_range()) &&
        absl::StrContains(key, "/slot/")) {
      return true;
    }
  }
  return false;
}

}  // namespace pac::concurrency::testing_etcd

#endif  // PAC_SRC_ETCD_ETCD_TEST_UTIL_H_
