// The etcd driver's releases: ReleaseGroup answers the releases of one
// repository waiting for its turn with one Txn (deleting their slots,
// admitting queue heads into the freed seats, dropping their requests to
// stop), and the claiming and handing back of those waiting releases.
// ReleaseSlot, which takes the turn, is in etcd_step.cc.
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

void EtcdDriver::ClaimReleasesLocked(const std::string& repo,
                                     std::vector<ReleaseReq*>* group) {
  auto it = release_waiters_.find(repo);
  if (it == release_waiters_.end()) return;
  while (group->size() < kMaxReleaseGroup && !it->second.empty()) {
    ReleaseReq* r = it->second.front();
    it->second.pop_front();
    r->state = ReleaseReq::kClaimed;
    group->push_back(r);
  }
  if (it->second.empty()) release_waiters_.erase(it);
}

void EtcdDriver::HandBack(const std::string& repo,
                          const std::vector<ReleaseReq*>& group, size_t from) {
  MutexLock lock(&mu_);
  for (size_t i = group.size(); i-- > from;) {
    group[i]->state = ReleaseReq::kWaiting;
    release_waiters_[repo].push_front(group[i]);
  }
  turns_cv_.NotifyAll();
}

absl::StatusOr<ReleaseResult> EtcdDriver::ReleaseGroup(
    const Context& ctx, const std::string& repo, ReleaseReq* self,
    std::vector<std::string>* pass) {
  // group[0] is this thread's own release; the others wait for its answer,
  // or, if this thread returns an error, go on with their own contexts.
  std::vector<ReleaseReq*> group{self};
  absl::Cleanup hand_back = [&] { HandBack(repo, group); };
  bool fresh = false;
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    {
      MutexLock lock(&mu_);
      ClaimReleasesLocked(repo, &group);
    }
    bool cached_view = false;
    auto view = fresh ? Read(ctx, repo) : View(ctx, repo, &cached_view);
    if (!view.ok()) return view.status();
    const RepoView& v = *view;
    const std::string p = RepoPrefix(repo);
    // A member of shared limits deletes a `held` key per limit with each
    // slot, and admits nobody: the caller's SharedPass does, in the order
    // of rule 22. Fewer releases then fit in one Txn.
    const bool member = !v.shared.empty();
    if (const size_t cap = std::max<size_t>(
            1, (kMaxTxnOps - kMaxStaleDeletes - 8) / (3 + v.shared.size()));
        member && group.size() > cap) {
      HandBack(repo, group, cap);
      group.resize(cap);
    }
    // Nobody queued: a light release (LightProof), which compares `meta`
    // but does not rewrite it, so it carries no commit id. Its compare
    // keeps the queue empty until it commits: there is nobody to admit.
    // A release by key also forgets the record of a removed run
    // (ClearQueue): a guarded Txn, as a light one proves its commit by
    // slots alone.
    bool forgets = false;
    for (const ReleaseReq* m : group) {
      if (!m->by_lease && v.removed.count(m->run) > 0) forgets = true;
    }
    const bool light = !forgets && v.queue.empty() &&
                       v.limit <= static_cast<int32_t>(kMaxGuardedSlots);
    const std::string commit_id = light ? "" : NewCommitId();
    etcdpb::TxnRequest txn;
    if (light) {
      AddMetaCompare(&txn, p, v.meta_mod);
    } else {
      txn = GuardedTxn(p, v.meta_mod, commit_id);
      std::set<int64_t> compared;
      if (cached_view) compared = GuardSlots(&txn, v);
      GuardSeats(&txn, v, compared);  // it may fill seats (admissions)
    }
    std::vector<ReleaseResult> results(group.size());
    // The slot each member frees (or none), its etcd lease, when that
    // lease's TTL started, and whether an admitted run's slot takes it.
    struct Freed {
      const SlotInfo* slot = nullptr;
      int64_t lease = 0;
      absl::Time since = absl::InfinitePast();
      bool reused = false;
    };
    std::vector<Freed> freed(group.size());
    std::set<std::string> done_runs;  // runs whose slot or entries go
    int64_t running = static_cast<int64_t>(v.slots.size());
    bool unconfirmed = false;
    for (size_t i = 0; i < group.size(); ++i) {
      const ReleaseReq& m = *group[i];
      // Two releases of one run: the first takes it, the second finds
      // nothing, as it would one after the other.
      if (done_runs.count(m.run) > 0) continue;
      auto slot = v.slots.find(m.run);
      if (slot != v.slots.end() &&
          (!m.by_lease || (slot->second.lease_hex == Hex(m.lease) &&
                           slot->second.revision == m.revision))) {
        results[i].released = true;
        freed[i].slot = &slot->second;
        --running;
      }
      if (results[i].released || !m.by_lease) {
        // Every entry of the run goes with it: one that held a slot has
        // only stale ones (from a second join), which would otherwise be
        // admitted once the slot is gone.
        for (const QueueInfo& q : v.queue) {
          if (q.run == m.run) {
            *txn.add_success() = DeleteOp(q.key);
            if (!results[i].released) results[i].dequeued = true;
          }
        }
      }
      if (!m.by_lease && v.removed.count(m.run) > 0) {
        *txn.add_success() = DeleteOp(Cat(p, "removed/", m.run));
        if (!results[i].released) results[i].dequeued = true;
      }
      if (results[i].released || results[i].dequeued) {
        done_runs.insert(m.run);
      } else if (cached_view) {
        unconfirmed = true;
      }
    }
    if (unconfirmed) {  // confirm on a fresh read before saying "nothing"
      fresh = true;
      --attempt;
      continue;
    }
    if (done_runs.empty()) {
      std::move(hand_back).Cancel();
      AnswerGroup(group, results);
      return results[0];
    }
    const std::set<const QueueInfo*> stale = StaleEntries(v);
    // Entries past their queue deadline are not admitted; a step removes
    // them (the one this driver scheduled at the deadline).
    const std::set<const QueueInfo*> due =
        TimedOut(v, absl::ToUnixMicros(clock_->Now()));
    // As many heads as the Txn can carry beside its deletes (kMaxTxnOps):
    // a seat put and an entry delete each. The rest are admitted by a step
    // once this Txn commits.
    size_t n_freed = 0;
    for (const Freed& f : freed) n_freed += f.slot != nullptr ? 1 : 0;
    for (const Freed& f : freed) {
      if (f.slot != nullptr && v.cancels.count(f.slot->run) > 0) ++n_freed;
    }
    const size_t ops = static_cast<size_t>(txn.success_size()) + n_freed +
                       std::min(stale.size(), kMaxStaleDeletes);
    const size_t max_promote = ops < kMaxTxnOps ? (kMaxTxnOps - ops) / 2 : 0;
    std::vector<const QueueInfo*> promote;
    bool more = false;
    for (const QueueInfo& q : v.queue) {
      if (member) break;
      if (done_runs.count(q.run) > 0) continue;
      if (v.limit != 0 && running >= v.limit) break;
      if (stale.count(&q) > 0 || due.count(&q) > 0) continue;
      if (promote.size() == max_promote) {
        more = true;
        break;
      }
      promote.push_back(&q);
      ++running;
    }
    size_t left = 0;  // entries the plan leaves queued (stale: deleted)
    for (const QueueInfo& q : v.queue) {
      if (done_runs.count(q.run) > 0 || stale.count(&q) > 0) continue;
      ++left;
    }
    GuardAdmissions(
        &txn, v, promote.empty() ? nullptr : promote.back(),
        left == promote.size() && (v.limit == 0 || running < v.limit));
    // A light release deletes exactly the grants it saw, and proves a lost
    // answer by them (LightCommitted).
    LightProof proof{v.meta_mod, {}};
    if (light) {
      for (const Freed& f : freed) {
        if (f.slot == nullptr) continue;
        AddSlotCompare(&txn, repo, f.slot->seat, f.slot->revision);
        int64_t lease = 0;
        ParseHex(f.slot->lease_hex, &lease);
        proof.slots.emplace_back(f.slot->run, f.slot->revision, lease);
      }
    }
    const absl::Time now = clock_->Now();
    // A released slot's etcd lease, if young, carries an admitted run's
    // slot: a hand-off grants no lease (its index key is rewritten).
    std::vector<int64_t> grant_leases;
    for (Freed& f : freed) {
      if (f.slot == nullptr) continue;
      ParseHex(f.slot->lease_hex, &f.lease);
      if (f.slot->since_us > 0)
        f.since = absl::FromUnixMicros(f.slot->since_us);
      if (grant_leases.size() < promote.size() && f.lease != 0 &&
          now - f.since < ttl_ / 10) {
        f.reused = true;
        grant_leases.push_back(f.lease);
      }
    }
    auto leases = Leases(ctx, promote.size() - grant_leases.size());
    if (!leases.ok()) return leases.status();
    {
      MutexLock lock(&mu_);
      for (const Freed& f : freed) {
        // Unless this driver knows better (AddGrant and ExpiryOf read it).
        if (f.reused) lease_since_.emplace(f.lease, f.since);
      }
    }
    grant_leases.insert(grant_leases.end(), leases->begin(), leases->end());
    RepoView after = v;  // the repository once the Txn commits
    DropStale(&txn, &after, stale, done_runs);
    for (size_t i = 0; i < group.size(); ++i) {
      const std::string& r = group[i]->run;
      if (results[i].released) after.slots.erase(r);
      if (results[i].released || results[i].dequeued) {
        std::erase_if(after.queue,
                      [&](const QueueInfo& q) { return q.run == r; });
        if (!group[i]->by_lease) after.removed.erase(r);
      }
    }
    std::vector<int64_t> seats;  // of the admitted runs
    for (size_t i = 0; i < promote.size(); ++i) {
      seats.push_back(AddGrant(&txn, &after, promote[i]->run, grant_leases[i],
                               promote[i]->key, commit_id, promote[i]->group));
    }
    // A freed seat an admitted run took is put over (etcd refuses a put and
    // a delete of one key in one Txn); the others are deleted.
    for (const Freed& f : freed) {
      if (f.slot != nullptr &&
          std::find(seats.begin(), seats.end(), f.slot->seat) == seats.end()) {
        *txn.add_success() = DeleteOp(SeatKey(repo, f.slot->seat));
      }
      if (f.slot != nullptr) DeleteHeld(&txn, v, f.slot->seat);
      // Its request to stop goes with it.
      if (f.slot != nullptr && v.cancels.count(f.slot->run) > 0) {
        *txn.add_success() =
            DeleteOp(Cat(RepoPrefix(repo), "cancel/", f.slot->run));
        after.cancels.erase(f.slot->run);
      }
    }
    bool proved_light = false;
    auto tr = CommitStep(ctx, repo, std::move(txn), *leases, std::move(after),
                         light             ? Commit::kLight
                         : v.queue.empty() ? Commit::kExact
                                           : Commit::kQueue,
                         !promote.empty(), commit_id, light ? &proof : nullptr,
                         nullptr, &proved_light);
    if (!tr.ok()) return tr.status();
    if (!tr->has_value()) {  // planned on an outdated view: plan again
      fresh = false;
      continue;
    }
    const int64_t rev = (*tr)->header().revision();
    {
      MutexLock lock(&mu_);
      for (const Freed& f : freed) {
        // A release proved by its slot being gone may be another
        // holder's, which reuses the lease itself: never both.
        if (f.slot != nullptr && !f.reused && !proved_light) {
          RecycleLocked(f.lease, f.since);
        }
      }
    }
    // The k-th run admitted is told to the k-th release that freed a slot;
    // any beyond (the limit was raised meanwhile) to this thread's.
    size_t k = 0;
    for (size_t i = 0; i < promote.size(); ++i) {
      while (k < group.size() && !results[k].released) ++k;
      ReleaseResult& to = results[k < group.size() ? k++ : 0];
      to.admitted.push_back(MakeLease(repo, promote[i]->run, grant_leases[i],
                                      rev, seats[i], now));
      to.admitted.back().expires_at = ExpiryOf(grant_leases[i], now);
      logger_->info("admitted {} from the queue of {}", promote[i]->run, repo);
    }
    for (size_t i = 0; i < group.size(); ++i) {
      if (results[i].released) {
        logger_->debug("slot released: {} in {}", group[i]->run, repo);
      }
    }
    std::move(hand_back).Cancel();
    AnswerGroup(group, results);
    if (member) *pass = v.shared;
    if (more) {
      // Heads beyond what one Txn carries (the limit was raised, or many
      // slots expired unseen): admitted now, still in this thread's turn,
      // and told to this release.
      auto rest = Step(ctx, repo, 0, /*set_limit=*/false, "", {},
                       /*holding_turn=*/true);
      if (rest.ok()) {
        results[0].admitted.insert(results[0].admitted.end(),
                                   rest->admitted.begin(),
                                   rest->admitted.end());
      } else {
        logger_->warn("etcd: admitting the rest of the queue of {} failed: {}",
                      repo, rest.status().ToString());
      }
    }
    return results[0];
  }
  return absl::AbortedError(Cat("etcd: too much contention on ", repo));
}

void EtcdDriver::AnswerGroup(const std::vector<ReleaseReq*>& group,
                             const std::vector<ReleaseResult>& results) {
  if (group.size() < 2) return;
  MutexLock lock(&mu_);
  for (size_t i = 1; i < group.size(); ++i) {
    group[i]->result = results[i];
    group[i]->state = ReleaseReq::kDone;
  }
  turns_cv_.NotifyAll();
}

}  // namespace pac::concurrency::internal
