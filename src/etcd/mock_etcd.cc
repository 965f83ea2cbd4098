#include "src/etcd/mock_etcd.h"

#include <algorithm>

namespace pac::concurrency::internal {
namespace {
constexpr size_t kMaxHistory = 100000;
}  // namespace

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

class MockEtcd::WatchImpl final : public EtcdWatch {
 public:
  WatchImpl(MockEtcd* etcd, std::shared_ptr<Watcher> w)
      : etcd_(etcd), w_(std::move(w)) {}
  // Like a real watch stream: once destroyed, the callback is not running
  // and never runs again (unless destroyed from inside the callback).
  ~WatchImpl() override {
    MutexLock lock(&etcd_->mu_);
    w_->stopped = true;
    auto& ws = etcd_->watchers_;
    ws.erase(std::remove(ws.begin(), ws.end(), w_), ws.end());
    if (std::this_thread::get_id() == etcd_->delivery_thread_.get_id()) return;
    while (w_->in_flight) etcd_->delivered_cv_.Wait(&etcd_->mu_);
  }

 private:
  MockEtcd* etcd_;
  std::shared_ptr<Watcher> w_;
};

MockEtcd::MockEtcd(Clock* clock) : clock_(clock) {
  clock_listener_ = clock_->AddAdvanceListener([this] {
    {
      MutexLock lock(&mu_);
      kicked_ = true;
    }
    cv_.NotifyAll();
  });
  expiry_thread_ = std::thread([this] { ExpiryLoop(); });
  delivery_thread_ = std::thread([this] { DeliveryLoop(); });
}

MockEtcd::~MockEtcd() {
  clock_->RemoveAdvanceListener(clock_listener_);
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.NotifyAll();
  outbox_cv_.NotifyAll();
  expiry_thread_.join();
  delivery_thread_.join();
}

bool MockEtcd::InRange(const std::string& k, const std::string& key,
                       const std::string& range_end) const {
  if (range_end.empty()) return k == key;
  if (range_end == std::string(1, '\0')) return k >= key;
  return k >= key && k < range_end;
}

etcdpb::ResponseHeader MockEtcd::Header() const {
  etcdpb::ResponseHeader h;
  h.set_cluster_id(1);
  h.set_member_id(1);
  h.set_revision(revision_);
  return h;
}

void MockEtcd::Record(etcdpb::Event ev, int64_t rev) {
  history_.emplace_back(rev, ev);
  while (history_.size() > kMaxHistory) {
    compact_revision_ = std::max(compact_revision_, history_.front().first);
    history_.pop_front();
  }
  for (const auto& w : watchers_) {
    if (w->stopped || !InRange(ev.kv().key(), w->key, w->range_end)) continue;
    // As etcd: all events of one revision reach a watcher in one response.
    bool merged = false;
    for (auto it = outbox_.rbegin();
         it != outbox_.rend() && it->second.revision == rev &&
         it->second.compact_revision == 0;
         ++it) {
      if (it->first == w) {
        it->second.events.push_back(ev);
        merged = true;
        break;
      }
    }
    if (merged) continue;
    WatchBatch b;
    b.events.push_back(ev);
    b.revision = rev;
    outbox_.emplace_back(w, std::move(b));
  }
}

void MockEtcd::RangeLocked(const etcdpb::RangeRequest& req,
                           etcdpb::RangeResponse* out) {
  *out->mutable_header() = Header();
  std::vector<const etcdpb::KeyValue*> hits;
  if (req.range_end().empty()) {
    auto it = kv_.find(req.key());
    if (it != kv_.end()) hits.push_back(&it->second);
  } else {
    for (auto it = kv_.lower_bound(req.key()); it != kv_.end(); ++it) {
      if (!InRange(it->first, req.key(), req.range_end())) break;
      hits.push_back(&it->second);
    }
  }
  if (req.sort_order() == etcdpb::RangeRequest::DESCEND) {
    std::reverse(hits.begin(), hits.end());
  }
  out->set_count(static_cast<int64_t>(hits.size()));
  if (req.count_only()) return;
  for (const auto* kv : hits) {
    if (req.limit() > 0 && out->kvs_size() >= req.limit()) {
      out->set_more(true);
      break;
    }
    etcdpb::KeyValue* o = out->add_kvs();
    *o = *kv;
    if (req.keys_only()) o->clear_value();
  }
}

absl::Status MockEtcd::PutLocked(const etcdpb::PutRequest& req, int64_t rev,
                                 etcdpb::PutResponse* out) {
  if (req.lease() != 0 && !leases_.count(req.lease())) {
    return absl::NotFoundError("etcdserver: requested lease not found");
  }
  etcdpb::KeyValue& kv = kv_[req.key()];
  if (req.prev_kv() && kv.version() > 0 && out != nullptr) {
    *out->mutable_prev_kv() = kv;
  }
  etcdpb::Event ev;
  ev.set_type(etcdpb::Event::PUT);
  if (kv.version() > 0) *ev.mutable_prev_kv() = kv;
  if (kv.version() == 0) {
    kv.set_key(req.key());
    kv.set_create_revision(rev);
  }
  if (kv.lease() != 0 && kv.lease() != req.lease()) {
    auto it = leases_.find(kv.lease());
    if (it != leases_.end()) it->second.keys.erase(req.key());
  }
  kv.set_mod_revision(rev);
  kv.set_version(kv.version() + 1);
  kv.set_value(req.value());
  kv.set_lease(req.lease());
  if (req.lease() != 0) leases_[req.lease()].keys.insert(req.key());
  *ev.mutable_kv() = kv;
  Record(std::move(ev), rev);
  return absl::OkStatus();
}

int64_t MockEtcd::DeleteLocked(const std::string& key,
                               const std::string& range_end, int64_t rev,
                               std::vector<etcdpb::KeyValue>* prev) {
  std::vector<std::string> doomed;
  if (range_end.empty()) {
    if (kv_.count(key)) doomed.push_back(key);
  } else {
    for (auto it = kv_.lower_bound(key);
         it != kv_.end() && InRange(it->first, key, range_end); ++it) {
      doomed.push_back(it->first);
    }
  }
  for (const std::string& k : doomed) {
    etcdpb::KeyValue old = kv_[k];
    if (old.lease() != 0) {
      auto it = leases_.find(old.lease());
      if (it != leases_.end()) it->second.keys.erase(k);
    }
    kv_.erase(k);
    if (prev != nullptr) prev->push_back(old);
    etcdpb::Event ev;
    ev.set_type(etcdpb::Event::DELETE);
    ev.mutable_kv()->set_key(k);
    ev.mutable_kv()->set_mod_revision(rev);
    *ev.mutable_prev_kv() = old;
    Record(std::move(ev), rev);
  }
  return static_cast<int64_t>(doomed.size());
}

bool MockEtcd::CompareLocked(const etcdpb::Compare& c) {
  std::vector<etcdpb::KeyValue> subjects;
  if (c.range_end().empty()) {
    auto it = kv_.find(c.key());
    subjects.push_back(it == kv_.end() ? etcdpb::KeyValue() : it->second);
  } else {
    for (auto it = kv_.lower_bound(c.key());
         it != kv_.end() && InRange(it->first, c.key(), c.range_end()); ++it) {
      subjects.push_back(it->second);
    }
    // As etcd: an empty range compares as one absent key (never for VALUE).
    if (subjects.empty()) {
      if (c.target() == etcdpb::Compare::VALUE) return false;
      subjects.push_back(etcdpb::KeyValue());
    }
  }
  for (const auto& kv : subjects) {
    int cmp = 0;
    auto num = [&](int64_t a, int64_t b) {
      cmp = a < b ? -1 : (a > b ? 1 : 0);
    };
    switch (c.target()) {
      case etcdpb::Compare::VERSION:
        num(kv.version(), c.version());
        break;
      case etcdpb::Compare::CREATE:
        num(kv.create_revision(), c.create_revision());
        break;
      case etcdpb::Compare::MOD:
        num(kv.mod_revision(), c.mod_revision());
        break;
      case etcdpb::Compare::LEASE:
        num(kv.lease(), c.lease());
        break;
      case etcdpb::Compare::VALUE:
        cmp = kv.value() < c.value() ? -1 : (kv.value() > c.value() ? 1 : 0);
        break;
      default:
        return false;
    }
    bool ok = false;
    switch (c.result()) {
      case etcdpb::Compare::EQUAL:
        ok = cmp == 0;
        break;
      case etcdpb::Compare::GREATER:
        ok = cmp > 0;
        break;
      case etcdpb::Compare::LESS:
        ok = cmp < 0;
        break;
      case etcdpb::Compare::NOT_EQUAL:
        ok = cmp != 0;
        break;
      default:
        ok = false;
    }
    if (!ok) return false;
  }
  return true;
}

absl::StatusOr<etcdpb::RangeResponse> MockEtcd::Range(
    const Context& ctx, const etcdpb::RangeRequest& req) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  MutexLock lock(&mu_);
  ExpireLocked(clock_->Now());
  etcdpb::RangeResponse out;
  RangeLocked(req, &out);
  return out;
}

