// Planning the etcd driver's steps: Step (acquire, limit changes and the
// promotion of queue heads) and ReleaseSlot (which waits for its turn and
// hands its release to ReleaseGroup, etcd_release.cc), with the
// per-repository turns that order the guarded writes of one process.
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

// Holds a repository's turn (TakeTurn) until destroyed.
class EtcdDriver::Turn {
 public:
  explicit Turn(EtcdDriver* d) : d_(d) {}
  ~Turn() {
    if (!repo_.empty()) d_->EndTurn(repo_);
  }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;
  bool held() const { return !repo_.empty(); }
  // With `release`, the turn's holder may answer it instead (then the
  // turn is not taken: release->state is kDone).
  absl::Status Take(const Context& ctx, const std::string& repo,
                    ReleaseReq* release = nullptr) {
    absl::Status s = d_->TakeTurn(ctx, repo, release);
    if (s.ok() && (release == nullptr || release->state != ReleaseReq::kDone)) {
      repo_ = repo;
    }
    return s;
  }

 private:
  EtcdDriver* const d_;
  std::string repo_;
};

absl::Status EtcdDriver::TakeTurn(const Context& ctx, const std::string& repo,
                                  ReleaseReq* release) {
  WakeOnCancel wake(ctx, &mu_, &turns_cv_);
  MutexLock lock(&mu_);
  bool listed = false;  // in release_waiters_, unless claimed
  while (true) {
    if (release != nullptr && release->state == ReleaseReq::kDone) break;
    if (release != nullptr && release->state == ReleaseReq::kClaimed) {
      // The turn's holder answers, or hands it back on an error of its own.
      turns_cv_.Wait(&mu_);
      continue;
    }
    absl::Status s;
    if (turns_.count(repo) > 0) {
      s = ctx.Err();
      if (s.ok() && stop_)
        s = absl::FailedPreconditionError("etcd driver closed");
    }
    if (!s.ok() || turns_.count(repo) == 0) {
      if (listed) {
        auto it = release_waiters_.find(repo);
        std::erase(it->second, release);
        if (it->second.empty()) release_waiters_.erase(it);
      }
      if (s.ok()) turns_.insert(repo);
      return s;
    }
    if (release != nullptr && !listed) {
      release_waiters_[repo].push_back(release);
      listed = true;
    }
    turns_cv_.WaitUntil(&mu_, ctx.deadline());
  }
  return absl::OkStatus();
}

void EtcdDriver::EndTurn(const std::string& repo) {
  MutexLock lock(&mu_);
  turns_.erase(repo);
  turns_cv_.NotifyAll();
}

absl::StatusOr<AcquireResult> EtcdDriver::Step(
    const Context& ctx, const std::string& repo, int32_t limit, bool set_limit,
    const std::string& run, const AcquireOptions& options, bool holding_turn,
    StepShared shared) {
  std::vector<std::string> pass;
  bool recheck = false;
  auto r = PlanAndCommit(ctx, repo, limit, set_limit, run, options,
                         holding_turn, shared, &pass, &recheck);
  if (!r.ok() || pass.empty() || holding_turn) return r;
  if (shared.collect != nullptr) {
    shared.collect->insert(shared.collect->end(), pass.begin(), pass.end());
    return r;
  }
  if (recheck) {
    // The caller was queued in a member. A release that freed a shared
    // slot before this read is seen by it; one after it reads the queue
    // with the caller in it and passes itself.
    auto st = ReadShared(ctx, pass);
    if (!st.ok() || SharedFree(*st, pass) <= 0) return r;
  }
  for (Lease& l : SharedPass(ctx, pass)) {
    if (!run.empty() && !r->acquired && l.repository_key == repo &&
        l.pipeline_run_key == run) {
      r->acquired = true;
      r->position = 0;
      r->lease = std::move(l);
    } else {
      r->admitted.push_back(std::move(l));
    }
  }
  return r;
}

