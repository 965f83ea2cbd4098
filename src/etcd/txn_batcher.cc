#include "src/etcd/txn_batcher.h"

#include <algorithm>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "src/common/mutex.h"

namespace pac::concurrency::internal {
namespace {

// [begin, end) in etcd's byte order; an empty `end` is unbounded.
struct Interval {
  std::string begin, end;
};

bool Overlap(const Interval& a, const Interval& b) {
  const bool a_before_b_ends = b.end.empty() || a.begin < b.end;
  const bool b_before_a_ends = a.end.empty() || b.begin < a.end;
  return a_before_b_ends && b_before_a_ends;
}

// etcd's (key, range_end): no range_end is the key alone; "\0" is every key
// from `key` on.
void AddKey(const std::string& key, const std::string& range_end,
            std::vector<Interval>* out) {
  if (range_end.empty()) {
    out->push_back({key, key + std::string(1, '\0')});
  } else if (range_end == std::string(1, '\0')) {
    out->push_back({key, ""});
  } else {
    out->push_back({key, range_end});
  }
}

// What a Txn may read (compares, ranges) and write (puts, deletes), in
// either branch, nested Txns included.
struct Footprint {
  std::vector<Interval> compares, ranges, writes;
};

void AddOps(const google::protobuf::RepeatedPtrField<etcdpb::RequestOp>& ops,
            Footprint* out);

void AddFootprint(const etcdpb::TxnRequest& req, Footprint* out) {
  for (const auto& c : req.compare()) {
    AddKey(c.key(), c.range_end(), &out->compares);
  }
  AddOps(req.success(), out);
  AddOps(req.failure(), out);
}

void AddOps(const google::protobuf::RepeatedPtrField<etcdpb::RequestOp>& ops,
            Footprint* out) {
  for (const auto& op : ops) {
    if (op.has_request_range()) {
      AddKey(op.request_range().key(), op.request_range().range_end(),
             &out->ranges);
    } else if (op.has_request_put()) {
      AddKey(op.request_put().key(), "", &out->writes);
    } else if (op.has_request_delete_range()) {
      AddKey(op.request_delete_range().key(),
             op.request_delete_range().range_end(), &out->writes);
    } else if (op.has_request_txn()) {
      AddFootprint(op.request_txn(), out);
    }
  }
}

bool Disjoint(const std::vector<Interval>& a, const std::vector<Interval>& b) {
  for (const Interval& x : a) {
    for (const Interval& y : b) {
      if (Overlap(x, y)) return false;
    }
  }
  return true;
}

// Whether `fp` reads (by compare or range) none of `writes`.
bool ReadsNone(const Footprint& fp, const std::vector<Interval>& writes) {
  return Disjoint(writes, fp.compares) && Disjoint(writes, fp.ranges);
}

// Whether two Txns are independent: neither writes what the other reads or
// writes. (Both reading one key is harmless.) Then they may go in either
// order.
bool Independent(const Footprint& a, const Footprint& b) {
  return Disjoint(a.writes, b.writes) && ReadsNone(b, a.writes) &&
         ReadsNone(a, b.writes);
}

// Whether `a` may come before `b` in one request, as if sent first. etcd
// decides `b`'s compares before `a` writes, so they must not read what `a`
// writes; `b`'s ranges run after `a`'s writes and see them, as they would
// have one after the other. `b` must not write what `a` reads at all: `a`'s
// answer (a range, or the view a success leaves) is taken as the state at
// the request's revision, which `b`'s writes share. No key is written by
// both.
bool MayPrecede(const Footprint& a, const Footprint& b) {
  return Disjoint(a.writes, b.writes) && Disjoint(a.writes, b.compares) &&
         ReadsNone(a, b.writes);
}

// Errors with which etcd refuses a whole request before applying any of it,
// for what one of its Txns asked.
bool RejectedForAMember(const absl::Status& s) {
  return absl::IsInvalidArgument(s) || absl::IsNotFound(s) ||
         absl::IsFailedPrecondition(s) || absl::IsResourceExhausted(s) ||
         absl::IsOutOfRange(s) || absl::IsPermissionDenied(s);
}

class TxnBatcherImpl final : public TxnBatcher {
 public:
  TxnBatcherImpl(std::shared_ptr<EtcdKV> inner, TxnBatchOptions options)
      : TxnBatcher(std::move(inner)),
        max_batch_(std::max<size_t>(1, options.max_batch)),
        max_in_flight_(std::max(1, options.max_in_flight)) {}

