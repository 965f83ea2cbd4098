// The etcd operations the driver needs, behind one interface with two
// implementations: the gRPC client of a real cluster (grpc_etcd.cc) and an
// in-process store with the same semantics (mock_etcd.cc, modes "mock" and
// "memory"). The generated protobuf types stay inside src/etcd/.
#ifndef PAC_SRC_ETCD_ETCD_KV_H_
#define PAC_SRC_ETCD_ETCD_KV_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "pac/concurrency/context.h"
#include "src/etcd/etcd_rpc.pb.h"

namespace pac::concurrency::internal {

namespace etcdpb = ::etcdserverpb;

// A running watch; stopped when destroyed.
class EtcdWatch {
 public:
  virtual ~EtcdWatch() = default;
};

// Called with each batch of events (all of one revision or more), or with
// `compacted` set when the start revision was compacted away (then `events`
// is empty and the watch has ended), or with `broken` when the stream
// failed (the watch has ended; the caller resumes from the last revision).
struct WatchBatch {
  std::vector<etcdpb::Event> events;
  int64_t revision = 0;          // header revision of the response
  int64_t compact_revision = 0;  // > 0: compacted
  bool broken = false;
};
using WatchFn = std::function<void(const WatchBatch&)>;

class EtcdKV {
 public:
  virtual ~EtcdKV() = default;
  virtual absl::StatusOr<etcdpb::RangeResponse> Range(
      const Context& ctx, const etcdpb::RangeRequest& req) = 0;
  virtual absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) = 0;
  // As Txn, for a Txn that admits queued runs, which wait for it: the
  // batcher (txn_batcher.h) sends it without waiting for a request slot.
  // Elsewhere it is Txn (a subclass that overrides Txn gets it too).
  virtual absl::StatusOr<etcdpb::TxnResponse> AdmittingTxn(
      const Context& ctx, const etcdpb::TxnRequest& req) {
    return Txn(ctx, req);
  }
  virtual absl::StatusOr<etcdpb::PutResponse> Put(
      const Context& ctx, const etcdpb::PutRequest& req) = 0;
  // Grants a lease of `ttl_seconds`; returns its id.
  virtual absl::StatusOr<int64_t> LeaseGrant(const Context& ctx,
                                             int64_t ttl_seconds) = 0;
  virtual absl::Status LeaseRevoke(const Context& ctx, int64_t id) = 0;
  // One keepalive; returns the remaining TTL in seconds (<= 0: expired).
  virtual absl::StatusOr<int64_t> LeaseKeepAlive(const Context& ctx,
                                                 int64_t id) = 0;
  // Remaining TTL of a lease in seconds (<= 0: expired or unknown).
  virtual absl::StatusOr<int64_t> LeaseTimeToLive(const Context& ctx,
                                                  int64_t id) = 0;
  // Watches [key, range_end) from `start_revision` (0: now). Events carry
  // the key's previous value (prev_kv) when it had one.
  virtual absl::StatusOr<std::unique_ptr<EtcdWatch>> Watch(
      const std::string& key, const std::string& range_end,
      int64_t start_revision, WatchFn fn) = 0;
  virtual absl::Status Compact(const Context& ctx, int64_t revision) = 0;
};

// An EtcdKV that passes every call on to another; a subclass overrides
// what it changes (the Txn batcher, test wrappers).
class ForwardingEtcdKV : public EtcdKV {
 public:
  explicit ForwardingEtcdKV(std::shared_ptr<EtcdKV> inner)
      : inner_(std::move(inner)) {}
  absl::StatusOr<etcdpb::RangeResponse> Range(
      const Context& ctx, const etcdpb::RangeRequest& req) override {
    return inner_->Range(ctx, req);
  }
  absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) override {
    return inner_->Txn(ctx, req);
  }
  absl::StatusOr<etcdpb::PutResponse> Put(
      const Context& ctx, const etcdpb::PutRequest& req) override {
    return inner_->Put(ctx, req);
  }
  absl::StatusOr<int64_t> LeaseGrant(const Context& ctx,
                                     int64_t ttl_seconds) override {
    return inner_->LeaseGrant(ctx, ttl_seconds);
  }
  absl::Status LeaseRevoke(const Context& ctx, int64_t id) override {
    return inner_->LeaseRevoke(ctx, id);
  }
  absl::StatusOr<int64_t> LeaseKeepAlive(const Context& ctx,
                                         int64_t id) override {
    return inner_->LeaseKeepAlive(ctx, id);
  }
  absl::StatusOr<int64_t> LeaseTimeToLive(const Context& ctx,
                                          int64_t id) override {
    return inner_->LeaseTimeToLive(ctx, id);
  }
  absl::StatusOr<std::unique_ptr<EtcdWatch>> Watch(const std::string& key,
                                                   const std::string& range_end,
                                                   int64_t start_revision,
                                                   WatchFn fn) override {
    return inner_->Watch(key, range_end, start_revision, std::move(fn));
  }
  absl::Status Compact(const Context& ctx, int64_t revision) override {
    return inner_->Compact(ctx, revision);
  }

 protected:
  const std::shared_ptr<EtcdKV> inner_;
};

// The end of the range of all keys that start with `prefix`.
std::string PrefixEnd(const std::string& prefix);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_ETCD_ETCD_KV_H_