absl::StatusOr<etcdpb::PutResponse> MockEtcd::Put(
    const Context& ctx, const etcdpb::PutRequest& req) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckRequestSize(req.ByteSizeLong()); !s.ok()) return s;
  etcdpb::PutResponse out;
  {
    MutexLock lock(&mu_);
    ExpireLocked(clock_->Now());
    if (absl::Status s = PutLocked(req, revision_ + 1, &out); !s.ok()) return s;
    ++revision_;
    *out.mutable_header() = Header();
  }
  Flush();
  return out;
}

void MockEtcd::PathLocked(const etcdpb::TxnRequest& req,
                          std::vector<bool>* path) {
  bool ok = true;
  for (const auto& c : req.compare()) ok = ok && CompareLocked(c);
  path->push_back(ok);
  for (const auto& op : ok ? req.success() : req.failure()) {
    if (op.has_request_txn()) PathLocked(op.request_txn(), path);
  }
}

bool MockEtcd::LeasesExistLocked(const etcdpb::TxnRequest& req,
                                 const std::vector<bool>& path, size_t* at) {
  const bool ok = path[(*at)++];
  for (const auto& op : ok ? req.success() : req.failure()) {
    if (op.has_request_put() && op.request_put().lease() != 0 &&
        !leases_.count(op.request_put().lease())) {
      return false;
    }
    if (op.has_request_txn() &&
        !LeasesExistLocked(op.request_txn(), path, at)) {
      return false;
    }
  }
  return true;
}

