// Building and guarding the etcd driver's Txns: the compares that make a
// planned step atomic (meta, slots, seats, the admitted range of the
// queue), the writes of a grant, and CommitStep, which sends a Txn and
// tells whether a send whose answer was lost had committed.
#include <algorithm>
#include <charconv>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

std::string EtcdDriver::NewCommitId() {
  return Cat(instance_id_, ".", next_commit_.fetch_add(1) + 1);
}

int64_t EtcdDriver::CommittedAt(const RepoView& v,
                                const std::string& commit_id) {
  if (commit_id.empty()) return 0;
  if (v.meta_commit_id == commit_id) return v.meta_mod;
  for (const auto& [run, slot] : v.slots) {
    if (slot.commit_id == commit_id) return slot.revision;
  }
  return 0;
}

int64_t EtcdDriver::LightCommitted(const Context& ctx, const RepoView& v,
                                   const LightProof& light) {
  // Each slot gone while `meta` stayed: deleted by no guarded Txn. Each
  // etcd lease still alive: deleted by no expiry either (a lease is never
  // revoked while it carries a slot). So by a light release of these very
  // grants: this one's earlier send (or, if another holder of the same
  // grant released it at the same time, that one; either way the grant is
  // released).
  if (v.meta_mod != light.meta_mod) return 0;
  for (const auto& [run, revision, lease] : light.slots) {
    auto it = v.slots.find(run);
    if (it != v.slots.end() && it->second.revision == revision) {
      return 0;  // still held: it did not commit
    }
    auto ttl = kv_->LeaseTimeToLive(ctx, lease);
    if (!ttl.ok() || *ttl <= 0) return 0;
  }
  return v.revision;
}

std::string EtcdDriver::RepoPrefix(std::string_view repo) const {
  return Cat(prefix_, "repo/", repo, "/");
}

void EtcdDriver::AddMetaCompare(etcdpb::TxnRequest* txn,
                                const std::string& repo_prefix,
                                int64_t meta_mod) {
  auto* cmp = txn->add_compare();
  cmp->set_key(repo_prefix + "meta");
  cmp->set_target(etcdpb::Compare::MOD);
  cmp->set_result(etcdpb::Compare::EQUAL);
  cmp->set_mod_revision(meta_mod);
}

std::string EtcdDriver::SeatKey(const std::string& repo, int64_t seat) const {
  return Cat(RepoPrefix(repo), "slot/", std::to_string(seat));
}

void EtcdDriver::AddSlotCompare(etcdpb::TxnRequest* txn,
                                const std::string& repo, int64_t seat,
                                int64_t revision,
                                etcdpb::Compare::CompareResult result) const {
  auto* cmp = txn->add_compare();
  cmp->set_key(SeatKey(repo, seat));
  cmp->set_target(etcdpb::Compare::MOD);
  cmp->set_result(result);
  cmp->set_mod_revision(revision);
}

bool EtcdDriver::LightGrantsPossible(const RepoView& v) {
  return v.exists && v.limit > 0 && v.limit <= kMaxLightGrantLimit;
}

void EtcdDriver::GuardSeats(etcdpb::TxnRequest* txn, const RepoView& v,
                            const std::set<int64_t>& skip) const {
  if (!LightGrantsPossible(v)) return;
  std::vector<int64_t> held(v.limit, 0);  // by seat: grant revision, or 0
  for (const auto& [run, slot] : v.slots) {
    if (slot.seat < v.limit) held[slot.seat] = slot.revision;
  }
  for (int64_t seat = 0; seat < v.limit; ++seat) {
    if (skip.count(seat) > 0) continue;
    AddSlotCompare(txn, v.repo, seat, held[seat] + 1, etcdpb::Compare::LESS);
  }
}

etcdpb::TxnRequest EtcdDriver::GuardedTxn(const std::string& repo_prefix,
                                          int64_t meta_mod,
                                          const std::string& commit_id) const {
  // Commits only if nothing of the repository changed since it was read,
  // and marks this commit as a change, by whom.
  etcdpb::TxnRequest txn;
  AddMetaCompare(&txn, repo_prefix, meta_mod);
  *txn.add_success() = PutOp(repo_prefix + "meta", commit_id);
  return txn;
}

std::set<int64_t> EtcdDriver::GuardSlots(etcdpb::TxnRequest* txn,
                                         const RepoView& v) const {
  // At most kMaxGuardedSlots (etcd allows 128 compares per Txn). A view
  // with more is never planned on from the cache (View reads it afresh).
  // Light releases, which delete slots without touching `meta`, happen
  // only under a limit of at most kMaxGuardedSlots: then that many slots
  // still there prove the repository full, which is all a plan to queue
  // needs; under a greater limit (or none) the plan compares none, as
  // before light releases (an expiry then still frees a slot unseen).
  std::set<int64_t> seats;
  if (v.slots.size() > kMaxGuardedSlots &&
      (v.limit == 0 || v.limit > static_cast<int32_t>(kMaxGuardedSlots))) {
    return seats;
  }
  for (const auto& [run, slot] : v.slots) {
    if (seats.size() == kMaxGuardedSlots) break;
    AddSlotCompare(txn, v.repo, slot.seat, slot.revision);
    seats.insert(slot.seat);
  }
  return seats;
}

