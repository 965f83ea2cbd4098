// The etcd driver's queue policies (docs/policies.md): planning which
// queue entries a step removes (superseded, timed out) and the Txn that
// removes the caller itself; queue deadlines and the steps scheduled at
// them; and the repository's policy key. Step (etcd_step.cc) uses them.
#include <algorithm>
#include <string>

#include "absl/strings/numbers.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

EtcdDriver::Removals EtcdDriver::PlanRemovals(
    const RepoView& v, const std::string& run,
    const AcquireOptions& options) const {
  Removals rm;
  rm.stale_only = StaleEntries(v);
  rm.gone = rm.stale_only;
  // Entries past their queue deadline wait for nothing: out of the plan,
  // and removed with their records by the step's Txn (kMaxSuperseded at
  // most with the superseded; the rest by the next Txn). The caller's own
  // is removed alone, as a refusal; an adopted caller's is not timed out
  // (the run runs).
  if (const std::set<const QueueInfo*> due =
          TimedOut(v, absl::ToUnixMicros(clock_->Now()));
      !due.empty()) {
    for (const QueueInfo& q : v.queue) {
      if (due.count(&q) == 0 || rm.stale_only.count(&q) > 0) continue;
      if (!run.empty() && q.run == run) {
        if (options.adopt_running || v.slots.count(run) > 0) continue;
        rm.caller_reason = kRemovedTimedOut;
      } else {
        rm.timed_out.push_back(&q);
      }
      rm.gone.insert(&q);
    }
  }
  // A supersede group: of its queued runs only the newest stays. The
  // group's entries older than the caller's (its entry, or where it would
  // join) go in the step's Txn with their records, and are gone for the
  // plan; an entry newer than the caller's removes the caller instead.
  if (!run.empty() && !options.group.empty() && !options.adopt_running &&
      rm.caller_reason.empty() && v.slots.count(run) == 0) {
    const QueueInfo* own = nullptr;
    for (const QueueInfo& q : v.queue) {
      if (q.run == run && rm.gone.count(&q) == 0) {
        own = &q;
        break;
      }
    }
    QueueInfo joining;
    joining.creation_us =
        absl::ToUnixMicros(options.creation_time.value_or(clock_->Now()));
    joining.create_revision = INT64_MAX;  // after every entry of its time
    const QueueInfo& mine = own != nullptr ? *own : joining;
    bool newer = false;
    for (const QueueInfo& q : v.queue) {
      if (rm.gone.count(&q) > 0 || q.run == run || q.group != options.group) {
        continue;
      }
      if (QueueOrder(mine, q)) {
        newer = true;
      } else if (rm.superseded.size() < kMaxSuperseded) {
        rm.superseded.push_back(&q);
      }
    }
    if (newer) {
      rm.superseded.clear();
      rm.caller_reason = kRemovedSuperseded;
    }
    rm.gone.insert(rm.superseded.begin(), rm.superseded.end());
  }
  if (rm.timed_out.size() + rm.superseded.size() > kMaxSuperseded) {
    rm.timed_out.resize(kMaxSuperseded - rm.superseded.size());
    rm.timed_out_more = true;
  }
  return rm;
}

absl::StatusOr<bool> EtcdDriver::RemoveCaller(
    const Context& ctx, const std::string& repo, const RepoView& v,
    const std::string& run, std::string_view reason,
    std::optional<RepoView>* current) {
  const std::string p = RepoPrefix(repo);
  const std::string commit_id = NewCommitId();
  etcdpb::TxnRequest txn = GuardedTxn(p, v.meta_mod, commit_id);
  RepoView after = v;
  for (const QueueInfo& q : v.queue) {
    if (q.run == run) *txn.add_success() = DeleteOp(q.key);
  }
  std::erase_if(after.queue, [&](const QueueInfo& q) { return q.run == run; });
  *txn.add_success() = PutOp(Cat(p, "removed/", run), std::string(reason));
  after.removed[run] = std::string(reason);
  auto tr =
      CommitStep(ctx, repo, std::move(txn), {}, std::move(after),
                 Commit::kQueue, /*admits=*/false, commit_id, nullptr, current);
  if (!tr.ok()) return tr.status();
  if (!tr->has_value()) return false;
  logger_->info("{} in {} removed from the queue ({})", run, repo, reason);
  return true;
}