bool MockEtcd::ApplyLocked(const etcdpb::TxnRequest& req,
                           const std::vector<bool>& path, size_t* at,
                           int64_t rev, etcdpb::TxnResponse* out) {
  const bool ok = path[(*at)++];
  out->set_succeeded(ok);
  bool wrote = false;
  for (const auto& op : ok ? req.success() : req.failure()) {
    etcdpb::ResponseOp* r = out->add_responses();
    if (op.has_request_range()) {
      RangeLocked(op.request_range(), r->mutable_response_range());
    } else if (op.has_request_put()) {
      (void)PutLocked(op.request_put(), rev, r->mutable_response_put());
      wrote = true;
    } else if (op.has_request_delete_range()) {
      const auto& d = op.request_delete_range();
      int64_t n = DeleteLocked(d.key(), d.range_end(), rev, nullptr);
      r->mutable_response_delete_range()->set_deleted(n);
      wrote = wrote || n > 0;
    } else if (op.has_request_txn()) {
      wrote = ApplyLocked(op.request_txn(), path, at, rev,
                          r->mutable_response_txn()) ||
              wrote;
    }
  }
  return wrote;
}

namespace {

// As etcd checks a Txn before it runs: in one list of operations a key is
// put at most once, and not put where a delete of the same list reaches
// ("duplicate key given in txn request").
bool HasDuplicateKey(const etcdpb::TxnRequest& req) {
  for (const auto* ops : {&req.success(), &req.failure()}) {
    std::set<std::string> puts;
    for (const auto& op : *ops) {
      if (op.has_request_txn() && HasDuplicateKey(op.request_txn())) {
        return true;
      }
      if (!op.has_request_put()) continue;
      const std::string& k = op.request_put().key();
      if (!puts.insert(k).second) return true;
      for (const auto& d : *ops) {
        if (!d.has_request_delete_range()) continue;
        const auto& del = d.request_delete_range();
        const bool hit =
            del.range_end().empty()
                ? del.key() == k
                : (k >= del.key() && (del.range_end() == std::string(1, '\0') ||
                                      k < del.range_end()));
        if (hit) return true;
      }
    }
  }
  return false;
}

// As etcd 3.4 checks a Txn (checkTxnRequest): none of its compares,
// success ops and failure ops may number more than `max_ops`, and a nested
// Txn may have at most `max_ops` less its parent's greatest count.
bool TooManyOps(const etcdpb::TxnRequest& req, int max_ops) {
  const int count =
      std::max({req.compare_size(), req.success_size(), req.failure_size()});
  if (count > max_ops) return true;
  for (const auto* ops : {&req.success(), &req.failure()}) {
    for (const auto& op : *ops) {
      if (op.has_request_txn() &&
          TooManyOps(op.request_txn(), max_ops - count)) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

absl::Status MockEtcd::CheckRequestSize(size_t bytes) {
  if (bytes > kMaxRequestBytes) {
    return absl::InvalidArgumentError("etcdserver: request is too large");
  }
  return absl::OkStatus();
}

absl::StatusOr<etcdpb::TxnResponse> MockEtcd::Txn(
    const Context& ctx, const etcdpb::TxnRequest& req) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (TooManyOps(req, kMaxTxnOps)) {
    return absl::InvalidArgumentError(
        "etcdserver: too many operations in txn request");
  }
  if (absl::Status s = CheckRequestSize(req.ByteSizeLong()); !s.ok()) return s;
  if (HasDuplicateKey(req)) {
    return absl::InvalidArgumentError(
        "etcdserver: duplicate key given in txn request");
  }
  etcdpb::TxnResponse out;
  {
    MutexLock lock(&mu_);
    ExpireLocked(clock_->Now());
    // As etcd: every compare, nested Txns' too, is decided on the state
    // before the first write; then the chosen branches run in order, all
    // at one revision.
    std::vector<bool> path;
    PathLocked(req, &path);
    // Leases must exist before anything is written (all or nothing).
    size_t at = 0;
    if (!LeasesExistLocked(req, path, &at)) {
      return absl::NotFoundError("etcdserver: requested lease not found");
    }
    const int64_t rev = revision_ + 1;
    at = 0;
    if (ApplyLocked(req, path, &at, rev, &out)) revision_ = rev;
    *out.mutable_header() = Header();
  }
  Flush();
  return out;
}

absl::StatusOr<int64_t> MockEtcd::LeaseGrant(const Context& ctx,
                                             int64_t ttl_seconds) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  int64_t id;
  {
    MutexLock lock(&mu_);
    id = next_lease_++;
    leases_[id] =
        LeaseRec{ttl_seconds, clock_->Now() + absl::Seconds(ttl_seconds), {}};
  }
  cv_.NotifyAll();
  return id;
}

absl::Status MockEtcd::LeaseRevoke(const Context& ctx, int64_t id) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  {
    MutexLock lock(&mu_);
    auto it = leases_.find(id);
    if (it == leases_.end()) {
      return absl::NotFoundError("etcdserver: requested lease not found");
    }
    std::set<std::string> keys = it->second.keys;
    leases_.erase(it);
    if (!keys.empty()) {
      int64_t rev = ++revision_;
      for (const auto& k : keys) DeleteLocked(k, "", rev, nullptr);
    }
  }
  Flush();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> MockEtcd::LeaseKeepAlive(const Context& ctx,
                                                 int64_t id) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  MutexLock lock(&mu_);
  absl::Time now = clock_->Now();
  ExpireLocked(now);
  auto it = leases_.find(id);
  if (it == leases_.end()) return 0;
  it->second.expires_at = now + absl::Seconds(it->second.ttl);
  return it->second.ttl;
}

absl::StatusOr<int64_t> MockEtcd::LeaseTimeToLive(const Context& ctx,
                                                  int64_t id) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  MutexLock lock(&mu_);
  absl::Time now = clock_->Now();
  ExpireLocked(now);
  auto it = leases_.find(id);
  if (it == leases_.end()) return -1;
  return absl::ToInt64Seconds(it->second.expires_at - now);
}

