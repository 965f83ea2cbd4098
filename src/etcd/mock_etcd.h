// An in-process etcd: a revisioned, sorted key space with leases, compare-
// and-swap transactions, watches with history and compaction, all under one
// mutex. It keeps the semantics of the etcd operations the driver uses
// (EtcdKV), so the same driver code runs in "mock"/"memory" mode without a
// server. Lease expiry follows an injectable Clock.
#ifndef PAC_SRC_ETCD_MOCK_ETCD_H_
#define PAC_SRC_ETCD_MOCK_ETCD_H_

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "pac/concurrency/clock.h"
#include "src/common/mutex.h"
#include "src/etcd/etcd_kv.h"

namespace pac::concurrency::internal {

class MockEtcd final : public EtcdKV {
 public:
  // etcd's defaults for the request limits it enforces as etcd 3.4 does:
  // `--max-txn-ops` (each of a Txn's compares, success and failure ops)
  // and `--max-request-bytes`. Over them: InvalidArgument, etcd's message.
  static constexpr int kMaxTxnOps = 128;
  static constexpr size_t kMaxRequestBytes = 1536 * 1024;

  explicit MockEtcd(Clock* clock);
  ~MockEtcd() override;

  absl::StatusOr<etcdpb::RangeResponse> Range(
      const Context& ctx, const etcdpb::RangeRequest& req) override;
  absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) override;
  absl::StatusOr<etcdpb::PutResponse> Put(
      const Context& ctx, const etcdpb::PutRequest& req) override;
  absl::StatusOr<int64_t> LeaseGrant(const Context& ctx,
                                     int64_t ttl_seconds) override;
  absl::Status LeaseRevoke(const Context& ctx, int64_t id) override;
  absl::StatusOr<int64_t> LeaseKeepAlive(const Context& ctx,
                                         int64_t id) override;
  absl::StatusOr<int64_t> LeaseTimeToLive(const Context& ctx,
                                          int64_t id) override;
  absl::StatusOr<std::unique_ptr<EtcdWatch>> Watch(const std::string& key,
                                                   const std::string& range_end,
                                                   int64_t start_revision,
                                                   WatchFn fn) override;
  absl::Status Compact(const Context& ctx, int64_t revision) override;

  // Test hooks: while held, watch events wait (as on a slow stream);
  // DrainDeliveriesForTest waits until every event so far was delivered.
  void HoldDeliveriesForTest(bool hold) PAC_EXCLUDES(mu_);
  void DrainDeliveriesForTest() PAC_EXCLUDES(mu_);

 private:
  static absl::Status CheckRequestSize(size_t bytes);
  struct LeaseRec {
    int64_t ttl;
    absl::Time expires_at;
    std::set<std::string> keys;
  };
  struct Watcher {
    std::string key, range_end;
    WatchFn fn;
    bool stopped = false;
    bool in_flight = false;  // fn is running on the delivery thread
  };
  class WatchImpl;

  bool InRange(const std::string& k, const std::string& key,
               const std::string& range_end) const;
  etcdpb::ResponseHeader Header() const PAC_REQUIRES(mu_);
  void RangeLocked(const etcdpb::RangeRequest& req, etcdpb::RangeResponse* out)
      PAC_REQUIRES(mu_);
  absl::Status PutLocked(const etcdpb::PutRequest& req, int64_t rev,
                         etcdpb::PutResponse* out) PAC_REQUIRES(mu_);
  int64_t DeleteLocked(const std::string& key, const std::string& range_end,
                       int64_t rev, std::vector<etcdpb::KeyValue>* prev)
      PAC_REQUIRES(mu_);
  bool CompareLocked(const etcdpb::Compare& c) PAC_REQUIRES(mu_);
  // A Txn in three passes over its chosen branches, nested Txns included
  // (`path`: each Txn's outcome, depth first): choose, check leases, apply.
  // ApplyLocked returns whether it wrote.
  void PathLocked(const etcdpb::TxnRequest& req, std::vector<bool>* path)
      PAC_REQUIRES(mu_);
  bool HeldLocked() const PAC_REQUIRES(mu_) { return hold_ && !stop_; }
  bool LeasesExistLocked(const etcdpb::TxnRequest& req,
                         const std::vector<bool>& path, size_t* at)
      PAC_REQUIRES(mu_);
  bool ApplyLocked(const etcdpb::TxnRequest& req, const std::vector<bool>& path,
                   size_t* at, int64_t rev, etcdpb::TxnResponse* out)
      PAC_REQUIRES(mu_);
  void ExpireLocked(absl::Time now) PAC_REQUIRES(mu_);
  void Record(etcdpb::Event ev, int64_t rev) PAC_REQUIRES(mu_);
  void Flush() PAC_EXCLUDES(mu_);
  void ExpiryLoop();
  void DeliveryLoop();

  Clock* const clock_;
  Mutex mu_;
  CondVar cv_;  // expiry thread
  std::map<std::string, etcdpb::KeyValue> kv_ PAC_GUARDED_BY(mu_);
  int64_t revision_ PAC_GUARDED_BY(mu_) = 1;
  int64_t compact_revision_ PAC_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<int64_t, etcdpb::Event>> history_ PAC_GUARDED_BY(mu_);
  std::map<int64_t, LeaseRec> leases_ PAC_GUARDED_BY(mu_);
  int64_t next_lease_ PAC_GUARDED_BY(mu_) = 0x1000;
  std::vector<std::shared_ptr<Watcher>> watchers_ PAC_GUARDED_BY(mu_);
  // Batches waiting for the delivery thread.
  std::deque<std::pair<std::shared_ptr<Watcher>, WatchBatch>> outbox_
      PAC_GUARDED_BY(mu_);
  CondVar outbox_cv_;
  CondVar delivered_cv_;  // a delivery finished (in_flight went false)
  bool stop_ PAC_GUARDED_BY(mu_) = false;
  bool kicked_ PAC_GUARDED_BY(mu_) = false;
  bool hold_ PAC_GUARDED_BY(mu_) = false;        // HoldDeliveriesForTest
  bool delivering_ PAC_GUARDED_BY(mu_) = false;  // a batch is out
  int clock_listener_ = 0;
  std::thread expiry_thread_;
  std::thread delivery_thread_;
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_ETCD_MOCK_ETCD_H_