absl::StatusOr<AcquireResult> EtcdDriver::PlanAndCommit(
    const Context& ctx, const std::string& repo, int32_t limit, bool set_limit,
    const std::string& run, const AcquireOptions& options, bool holding_turn,
    StepShared shared, std::vector<std::string>* pass, bool* recheck) {
  bool fresh = false;
  std::optional<RepoView> confirmed;  // etcd's view, from Confirm
  Turn turn(this);  // taken once the step turns out to need a guarded write
  // Runs admitted by earlier Txns of this step, which admitted as many as
  // one Txn may carry and left more to admit (see kMaxTxnOps below).
  std::vector<Lease> earlier;
  auto answer = [&](AcquireResult r) {
    r.admitted.insert(r.admitted.begin(), earlier.begin(), earlier.end());
    for (auto it = r.admitted.begin(); it != r.admitted.end(); ++it) {
      if (!run.empty() && it->pipeline_run_key == run) {
        r.acquired = true;
        r.position = 0;
        r.lease = *it;
        r.admitted.erase(it);
        break;
      }
    }
    return r;
  };
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    bool cached = false;
    absl::StatusOr<RepoView> view = confirmed.has_value()
                                        ? *std::move(confirmed)
                                    : fresh ? Read(ctx, repo)
                                            : View(ctx, repo, &cached);
    confirmed.reset();
    if (!view.ok()) return view.status();
    const RepoView& v = *view;
    // A removed run is refused, and nothing written, unless adopted. A
    // cached view's record is confirmed first (a release by key may have
    // forgotten it); a record the view lacks is caught by the Txn.
    if (!run.empty() && !options.adopt_running && v.slots.count(run) == 0) {
      if (auto rm = v.removed.find(run); rm != v.removed.end()) {
        if (cached) {
          auto current = Confirm(ctx, v);
          if (!current.ok()) return current.status();
          if (current->has_value()) {
            confirmed = std::move(*current);
            --attempt;
            continue;
          }
        }
        return RemovedRunError(repo, run, rm->second);
      }
    }
    // An adopted run's record of its removal goes with the grant.
    const bool forget_removed =
        !run.empty() && options.adopt_running && v.removed.count(run) > 0;
    // Queue policies (docs/policies.md, etcd_policies.cc): entries to drop
    // as stale, to remove as superseded or timed out, or the caller itself.
    Removals rm = PlanRemovals(v, run, options);
    const std::set<const QueueInfo*>& stale_only = rm.stale_only;
    const std::set<const QueueInfo*>& stale = rm.gone;
    const std::vector<const QueueInfo*>& superseded = rm.superseded;
    const std::vector<const QueueInfo*>& timed_out = rm.timed_out;
    if (!rm.caller_reason.empty()) {
      if (!turn.held() && !holding_turn) {
        if (absl::Status s = turn.Take(ctx, repo); !s.ok()) return s;
        --attempt;
        continue;
      }
      std::optional<RepoView> current;
      auto removed =
          RemoveCaller(ctx, repo, v, run, rm.caller_reason, &current);
      if (!removed.ok()) return removed.status();
      if (!*removed) {  // planned on an outdated view
        confirmed = std::move(current);
        fresh = false;
        continue;
      }
      if (rm.caller_reason == kRemovedSuperseded) {
        return SupersededRunError(repo, run, options.group);
      }
      return RemovedRunError(repo, run, rm.caller_reason);
    }
    // A recorded limit kept: as if none were given.
    const bool set = set_limit && !(options.keep_recorded_limit && v.has_limit);
    const int32_t eff_limit = set ? limit : v.limit;
    const bool limit_changed = set && (!v.exists || v.limit != limit);
    int64_t running = static_cast<int64_t>(v.slots.size());
    // cancel_running (docs/policies.md): the group's other running runs,
    // asked to stop by the Txn that queues the caller or grants it a slot
    // (a put of `cancel/<run>` each), up to kMaxCancels.
    std::vector<const SlotInfo*> cancels;
    if (options.cancel_running && !options.adopt_running && !run.empty() &&
        v.slots.count(run) == 0 &&
        std::none_of(v.queue.begin(), v.queue.end(), [&](const QueueInfo& q) {
          return q.run == run && stale.count(&q) == 0;
        })) {
      for (const auto& [r, slot] : v.slots) {
        if (cancels.size() == kMaxCancels) break;
        if (slot.group == options.group && !CancelRequested(v, slot)) {
          cancels.push_back(&slot);
        }
      }
    }
    auto free_slots = [&] {
      return eff_limit == 0 ? INT64_MAX : eff_limit - running;
    };
    // A member of shared limits (etcd_shared.cc): its queue is admitted by
    // SharedPass, `shared.admits` heads at a time, and a grant must fit
    // every shared limit of it, as read now (GuardShared keeps it so).
    const bool member = !v.shared.empty();
    std::map<std::string, SharedState> shared_st;
    int64_t shared_free = INT64_MAX;
    // Read only when the step may grant: a head for a pass, or the caller,
    // which a member grants only with nobody queued (or adopts). A queued
    // run's polls, and a holder's re-submits, read nothing more.
    const bool may_grant_caller =
        !run.empty() && v.slots.count(run) == 0 &&
        (options.adopt_running || v.queue.size() == stale.size());
    if (member && (may_grant_caller || shared.admits > 0)) {
      auto st = ReadShared(ctx, v.shared);
      if (!st.ok()) return st.status();
      shared_st = *std::move(st);
      shared_free = SharedFree(shared_st, v.shared);
    }
    // (Kept from an earlier Txn of this step that raised the limit.)
    if (member && (shared.pass || limit_changed)) *pass = v.shared;
    // Queue heads admitted into free slots, oldest first, as many as one
    // Txn may carry: each takes a seat put and a queue delete, beside the
    // `meta` and limit puts, the caller's grant or entry (2) and the stale
    // entries deleted. Any more are admitted by the next Txn of this step.
    const size_t max_promote =
        (kMaxTxnOps - 5 - std::min(stale_only.size(), kMaxStaleDeletes) -
         2 * superseded.size() - 2 * timed_out.size() - cancels.size()) /
        2;
    std::vector<const QueueInfo*> promote;
    bool more = false;  // heads left to admit once this Txn commits
    for (const QueueInfo& q : v.queue) {
      if (free_slots() <= 0) break;
      if (stale.count(&q) > 0) continue;
      if (member && (promote.size() >= shared.admits ||
                     static_cast<int64_t>(promote.size()) >= shared_free)) {
        break;
      }
      if (promote.size() == max_promote) {
        more = true;
        break;
      }
      promote.push_back(&q);
      ++running;
    }
    AcquireResult result;
    bool grant_caller = false, enqueue_caller = false;
    // The caller's live entry (a stale one, of a run queued twice, is
    // only deleted).
    const QueueInfo* caller_queued = nullptr;
    for (const QueueInfo& q : v.queue) {
      if (q.run == run && stale.count(&q) == 0) {
        caller_queued = &q;
        break;
      }
    }
    bool caller_promoted =
        caller_queued != nullptr && std::find(promote.begin(), promote.end(),
                                              caller_queued) != promote.end();
    if (!run.empty()) {
      if (auto it = v.slots.find(run); it != v.slots.end()) {
        int64_t lease = 0;
        ParseHex(it->second.lease_hex, &lease);
        result.acquired = true;
        result.lease = MakeLease(repo, run, lease, it->second.revision,
                                 it->second.seat, clock_->Now());
        result.lease.cancel_requested = CancelRequested(v, it->second);
      } else if (caller_promoted) {
        // Admitted below with the others.
      } else if (options.adopt_running ||
                 (promote.size() + stale.size() == v.queue.size() &&
                  free_slots() > 0 &&
                  shared_free > static_cast<int64_t>(promote.size()))) {
        // (Stale entries wait for nobody: beside them the caller is first.)
        grant_caller = true;
      } else if (caller_queued != nullptr) {
        int64_t pos = 0;
        for (const QueueInfo& q : v.queue) {
          if (std::find(promote.begin(), promote.end(), &q) != promote.end() ||
              stale.count(&q) > 0) {
            continue;
          }
          ++pos;
          if (&q == caller_queued) break;
        }
        result.position = pos;
      } else if (options.enqueue) {
        enqueue_caller = true;
      }
    }
    if (!grant_caller && !enqueue_caller) cancels.clear();
    if (!limit_changed && promote.empty() && !grant_caller && !enqueue_caller &&
        superseded.empty() && timed_out.empty()) {
      // Nothing to write. A cached view may be behind another process's
      // write (a promotion, say): answer only once etcd confirms it.
      if (cached) {
        auto current = Confirm(ctx, v);
        if (!current.ok()) return current.status();
        if (current->has_value()) {  // plan again on etcd's current view
          confirmed = std::move(*current);
          --attempt;
          continue;
        }
      }
      return answer(std::move(result));
    }
    const absl::Time now = clock_->Now();
    const std::string p = RepoPrefix(repo);
    int64_t creation_us = 0;
    std::string queue_key;
    if (enqueue_caller) {
      creation_us = absl::ToUnixMicros(options.creation_time.value_or(now));
      queue_key = Cat(p, "queue/", QueueTime(creation_us), "/", run);
    }
    const QueueInfo* last = LastQueueKey(v);
    // Joining the end of a queue is a Txn of its own that leaves `meta`
    // alone, so it does not conflict with releases (see FastEnqueueTxn).
    // Only with a given creation time: a re-submit then writes the same key
    // again, where "now" would queue the run a second time.
    // (A run of a supersede group always writes `meta`: its submits, which
    // compare the group's entries, are then one after another.)
    const bool fast = enqueue_caller && options.creation_time.has_value() &&
                      options.group.empty() && !limit_changed &&
                      promote.empty() && !grant_caller && last != nullptr &&
                      queue_key > last->key && timed_out.empty() &&
                      v.mode == QueueMode::kOldestFirst;
    if (!fast && !turn.held() && !holding_turn) {
      // Plan again once it is this thread's turn: the view may have moved.
      if (absl::Status s = turn.Take(ctx, repo); !s.ok()) return s;
      --attempt;
      continue;
    }
    // Only the caller granted, nobody queued, under a small limit: a Txn
    // that puts only its seat (GuardSeats shows it atomic).
    const bool light = grant_caller && promote.empty() && !limit_changed &&
                       v.queue.empty() && LightGrantsPossible(v) &&
                       !forget_removed && superseded.empty() &&
                       timed_out.empty() && cancels.empty() && !member;
    const size_t n_leases = promote.size() + (grant_caller ? 1 : 0);
    auto leases = Leases(ctx, n_leases);
    if (!leases.ok()) return leases.status();
    RepoView after = v;  // the repository once the Txn commits
    etcdpb::TxnRequest txn;
    const std::string commit_id = fast ? "" : NewCommitId();
    if (fast) {
      txn = FastEnqueueTxn(*last);
      // The queue is joined because every slot is taken. A slot that
      // expired since the view means a head to admit instead: this
      // driver's watch sees the expiry and admits it (PromoteLoop), or,
      // without background promotion, the Txn checks the slots.
      std::set<int64_t> compared;
      if (!background_ || !watch_started_.load()) {
        compared = GuardSlots(&txn, v);
      }
      if (v.seats_unverified) GuardSeats(&txn, v, compared);
    } else if (light) {
      AddMetaCompare(&txn, p, v.meta_mod);
      GuardSeats(&txn, v);
    } else {
      txn = GuardedTxn(p, v.meta_mod, commit_id);
      // An expiry or a light release deletes a slot without touching
      // `meta`. A plan that queues the caller, or leaves runs queued, also
      // checks that every slot it counted still exists: a run queued while
      // a slot was free would wait for nobody. A plan that only grants
      // (nobody queued) needs no such check: a slot gone means more room,
      // and checking would make grants lose to every light release. (The
      // view it leaves in the cache may then count a slot that is gone,
      // which the next plan that queues finds by this check.)
      std::set<int64_t> compared;
      if (enqueue_caller || !v.queue.empty()) compared = GuardSlots(&txn, v);
      // Light grants put seats without touching `meta`: this Txn must not
      // count or fill a seat one of them took unseen.
      GuardSeats(&txn, v, compared);
      for (const SlotInfo* s : cancels) {
        // The grant asked must be there: its etcd lease carries the key.
        if (compared.count(s->seat) == 0) {
          AddSlotCompare(&txn, repo, s->seat, s->revision);
        }
        int64_t lease = 0;
        ParseHex(s->lease_hex, &lease);
        *txn.add_success() =
            PutOp(Cat(p, "cancel/", s->run), Hex(s->revision), lease);
        after.cancels[s->run] = s->revision;
        logger_->info("{} in {} asked to stop by {} (group {})", s->run, repo,
                      run, options.group);
      }
      // Entries the plan leaves queued (stale ones are deleted).
      size_t left = 0;
      for (const QueueInfo& q : v.queue) {
        if (std::find(promote.begin(), promote.end(), &q) != promote.end() ||
            stale.count(&q) > 0 || (grant_caller && &q == caller_queued)) {
          continue;
        }
        ++left;
      }
      // Checked to the end of the queue when the plan leaves none of it
      // and either leaves a slot free or gives one to the caller: an
      // entry it has not seen would have come first.
      const bool room = free_slots() > (grant_caller ? 1 : 0);
      GuardAdmissions(&txn, v, promote.empty() ? nullptr : promote.back(),
                      left == 0 && (room || grant_caller));
      DropStale(&txn, &after, stale_only, {});
      for (const QueueInfo* q : superseded) {
        *txn.add_success() = DeleteOp(q->key);
        *txn.add_success() =
            PutOp(Cat(p, "removed/", q->run), std::string(kRemovedSuperseded));
        after.removed[q->run] = std::string(kRemovedSuperseded);
        std::erase_if(after.queue,
                      [&](const QueueInfo& e) { return e.key == q->key; });
        logger_->info("{} in {} superseded (group {})", q->run, repo,
                      options.group);
      }
      for (const QueueInfo* q : timed_out) {
        *txn.add_success() = DeleteOp(q->key);
        *txn.add_success() =
            PutOp(Cat(p, "removed/", q->run), std::string(kRemovedTimedOut));
        after.removed[q->run] = std::string(kRemovedTimedOut);
        std::erase_if(after.queue,
                      [&](const QueueInfo& e) { return e.key == q->key; });
        logger_->info("{} in {} timed out in the queue", q->run, repo);
      }
    }
    if ((fast || light) && !options.adopt_running) {
      // Neither compares `meta`, which a ClearQueue rewrites: the caller
      // must not have been removed since the view.
      auto* cmp = txn.add_compare();
      cmp->set_key(Cat(p, "removed/", run));
      cmp->set_target(etcdpb::Compare::CREATE);
      cmp->set_result(etcdpb::Compare::EQUAL);
      cmp->set_create_revision(0);
    }
    if (forget_removed) {
      *txn.add_success() = DeleteOp(Cat(p, "removed/", run));
      after.removed.erase(run);
    }
    if (limit_changed) {
      *txn.add_success() = PutOp(p + "limit", std::to_string(limit));
      after.limit = limit;
      after.has_limit = true;
    }
    size_t li = 0;
    // run, lease, seat
    std::vector<std::tuple<std::string, int64_t, int64_t>> granted;
    for (const QueueInfo* q : promote) {
      int64_t lease = (*leases)[li++];
      granted.emplace_back(
          q->run, lease,
          AddGrant(&txn, &after, q->run, lease, q->key, commit_id, q->group));
    }
    if (grant_caller) {
      int64_t lease = (*leases)[li++];
      granted.emplace_back(
          run, lease,
          AddGrant(&txn, &after, run, lease,
                   caller_queued != nullptr ? caller_queued->key : "",
                   commit_id, options.group));
    }
    if (light) {
      // GuardSeats compares the seats below the limit only. A run adopted
      // over the limit takes a seat above it, which another light grant
      // may take unseen too: it must still be empty.
      for (const auto& [r, lease, seat] : granted) {
        if (seat >= v.limit) {
          AddSlotCompare(&txn, repo, seat, 0, etcdpb::Compare::EQUAL);
        }
      }
    }
    if (member && !granted.empty()) {
      GuardShared(&txn, v.shared, shared_st, commit_id);
    }
    int64_t enqueued_deadline = INT64_MAX;
    if (enqueue_caller) {
      QueueInfo q{run, queue_key, creation_us, 0, absl::ToUnixMicros(now)};
      q.group = options.group;
      q.priority = options.priority;
      if (options.max_queue_time.has_value()) {
        q.max_queue_us = absl::ToInt64Microseconds(*options.max_queue_time);
        after.entry_limits = true;
      }
      // "<enqueued µs>[/0[+<max µs>][^<priority>][/<group>]]"
      std::string value = std::to_string(q.enqueued_us);
      if (q.max_queue_us > 0 || q.priority != 0 || !q.group.empty()) {
        value += "/0";
      }
      if (q.max_queue_us > 0) value += Cat("+", q.max_queue_us);
      if (q.priority != 0) value += Cat("^", q.priority);
      if (!q.group.empty()) value += Cat("/", q.group);
      *txn.add_success() = PutOp(q.key, value);
      enqueued_deadline = DeadlineUs(after, q);
      after.queue.push_back(std::move(q));
    }
    std::optional<RepoView> current;
    auto tr = CommitStep(ctx, repo, std::move(txn), *leases, std::move(after),
                         fast              ? Commit::kJoinEnd
                         : light           ? Commit::kLightGrant
                         : v.queue.empty() ? Commit::kExact
                                           : Commit::kQueue,
                         !promote.empty(), commit_id, nullptr, &current);
    if (!tr.ok()) return tr.status();
    if (!tr->has_value()) {
      // Planned on an outdated view: plan again, on the repository as etcd
      // just answered it. That view is as fresh as a read, so an answer
      // that writes nothing ("no slot free") needs no Confirm: under
      // contention a Confirm rarely held, and the caller went round again.
      confirmed = std::move(current);
      fresh = false;
      continue;
    }
    const int64_t revision = (*tr)->header().revision();
    if (enqueued_deadline != INT64_MAX) {
      MutexLock lock(&mu_);
      ScheduleLocked(repo, enqueued_deadline);
    }
    for (const auto& [r, lease, seat] : granted) {
      Lease l = MakeLease(repo, r, lease, revision, seat, now);
      l.expires_at = ExpiryOf(lease, now);
      if (r == run) {
        result.acquired = true;
        result.lease = l;
      } else {
        logger_->info("admitted {} from the queue of {} (token {})", r, repo,
                      l.fencing_token);
        result.admitted.push_back(std::move(l));
      }
    }
    if (more || rm.timed_out_more) {
      // The rest of the heads (or of the timed-out entries), by the next
      // Txn, planned on the repository as this one left it.
      earlier.insert(earlier.end(), result.admitted.begin(),
                     result.admitted.end());
      if (result.acquired) earlier.push_back(result.lease);
      fresh = false;
      --attempt;
      continue;
    }
    // (A repository full by its own limit is passed by the release that
    // frees its slot, as a non-member is stepped.)
    if (enqueue_caller && member && free_slots() > 0) {
      *pass = v.shared;
      *recheck = true;
    }
    if (enqueue_caller) {
      // Its place: after every entry of the view that admits before it
      // (it joined last, so after those of its creation time).
      QueueInfo me;
      me.creation_us = creation_us;
      me.create_revision = INT64_MAX;
      me.priority = options.priority;
      int64_t pos = 1;
      for (const QueueInfo& q : v.queue) {
        if (std::find(promote.begin(), promote.end(), &q) != promote.end() ||
            stale.count(&q) > 0) {
          continue;
        }
        if (AdmitsBefore(v.mode, q, me)) ++pos;
      }
      result.position = pos;
      logger_->info(
          "concurrency limit {} of {} reached; {} queued at position {}",
          eff_limit, repo, run, pos);
    }
    return answer(std::move(result));
  }
  return absl::AbortedError(
      Cat("etcd: too much contention on ", repo, "; try again"));
}