void MockEtcd::ExpireLocked(absl::Time now) {
  std::vector<int64_t> expired;
  for (const auto& [id, l] : leases_) {
    if (l.expires_at <= now) expired.push_back(id);
  }
  for (int64_t id : expired) {
    std::set<std::string> keys = leases_[id].keys;
    leases_.erase(id);
    if (!keys.empty()) {
      int64_t rev = ++revision_;
      for (const auto& k : keys) DeleteLocked(k, "", rev, nullptr);
    }
  }
}

absl::StatusOr<std::unique_ptr<EtcdWatch>> MockEtcd::Watch(
    const std::string& key, const std::string& range_end,
    int64_t start_revision, WatchFn fn) {
  auto w = std::make_shared<Watcher>();
  w->key = key;
  w->range_end = range_end;
  w->fn = std::move(fn);
  {
    MutexLock lock(&mu_);
    // As etcd: history from the compaction revision on is kept, so a watch
    // may start there; earlier is compacted.
    if (start_revision > 0 && start_revision < compact_revision_) {
      WatchBatch b;
      b.compact_revision = compact_revision_;
      outbox_.emplace_back(w, std::move(b));
    } else {
      if (start_revision > 0) {
        for (const auto& [rev, ev] : history_) {
          if (rev < start_revision || !InRange(ev.kv().key(), key, range_end)) {
            continue;
          }
          if (!outbox_.empty() && outbox_.back().first == w &&
              outbox_.back().second.revision == rev) {
            outbox_.back().second.events.push_back(ev);  // one revision
            continue;
          }
          WatchBatch b;
          b.events.push_back(ev);
          b.revision = rev;
          outbox_.emplace_back(w, std::move(b));
        }
      }
      watchers_.push_back(w);
    }
  }
  Flush();
  return std::unique_ptr<EtcdWatch>(new WatchImpl(this, w));
}