  Stats stats() const override {
    MutexLock lock(&mu_);
    return stats_;
  }

  absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) override;
  absl::StatusOr<etcdpb::TxnResponse> AdmittingTxn(
      const Context& ctx, const etcdpb::TxnRequest& req) override;

 private:
  struct Member {
    etcdpb::TxnRequest req;
    Footprint footprint;
    absl::Time deadline;
    bool sent = false;
    bool done = false;
    absl::StatusOr<etcdpb::TxnResponse> result;
    // Its caller waits on this alone: woken when its Txn is answered, or
    // when it is first in line and a request is free (it sends the next
    // batch), not by every batch that ends.
    CondVar cv;
  };
  using Batch = std::vector<std::shared_ptr<Member>>;

  // Takes the next batch from `pending_`: in arrival order, each member
  // independent of every earlier pending one (taken or left), so Txns
  // that are not keep their order.
  Batch TakeBatchLocked() PAC_REQUIRES(mu_);
  // Sends `req` at once, alone, as is (no copy, no footprint), counted in
  // `*in_flight` (in_flight_ or admitting_in_flight_) while it is.
  absl::StatusOr<etcdpb::TxnResponse> SendAloneLocked(
      const Context& ctx, const etcdpb::TxnRequest& req, int* in_flight)
      PAC_REQUIRES(mu_);
  // Wakes the caller first in line, to send the next batch, if a request
  // is free.
  void WakeNextSenderLocked() PAC_REQUIRES(mu_);
  // Sends `batch` and records each member's result.
  void Send(Batch& batch, const Member* self, const Context& ctx)
      PAC_EXCLUDES(mu_);
  // Sends one member's Txn alone: the sender's own (`self`) with the
  // sender's context (`ctx`), so that cancelling it cancels the call, as
  // without batching; another's with its deadline.
  absl::StatusOr<etcdpb::TxnResponse> SendOne(const Member& m,
                                              const Member* self,
                                              const Context& ctx);

  const size_t max_batch_;
  const int max_in_flight_;
  mutable Mutex mu_;
  std::deque<std::shared_ptr<Member>> pending_ PAC_GUARDED_BY(mu_);
  int in_flight_ PAC_GUARDED_BY(mu_) = 0;
  int admitting_in_flight_ PAC_GUARDED_BY(mu_) = 0;  // 0 or 1
  Stats stats_ PAC_GUARDED_BY(mu_);
};

TxnBatcherImpl::Batch TxnBatcherImpl::TakeBatchLocked() {
  Batch batch;
  std::vector<const Footprint*> left;  // earlier pending Txns not taken
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (batch.size() == max_batch_) break;
    const Footprint& fp = (*it)->footprint;
    // Goes ahead of the earlier ones left behind only if independent of
    // them; in the batch, at its end or else at its front.
    bool take = std::all_of(
        left.begin(), left.end(),
        [&](const Footprint* other) { return Independent(fp, *other); });
    bool front = false;
    if (take) {
      take = std::all_of(batch.begin(), batch.end(), [&](const auto& m) {
        return MayPrecede(m->footprint, fp);
      });
      if (!take) {
        take = front = std::all_of(
            batch.begin(), batch.end(),
            [&](const auto& m) { return MayPrecede(fp, m->footprint); });
      }
    }
    if (!take) {
      left.push_back(&fp);
      ++it;
      continue;
    }
    (*it)->sent = true;
    batch.insert(front ? batch.begin() : batch.end(), *it);
    it = pending_.erase(it);
  }
  return batch;
}

absl::StatusOr<etcdpb::TxnResponse> TxnBatcherImpl::SendOne(
    const Member& m, const Member* self, const Context& ctx) {
  return inner_->Txn(
      &m == self ? ctx
                 : Context::WithDeadline(Context::Background(), m.deadline),
      m.req);
}