int64_t EtcdDriver::DeadlineUs(const RepoView& v, const QueueInfo& q) {
  const int64_t max = q.max_queue_us > 0 ? q.max_queue_us : v.max_queue_us;
  return max > 0 ? q.enqueued_us + max : INT64_MAX;
}

std::set<const EtcdDriver::QueueInfo*> EtcdDriver::TimedOut(const RepoView& v,
                                                            int64_t now_us) {
  std::set<const QueueInfo*> out;
  if (v.max_queue_us == 0 && !v.entry_limits) return out;
  for (const QueueInfo& q : v.queue) {
    if (DeadlineUs(v, q) <= now_us) out.insert(&q);
  }
  return out;
}

void EtcdDriver::NoteDeadlinesLocked(const std::string& repo,
                                     const RepoView& v) {
  if (v.max_queue_us == 0 && !v.entry_limits) return;
  int64_t earliest = INT64_MAX;
  for (const QueueInfo& q : v.queue) {
    earliest = std::min(earliest, DeadlineUs(v, q));
  }
  ScheduleLocked(repo, earliest);
}

void EtcdDriver::ScheduleLocked(const std::string& repo, int64_t at_us) {
  if (at_us == INT64_MAX) return;
  auto [it, added] = deadline_steps_.try_emplace(repo, at_us);
  if (!added && it->second <= at_us) return;
  it->second = at_us;
  cv_.NotifyAll();
}

absl::Status EtcdDriver::SetRepositoryPolicy(const Context& ctx,
                                             std::string_view repo_key,
                                             const RepositoryPolicy& policy) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string repo(repo_key);
  const std::string p = RepoPrefix(repo);
  // A new membership (etcd_shared.cc) is recorded with the policy, its
  // keys and `held` keys, in one guarded Txn; then this repository is
  // stepped (it may have left), and the limits it joined or left passed.
  std::vector<std::string> touched;
  auto changed = ChangeMembership(ctx, repo, policy, &touched);
  if (!changed.ok()) return changed.status();
  if (*changed) {
    auto r = Step(ctx, repo, 0, /*set_limit=*/false, "", {},
                  /*holding_turn=*/false, StepShared{0, true});
    if (!r.ok()) return r.status();
    SharedPass(ctx, touched);
    return absl::OkStatus();
  }
  // The key, and `meta` rewritten if the repository has one: every plan
  // made on a view of the old policy (the old order) fails its compare of
  // `meta` and is made again, so a change of mode reorders the queue in
  // one step. (No `meta` is made for a repository without one: its
  // absence tells an acquire that the limit is to be recorded.)
  const std::string value = EncodePolicy(policy);
  etcdpb::TxnRequest txn;
  auto* exists = txn.add_compare();
  exists->set_key(p + "meta");
  exists->set_target(etcdpb::Compare::CREATE);
  exists->set_result(etcdpb::Compare::GREATER);
  exists->set_create_revision(0);
  for (auto* ops : {txn.mutable_success(), txn.mutable_failure()}) {
    *ops->Add() =
        value.empty() ? DeleteOp(p + "policy") : PutOp(p + "policy", value);
  }
  *txn.add_success() = PutOp(p + "meta", NewCommitId());
  if (auto r = kv_->Txn(ctx, txn); !r.ok()) return r.status();
  ForgetView(repo);
  // Live: runs now past the limit leave in this step.
  auto r = Step(ctx, repo, 0, /*set_limit=*/false, "", {});
  if (!r.ok()) return r.status();
  logger_->info("policy of {} recorded ({})", repo,
                value.empty() ? "default" : value);
  return absl::OkStatus();
}

absl::StatusOr<RepositoryPolicy> EtcdDriver::GetRepositoryPolicy(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  auto v =
      GetKey(ctx, Cat(RepoPrefix(std::string(repo_key)), "policy"), "policy");
  if (absl::IsNotFound(v.status())) return RepositoryPolicy{};
  if (!v.ok()) return v.status();
  std::optional<RepositoryPolicy> policy = DecodePolicy(*v);
  if (!policy.has_value()) {
    return absl::DataLossError(
        Cat("etcd: the policy of ", repo_key, " does not parse: ", *v));
  }
  return *policy;
}

}  // namespace pac::concurrency::internal
