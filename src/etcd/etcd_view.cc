// The etcd driver's view of a repository (RepoView): reading it in one
// Range, the cache of views that the watch keeps current (View, CacheView),
// decoding keys into a view (ApplyKv, ParseView), the queue's order, and
// Confirm, which checks a cached view against etcd without a range.
#include <algorithm>
#include <charconv>
#include <string>
#include <tuple>

#include "absl/cleanup/cleanup.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

absl::StatusOr<std::optional<EtcdDriver::RepoView>> EtcdDriver::Confirm(
    const Context& ctx, const RepoView& v) {
  // Compares only, so etcd serves it as a read (no log entry), and of
  // single keys: no walk over the repository's deleted keys, as a range
  // makes. Entries joined at the end of the queue do not move anyone
  // already in it, so they need no check.
  etcdpb::TxnRequest txn;
  AddMetaCompare(&txn, RepoPrefix(v.repo), v.meta_mod);
  (void)GuardSlots(&txn, v);
  *txn.add_failure() = RangeRepoOp(v.repo);
  auto tr = kv_->Txn(ctx, txn);
  if (!tr.ok()) {
    ForgetView(v.repo);
    return tr.status();
  }
  if (tr->succeeded()) return std::optional<RepoView>();
  RepoView now = ParseView(v.repo, tr->responses(0).response_range(),
                           tr->header().revision());
  CacheView(v.repo, now);
  return std::optional<RepoView>(std::move(now));
}

const EtcdDriver::QueueInfo* EtcdDriver::LastQueueKey(const RepoView& v) {
  const QueueInfo* last = nullptr;
  for (const QueueInfo& q : v.queue) {
    if (last == nullptr || q.key > last->key) last = &q;
  }
  return last;
}

std::set<const EtcdDriver::QueueInfo*> EtcdDriver::StaleEntries(
    const RepoView& v) {
  std::set<const QueueInfo*> out;
  std::set<std::string_view> seen;
  for (const QueueInfo& q : v.queue) {
    if (v.slots.count(q.run) > 0 || v.removed.count(q.run) > 0 ||
        !seen.insert(q.run).second) {
      out.insert(&q);
    }
  }
  return out;
}

etcdpb::RequestOp EtcdDriver::RangeRepoOp(const std::string& repo) const {
  const std::string p = RepoPrefix(repo);
  etcdpb::RequestOp op;
  auto* r = op.mutable_request_range();
  r->set_key(p);
  r->set_range_end(PrefixEnd(p));
  return op;
}

absl::StatusOr<EtcdDriver::RepoView> EtcdDriver::Read(const Context& ctx,
                                                      const std::string& repo) {
  etcdpb::RequestOp op = RangeRepoOp(repo);
  auto r = kv_->Range(ctx, op.request_range());
  if (!r.ok()) return r.status();
  RepoView v = ParseView(repo, *r, r->header().revision());
  CacheView(repo, v);
  return v;
}

absl::StatusOr<EtcdDriver::RepoView> EtcdDriver::View(const Context& ctx,
                                                      const std::string& repo,
                                                      bool* cached) {
  {
    MutexLock lock(&mu_);
    const absl::Time until =
        std::min(ctx.deadline(), absl::Now() + kOwnCommitWait);
    while (true) {
      auto it = views_.find(repo);
      // (Each cached slot costs a compare; etcd allows 128 per Txn.)
      if (it == views_.end() || it->second.slots.size() > kMaxGuardedSlots) {
        break;
      }
      auto own = own_commit_rev_.find(repo);
      if (own == own_commit_rev_.end() || it->second.revision >= own->second) {
        *cached = true;
        return it->second;
      }
      if (views_cv_.WaitUntil(&mu_, until)) break;  // timed out: read
    }
  }
  *cached = false;
  return Read(ctx, repo);
}

void EtcdDriver::ForgetView(const std::string& repo) {
  MutexLock lock(&mu_);
  views_.erase(repo);
}

void EtcdDriver::CacheView(const std::string& repo, const RepoView& v) {
  {
    MutexLock lock(&mu_);
    if (views_.size() >= kMaxCachedViews) views_.clear();
    auto it = views_.find(repo);
    // The watch already delivered a later change of the repository: this
    // view misses it and would not get it applied.
    auto seen = event_rev_.find(repo);
    const int64_t missed =
        std::max(event_rev_floor_, seen == event_rev_.end() ? 0 : seen->second);
    if (watch_started_.load() && missed > v.revision) {
      if (it != views_.end() && it->second.revision < missed) views_.erase(it);
    } else if (it == views_.end() || it->second.revision <= v.revision) {
      // Keep the newer of two views (a slow reader must not roll it back).
      views_[repo] = v;
    }
    NoteDeadlinesLocked(repo, v);
  }
  // A queue needs promoting when a slot expires, which only the watch
  // sees: from now on this driver watches.
  if (!v.queue.empty()) EnsureWatch(v.revision + 1);
}