absl::Status MockEtcd::Compact(const Context& ctx, int64_t revision) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  MutexLock lock(&mu_);
  if (revision <= compact_revision_) {
    return absl::OutOfRangeError(
        "etcdserver: mvcc: required revision has been compacted");
  }
  compact_revision_ = std::min(revision, revision_);
  while (!history_.empty() && history_.front().first < compact_revision_) {
    history_.pop_front();
  }
  return absl::OkStatus();
}

void MockEtcd::Flush() { outbox_cv_.NotifyAll(); }

void MockEtcd::HoldDeliveriesForTest(bool hold) {
  {
    MutexLock lock(&mu_);
    hold_ = hold;
  }
  outbox_cv_.NotifyAll();
}

void MockEtcd::DrainDeliveriesForTest() {
  MutexLock lock(&mu_);
  while (!stop_) {
    bool busy = !outbox_.empty() || delivering_;
    if (!busy) return;
    delivered_cv_.WaitUntil(&mu_, absl::Now() + absl::Milliseconds(10));
  }
}

void MockEtcd::ExpiryLoop() {
  MutexLock lock(&mu_);
  while (!stop_) {
    absl::Time now = clock_->Now();
    ExpireLocked(now);
    if (!outbox_.empty()) outbox_cv_.NotifyAll();
    absl::Time next = absl::InfiniteFuture();
    for (const auto& [id, l] : leases_) next = std::min(next, l.expires_at);
    absl::Time deadline = next == absl::InfiniteFuture()
                              ? absl::Now() + absl::Seconds(1)
                              : absl::Now() + (next - now);
    if (!kicked_) cv_.WaitUntil(&mu_, deadline);
    kicked_ = false;
  }
}

void MockEtcd::DeliveryLoop() {
  while (true) {
    std::deque<std::pair<std::shared_ptr<Watcher>, WatchBatch>> batch;
    {
      MutexLock lock(&mu_);
      while ((outbox_.empty() || HeldLocked()) && !stop_) {
        outbox_cv_.WaitUntil(&mu_, absl::Now() + absl::Milliseconds(100));
      }
      if (stop_) return;
      batch.swap(outbox_);
      delivering_ = true;
    }
    for (auto& [w, b] : batch) {
      {
        MutexLock lock(&mu_);
        if (w->stopped) continue;
        w->in_flight = true;
      }
      w->fn(b);
      {
        MutexLock lock(&mu_);
        w->in_flight = false;
      }
      delivered_cv_.NotifyAll();
    }
    {
      MutexLock lock(&mu_);
      delivering_ = false;
    }
    delivered_cv_.NotifyAll();
  }
}

}  // namespace pac::concurrency::internal