absl::StatusOr<ReleaseResult> EtcdDriver::ReleaseSlot(
    const Context& ctx, std::string_view lease_id, std::string_view run_key,
    std::string_view repo_key) {
  if (absl::Status s = ValidateReleaseKeys(lease_id, run_key, repo_key);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  ReleaseResult result;
  std::string repo(repo_key), run(run_key);
  int64_t lease = 0, revision = 0;
  if (!lease_id.empty()) {
    // The id names its repository and run: no read before the Txn, which
    // checks that the slot is still this grant.
    std::optional<ParsedLeaseId> id = ParseLeaseId(lease_id);
    if (!id.has_value() || (!repo.empty() && id->repo != repo) ||
        (!run.empty() && id->run != run)) {
      return result;  // not a grant of this driver, or of another run
    }
    repo = std::move(id->repo);
    run = std::move(id->run);
    lease = id->lease;
    revision = id->revision;
  }
  ReleaseReq self;
  self.run = run;
  self.lease = lease;
  self.revision = revision;
  self.by_lease = !lease_id.empty();
  std::vector<std::string> pass;
  absl::StatusOr<ReleaseResult> out;
  {
    Turn turn(this);
    if (absl::Status s = turn.Take(ctx, repo, &self); !s.ok()) return s;
    if (self.state == ReleaseReq::kDone) return std::move(self.result);
    out = ReleaseGroup(ctx, repo, &self, &pass);
  }
  // A member's freed shared slots go to the earliest head that fits, in
  // any member (rule 22), once the turn is over: the pass may step this
  // repository too. (Releases answered by this one's group are passed
  // here as well.)
  if (out.ok() && !pass.empty()) {
    std::vector<Lease> more = SharedPass(ctx, pass);
    out->admitted.insert(out->admitted.end(), more.begin(), more.end());
  }
  return out;
}

}  // namespace pac::concurrency::internal