void EtcdDriver::GuardAdmissions(etcdpb::TxnRequest* txn, const RepoView& v,
                                 const QueueInfo* last_admitted,
                                 bool drained) const {
  if (v.queue.empty() || (last_admitted == nullptr && !drained)) return;
  // Entries this view has not seen were joined at the end (FastEnqueueTxn)
  // after one it has, so they sort after its head. Between the head and
  // the last admitted entry (to the end, if the plan leaves room and no
  // queue) there must be none: every key there is older than the view.
  // Only live entries and cancelled ones lie in that range. (A view with
  // no queue has none unseen: joining the end needs an entry to join.)
  const std::string q = RepoPrefix(v.repo) + "queue/";
  auto* cmp = txn->add_compare();
  if (v.mode != QueueMode::kOldestFirst) {
    // Under another order an unseen entry may sort anywhere (a join at
    // the end planned before the mode changed): none may be in the queue.
    cmp->set_key(q);
    cmp->set_range_end(PrefixEnd(q));
    cmp->set_target(etcdpb::Compare::CREATE);
    cmp->set_result(etcdpb::Compare::LESS);
    cmp->set_create_revision(v.revision + 1);
    return;
  }
  cmp->set_key(Cat(q, QueueTime(v.queue.front().creation_us), "/"));
  cmp->set_range_end(drained ? PrefixEnd(q) : last_admitted->key);
  cmp->set_target(etcdpb::Compare::CREATE);
  cmp->set_result(etcdpb::Compare::LESS);
  cmp->set_create_revision(v.revision + 1);
}

void EtcdDriver::DropStale(etcdpb::TxnRequest* txn, RepoView* after,
                           const std::set<const QueueInfo*>& stale,
                           const std::set<std::string>& callers) {
  size_t dropped = 0;
  for (const QueueInfo* q : stale) {
    if (callers.count(q->run) > 0) continue;   // the callers' are handled
    if (dropped++ == kMaxStaleDeletes) break;  // the rest by a later Txn
    *txn->add_success() = DeleteOp(q->key);
    std::erase_if(after->queue,
                  [&](const QueueInfo& e) { return e.key == q->key; });
  }
}

etcdpb::TxnRequest EtcdDriver::FastEnqueueTxn(const QueueInfo& last) {
  // The new key sorts after `last`, the view's greatest queue key (keys
  // order by creation time first). If `last` is still queued, the new
  // entry sorts after every entry a concurrent release can see as its
  // head, so it leaves `meta` alone and conflicts with nobody; releases
  // that admit past the head check the range they admit from
  // (GuardAdmissions).
  //
  // Nor is a running run queued: the view shows it holds no slot, and no
  // grant of it can commit between the view and this Txn. A grant from the
  // queue needs its entry at the head, and the run's entry (this key, or
  // one with the same creation time) sorts after `last`, which would have
  // to be admitted first; a grant with nobody waiting needs the queue
  // empty, and `last` is in it. The view is exact about seats unless a
  // light release left it (seats_unverified); then the caller adds
  // GuardSeats.
  etcdpb::TxnRequest txn;
  auto* cmp = txn.add_compare();
  cmp->set_key(last.key);
  cmp->set_target(etcdpb::Compare::CREATE);
  cmp->set_result(etcdpb::Compare::EQUAL);
  cmp->set_create_revision(last.create_revision);
  return txn;
}

int64_t EtcdDriver::AddGrant(etcdpb::TxnRequest* txn, RepoView* after,
                             const std::string& run, int64_t lease,
                             const std::string& dequeued_key,
                             const std::string& commit_id,
                             const std::string& group) const {
  std::set<int64_t> taken;
  for (const auto& [r, slot] : after->slots) taken.insert(slot.seat);
  int64_t seat = 0;
  while (taken.count(seat) > 0) ++seat;
  const std::string key = SeatKey(after->repo, seat);
  const int64_t since_us = absl::ToUnixMicros(LeaseSince(lease));
  *txn->add_success() =
      PutOp(key,
            Cat(Hex(lease), "/", std::to_string(since_us), "/", commit_id, "/",
                run, group.empty() ? "" : " ", group),
            lease);
  // A member's slot counts in each of its shared limits while it lives.
  for (const std::string& name : after->shared) {
    *txn->add_success() = PutOp(HeldKey(name, after->repo, seat), run, lease);
  }
  // Its revision is the commit's, filled in by CommitStep.
  after->slots[run] =
      SlotInfo{run, Hex(lease), 0, since_us, commit_id, seat, group};
  if (!dequeued_key.empty()) {
    *txn->add_success() = DeleteOp(dequeued_key);
    std::erase_if(after->queue,
                  [&](const QueueInfo& q) { return q.key == dequeued_key; });
  }
  return seat;
}

