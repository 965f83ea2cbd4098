// Group commit for etcd Txns: an EtcdKV that sends the Txns of concurrent
// callers as one Txn, each caller's Txn nested in it (etcd >= 3.3 runs a
// `request_txn` op with its own compares and branches). One Txn costs etcd
// one request, one raft entry and one apply however many nested Txns it
// carries, so callers that would each have sent a Txn of their own share the
// cost: a controller whose workers act on many repositories at once gets
// more pairs per second from the same server.
//
// Correctness rests on one rule. etcd decides all compares of a batch on
// the state before its first write, then applies the chosen branches in
// order, at one revision, a range seeing the writes before it. So Txn B
// may follow Txn A in a batch when B's compares read nothing A writes, B
// writes nothing A reads (compares or ranges) and no key is written by
// both (MayPrecede): each then sees what it would have seen sent alone in
// that order, and each caller gets its own Txn's response, whose header is
// the batch's (a range in it shows its keys as they are at that
// revision). Guarded steps of one repository (which all write and compare
// its `meta`) never share a batch; a run joining the end of a queue may go
// before a release of it; read-only confirmations of one repository share
// a request that etcd serves as a read.
//
// Batching is adaptive: a Txn is sent at once, alone, while fewer than
// `max_in_flight` batches (by default one) are in flight; callers that come
// meanwhile wait and go in the next batch, sent by the caller first in line
// when a request frees up. One batch in flight rather than two makes fewer,
// larger requests, and etcd 3.4 pays much of a Txn's cost per request (it
// copies its buffer of uncommitted writes for each Txn's read view): 16
// workers on 100 repositories made 15% more pairs/s (docs/benchmarks.md). Each
// caller sleeps until its own Txn is answered or its turn to send comes: a
// batch that ends wakes its members and one sender, not every caller waiting
// (with 16 workers that waking cost 15% of the pairs/s). A lone caller
// therefore pays nothing. One more request is kept for a Txn that admits queued
// runs (AdmittingTxn): runs wait for it, and Txns that admit nobody (queue
// joins, say) would otherwise hold every request. It goes at once, alone,
// unless another such Txn is in flight; then it goes as any other. Txns that go
// ahead of waiting ones this way were sent concurrently with them, so either
// order is one the callers could see.
//
// Failure: a batch that etcd rejects as a whole for what one Txn asked (an
// unknown lease, too many operations, a permission) is sent again Txn by
// Txn, so each caller gets its own answer. Any other error (unavailable,
// deadline) is every member's, as it would have been had it been sent
// alone: its outcome is unknown. A batch's deadline is its members' latest;
// a caller whose own deadline passes, or whose context is cancelled, stops
// waiting with that error (a Txn not yet sent is withdrawn and never sent).
//
// Thread-safety: every method may be called from any thread. Ranges, puts,
// leases and watches go straight to the wrapped store.
#ifndef PAC_SRC_ETCD_TXN_BATCHER_H_
#define PAC_SRC_ETCD_TXN_BATCHER_H_

#include <cstddef>
#include <memory>

#include "src/etcd/etcd_kv.h"

namespace pac::concurrency::internal {

struct TxnBatchOptions {
  size_t max_batch = 64;  // nested Txns per batch (etcd allows 128 ops)
  int max_in_flight = 1;  // batches in flight at once, besides an admitting one
};

// Wraps `inner` (gRPC or mock). Counters for tests and benchmarks.
class TxnBatcher : public ForwardingEtcdKV {
 public:
  using ForwardingEtcdKV::ForwardingEtcdKV;
  struct Stats {
    int64_t txns = 0;     // Txn calls answered
    int64_t batches = 0;  // Txn requests sent to the wrapped store
  };
  virtual Stats stats() const = 0;
};

std::shared_ptr<TxnBatcher> NewTxnBatcher(std::shared_ptr<EtcdKV> inner,
                                          TxnBatchOptions options = {});

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_ETCD_TXN_BATCHER_H_