void EtcdDriver::ApplyKv(RepoView* v, std::string_view rest, bool put,
                         const etcdpb::KeyValue& kv, bool fresh) {
  if (rest == "meta") {
    v->exists = put;
    v->meta_mod = put ? kv.mod_revision() : 0;
    v->meta_commit_id = put ? kv.value() : "";
  } else if (rest == "limit") {
    v->limit = 0;
    v->has_limit = put;
    if (put) {
      std::from_chars(kv.value().data(), kv.value().data() + kv.value().size(),
                      v->limit);
    }
  } else if (rest.substr(0, 5) == "slot/") {
    const std::string_view num = rest.substr(5);
    int64_t seat = -1;
    auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), seat);
    if (ec != std::errc() || end != num.data() + num.size() || seat < 0) {
      return;  // not a seat
    }
    // The seat's holder until now: released by a delete, or by a put over
    // it (a release that admits the queue head into the seat it frees).
    std::erase_if(v->slots,
                  [&](const auto& e) { return e.second.seat == seat; });
    if (!put) return;
    const std::vector<absl::string_view> f = SeatFields(kv.value());
    if (f.size() != 4 || f[3].empty()) return;
    SlotInfo slot{std::string(f[3]),
                  std::string(f[0]),
                  kv.mod_revision(),
                  0,
                  std::string(f[2]),
                  seat,
                  std::string(SeatGroup(kv.value()))};
    std::from_chars(f[1].data(), f[1].data() + f[1].size(), slot.since_us);
    v->slots[slot.run] = slot;
  } else if (rest.substr(0, 6) == "queue/") {
    if (!fresh) {
      std::erase_if(v->queue,
                    [&](const QueueInfo& q) { return q.key == kv.key(); });
    }
    if (!put) return;
    std::string_view q = rest.substr(6);
    size_t slash = q.find('/');
    if (slash == std::string_view::npos) return;
    QueueInfo qi;
    qi.run = std::string(q.substr(slash + 1));
    qi.key = kv.key();
    if (!ParseQueueTime(q.substr(0, slash), &qi.creation_us)) return;
    qi.create_revision = kv.create_revision();
    const char* const end = kv.value().data() + kv.value().size();
    // "<enqueued µs>[/<ord>[+<max µs>][^<priority>][/<group>]]"
    auto [rest_of_value, ec] =
        std::from_chars(kv.value().data(), end, qi.enqueued_us);
    if (ec == std::errc() && rest_of_value != end && *rest_of_value == '/') {
      auto [after_ord, ec2] = std::from_chars(rest_of_value + 1, end, qi.ord);
      if (ec2 == std::errc() && after_ord != end && *after_ord == '+') {
        auto [after_max, ec3] =
            std::from_chars(after_ord + 1, end, qi.max_queue_us);
        if (ec3 != std::errc()) qi.max_queue_us = 0;
        after_ord = after_max;
        if (qi.max_queue_us > 0) v->entry_limits = true;
      }
      if (ec2 == std::errc() && after_ord != end && *after_ord == '^') {
        auto [after_prio, ec4] =
            std::from_chars(after_ord + 1, end, qi.priority);
        if (ec4 != std::errc()) qi.priority = 0;
        after_ord = after_prio;
      }
      if (ec2 == std::errc() && after_ord != end && *after_ord == '/') {
        qi.group.assign(after_ord + 1, end);
      }
    }
    v->queue.push_back(std::move(qi));
  } else if (rest == "policy") {
    // A value that does not parse counts as the default policy (and
    // GetRepositoryPolicy says DATA_LOSS).
    const RepositoryPolicy p =
        put ? DecodePolicy(kv.value()).value_or(RepositoryPolicy{})
            : RepositoryPolicy{};
    v->max_queue_us = p.max_queue_time.has_value()
                          ? absl::ToInt64Microseconds(*p.max_queue_time)
                          : 0;
    v->mode = p.mode;
    v->shared = p.shared_limits;
  } else if (rest.substr(0, 8) == "removed/") {
    std::string run(rest.substr(8));
    if (put) {
      v->removed[std::move(run)] = kv.value();
    } else {
      v->removed.erase(run);
    }
  } else if (rest.substr(0, 7) == "cancel/") {
    std::string run(rest.substr(7));
    int64_t revision = 0;
    if (put && ParseHex(kv.value(), &revision)) {
      v->cancels[std::move(run)] = revision;
    } else {
      v->cancels.erase(run);
    }
  }
}

bool EtcdDriver::CancelRequested(const RepoView& v, const SlotInfo& slot) {
  auto it = v.cancels.find(slot.run);
  return it != v.cancels.end() && it->second == slot.revision;
}

EtcdDriver::RepoView EtcdDriver::ParseView(const std::string& repo,
                                           const etcdpb::RangeResponse& r,
                                           int64_t revision) const {
  const std::string p = RepoPrefix(repo);
  RepoView v;
  v.repo = repo;
  v.revision = revision;
  for (const auto& kv : r.kvs()) {
    ApplyKv(&v, std::string_view(kv.key()).substr(p.size()), true, kv,
            /*fresh=*/true);
  }
  SortQueue(&v);
  return v;
}

bool EtcdDriver::QueueOrder(const QueueInfo& a, const QueueInfo& b) {
  // Creation time, then the join's revision, then the place an import
  // gave it among the entries of its Txn, then the key: runs joined by one
  // request share a revision, and a view built from watch events has them
  // in the Txn's op order, a Range in key order. One total order, the same
  // in every process.
  return std::tie(a.creation_us, a.create_revision, a.ord, a.key) <
         std::tie(b.creation_us, b.create_revision, b.ord, b.key);
}

bool EtcdDriver::AdmitsBefore(QueueMode mode, const QueueInfo& a,
                              const QueueInfo& b) {
  if (mode == QueueMode::kPriority && a.priority != b.priority) {
    return a.priority > b.priority;
  }
  if (mode == QueueMode::kNewestFirst && a.creation_us != b.creation_us) {
    return a.creation_us > b.creation_us;
  }
  return QueueOrder(a, b);
}

void EtcdDriver::SortQueue(RepoView* v) {
  const QueueMode mode = v->mode;
  std::sort(v->queue.begin(), v->queue.end(),
            [mode](const QueueInfo& a, const QueueInfo& b) {
              return AdmitsBefore(mode, a, b);
            });
}

}  // namespace pac::concurrency::internal