absl::StatusOr<std::optional<etcdpb::TxnResponse>> EtcdDriver::CommitStep(
    const Context& ctx, const std::string& repo, etcdpb::TxnRequest txn,
    const std::vector<int64_t>& leases, RepoView after, Commit kind,
    bool admits, const std::string& commit_id, const LightProof* light,
    std::optional<RepoView>* current, bool* proved_light) {
  // A failed compare answers the repository as it is now, so the next
  // attempt needs no read of its own. A success answers nothing: the
  // compares held, so the repository is `after` (the plan's view with the
  // Txn's writes). A range here would cost etcd a walk over every key the
  // repository ever had (deleted keys stay in its index until compaction).
  if (kind != Commit::kJoinEnd) *txn.add_failure() = RangeRepoOp(repo);
  auto tr = admits ? kv_->AdmittingTxn(ctx, txn) : kv_->Txn(ctx, txn);
  if (tr.ok() && tr->succeeded()) {
    const int64_t rev = tr->header().revision();
    if (kind == Commit::kQueue || kind == Commit::kJoinEnd) {
      MutexLock lock(&mu_);
      if (own_commit_rev_.size() >= kMaxCachedViews) own_commit_rev_.clear();
      int64_t& own = own_commit_rev_[repo];
      own = std::max(own, rev);
    } else {
      after.revision = rev;
      for (auto& [run, slot] : after.slots) {
        if (slot.revision == 0) slot.revision = rev;
      }
      if (kind == Commit::kExact) {
        after.meta_mod = rev;  // a guarded step puts `meta`
        after.meta_commit_id = commit_id;
        after.exists = true;
        for (QueueInfo& q : after.queue) {
          if (q.create_revision == 0) q.create_revision = rev;
        }
        SortQueue(&after);
      }
      // A light release compared no seat but its own: a light grant
      // beside it may be missing (GuardSeats). The other two compared
      // them, or wrote `meta`. (Light ones leave `meta` as the view had
      // it; expiries and light releases since, a plan on this view finds
      // by its slot compares.)
      after.seats_unverified =
          kind == Commit::kLight && LightGrantsPossible(after);
      CacheView(repo, after);
    }
    return std::optional<etcdpb::TxnResponse>(*std::move(tr));
  }
  // Did an earlier send of this very Txn commit? (See the header.)
  std::optional<RepoView> now;
  if (tr.ok() && kind != Commit::kJoinEnd && tr->responses_size() > 0 &&
      tr->responses(tr->responses_size() - 1).has_response_range()) {
    now = ParseView(repo,
                    tr->responses(tr->responses_size() - 1).response_range(),
                    tr->header().revision());
  } else if (!tr.ok() && (!commit_id.empty() || light != nullptr) &&
             IsRetryable(tr.status())) {
    // The read goes to whichever endpoint answers now.
    if (auto r = Read(ctx, repo); r.ok()) now = *std::move(r);
  }
  if (now.has_value()) {
    if (const int64_t rev = light != nullptr ? LightCommitted(ctx, *now, *light)
                                             : CommittedAt(*now, commit_id);
        rev > 0) {
      logger_->info("etcd: a Txn on {} whose answer was lost had committed",
                    repo);
      if (light != nullptr && proved_light != nullptr) *proved_light = true;
      CacheView(repo, *now);
      etcdpb::TxnResponse done;
      done.set_succeeded(true);
      done.mutable_header()->set_revision(rev);
      return std::optional<etcdpb::TxnResponse>(std::move(done));
    }
  }
  if (tr.ok() || absl::IsInvalidArgument(tr.status()) ||
      absl::IsPermissionDenied(tr.status())) {
    // A lost compare, or a request etcd refused before running it: this
    // Txn wrote nothing, and its leases carry nothing.
    MutexLock lock(&mu_);
    for (int64_t l : leases) spare_leases_.push_back(l);
  }
  // A lost compare answers the repository as it is now (a queue join's
  // answers nothing: the next attempt reads), as does the read above.
  if (now.has_value()) {
    CacheView(repo, *now);
    if (current != nullptr) *current = *std::move(now);
  } else {
    ForgetView(repo);
  }
  if (!tr.ok() && !IsRetryable(tr.status())) return tr.status();
  return std::optional<etcdpb::TxnResponse>();
}

}  // namespace pac::concurrency::internal