void TxnBatcherImpl::Send(Batch& batch, const Member* self,
                          const Context& ctx) {
  if (batch.size() == 1) {
    batch[0]->result = SendOne(*batch[0], self, ctx);
  } else {
    etcdpb::TxnRequest all;
    absl::Time deadline = absl::InfinitePast();
    for (auto& m : batch) {
      all.add_success()->mutable_request_txn()->Swap(&m->req);
      deadline = std::max(deadline, m->deadline);
    }
    auto r = inner_->Txn(Context::WithDeadline(Context::Background(), deadline),
                         all);
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i]->req.Swap(
          all.mutable_success(static_cast<int>(i))->mutable_request_txn());
    }
    if (r.ok() && r->responses_size() != static_cast<int>(batch.size())) {
      r = absl::InternalError("etcd: a batch Txn answered the wrong count");
    }
    if (r.ok()) {
      for (size_t i = 0; i < batch.size(); ++i) {
        etcdpb::TxnResponse one;
        one.Swap(
            r->mutable_responses(static_cast<int>(i))->mutable_response_txn());
        *one.mutable_header() = r->header();
        batch[i]->result = std::move(one);
      }
    } else if (RejectedForAMember(r.status())) {
      for (auto& m : batch) m->result = SendOne(*m, self, ctx);
    } else {
      for (auto& m : batch) m->result = r.status();
    }
  }
  {
    MutexLock lock(&mu_);
    ++stats_.batches;
    for (auto& m : batch) m->done = true;
  }
  // Woken after the unlock, so that a member does not wake only to wait
  // for the mutex. `batch` keeps every member (and its cv) alive.
  for (auto& m : batch) m->cv.NotifyOne();
}

void TxnBatcherImpl::WakeNextSenderLocked() {
  if (in_flight_ < max_in_flight_ && !pending_.empty()) {
    pending_.front()->cv.NotifyOne();
  }
}

absl::StatusOr<etcdpb::TxnResponse> TxnBatcherImpl::SendAloneLocked(
    const Context& ctx, const etcdpb::TxnRequest& req, int* in_flight) {
  ++*in_flight;
  mu_.Unlock();
  auto r = inner_->Txn(ctx, req);
  mu_.Lock();
  --*in_flight;
  ++stats_.batches;
  ++stats_.txns;
  // A caller that came meanwhile may send now (the admitting request
  // holds none of theirs).
  if (in_flight == &in_flight_) WakeNextSenderLocked();
  return r;
}

absl::StatusOr<etcdpb::TxnResponse> TxnBatcherImpl::AdmittingTxn(
    const Context& ctx, const etcdpb::TxnRequest& req) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  {
    MutexLock lock(&mu_);
    if (admitting_in_flight_ == 0) {
      return SendAloneLocked(ctx, req, &admitting_in_flight_);
    }
  }
  return Txn(ctx, req);
}

absl::StatusOr<etcdpb::TxnResponse> TxnBatcherImpl::Txn(
    const Context& ctx, const etcdpb::TxnRequest& req) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  {
    // Nobody waiting and room in flight: sent at once, alone, as is (no
    // copy, no footprint).
    MutexLock lock(&mu_);
    if (in_flight_ < max_in_flight_ && pending_.empty()) {
      return SendAloneLocked(ctx, req, &in_flight_);
    }
  }
  auto m = std::make_shared<Member>();
  m->req = req;
  AddFootprint(req, &m->footprint);
  m->deadline = ctx.deadline();
  WakeOnCancel wake(ctx, &mu_, &m->cv);  // a cancelled caller stops waiting
  absl::StatusOr<etcdpb::TxnResponse> out;
  mu_.Lock();
  pending_.push_back(m);
  while (true) {
    if (m->done) {
      out = std::move(m->result);
      ++stats_.txns;
      break;
    }
    if (in_flight_ < max_in_flight_ && !pending_.empty()) {
      Batch batch = TakeBatchLocked();
      ++in_flight_;
      mu_.Unlock();
      Send(batch, m.get(), ctx);
      mu_.Lock();
      --in_flight_;
      // Still waiting, this caller sends the next batch itself.
      if (m->done) WakeNextSenderLocked();
      continue;
    }
    if (absl::Status s = ctx.Err(); !s.ok()) {
      // Not sent yet: withdrawn. Sent: its outcome is unknown to the caller,
      // as with a call abandoned on its deadline.
      if (!m->sent) std::erase(pending_, m);
      out = s;
      break;
    }
    m->cv.WaitUntil(&mu_, ctx.deadline());
  }
  mu_.Unlock();
  return out;
}

}  // namespace

std::shared_ptr<TxnBatcher> NewTxnBatcher(std::shared_ptr<EtcdKV> inner,
                                          TxnBatchOptions options) {
  return std::make_shared<TxnBatcherImpl>(std::move(inner), options);
}

}  // namespace pac::concurrency::internal
