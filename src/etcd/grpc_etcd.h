// The gRPC client of a real etcd cluster (etcd v3 API, our trimmed proto).
// Several endpoints with failover (a call that finds its endpoint
// unavailable moves to the next one and retries within its deadline), the
// dial timeout, per-call deadlines and cancellation from the Context,
// username/password authentication with token refresh, and TLS (CA, client
// certificate and key, server name). grpc::Status becomes absl::Status here
// and nowhere else.
#ifndef PAC_SRC_ETCD_GRPC_ETCD_H_
#define PAC_SRC_ETCD_GRPC_ETCD_H_

#include <memory>

#include "absl/status/statusor.h"
#include "pac/concurrency/config.h"
#include "src/etcd/etcd_kv.h"

namespace spdlog {
class logger;
}

namespace pac::concurrency::internal {

// Connects (within dial_timeout), authenticates if a username is set, and
// returns the client. Unavailable when no endpoint answers, Unauthenticated
// for wrong credentials, FailedPrecondition for unreadable TLS files.
absl::StatusOr<std::shared_ptr<EtcdKV>> NewGrpcEtcd(
    const EtcdConfig& config, std::shared_ptr<spdlog::logger> logger);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_ETCD_GRPC_ETCD_H_
