// The etcd driver's imports (ImportBatch, ImportRuns): a batch of
// repositories written by one Txn. Each repository's part is planned on
// the driver's view of it (the running runs given seats, the waiting runs
// queued or admitted oldest first), and the Txn commits only if no key of
// any of its repositories was put since that view: one compare per
// repository, a range over its keys; else it is planned again on fresh
// reads. A Txn carries at most kMaxTxnOps
// operations; a run costs two at most (a seat and the delete of its queue
// entry), a repository two (`meta` and its limit), so a batch takes 64 runs
// and repositories (GetImportCapacity). Queue heads of other runs that a
// raised limit admits, beyond what the Txn has room for, are admitted by
// ordinary steps after it.
#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

namespace {

// An entry this Txn joins has no revision yet: it sorts after every entry
// of the view with its creation time.
constexpr int64_t kPending = std::numeric_limits<int64_t>::max();

}  // namespace

ImportCapacity EtcdDriver::GetImportCapacity() {
  return ImportCapacity{kMaxTxnOps / 2, 1};
}

absl::StatusOr<ImportResult> EtcdDriver::ImportRuns(
    const Context& ctx, const Repository& repo, const ImportRequest& request) {
  if (absl::Status s = ValidateImportRequest(repo, request); !s.ok()) {
    return s;
  }
  const ImportCapacity cap = GetImportCapacity();
  size_t per_part = cap.runs - cap.per_repository;
  // A member's running runs put a `held` key per shared limit too.
  auto policy = GetRepositoryPolicy(ctx, repo.Key());
  if (!policy.ok()) return policy.status();
  if (const size_t n = policy->shared_limits.size(); n > 0) {
    per_part = std::max<size_t>(1, (kMaxTxnOps - 8) / (2 + n));
  }
  if (request.running.size() + request.waiting.size() <= per_part) {
    auto out = ImportBatch(ctx, {RepositoryImport{repo, request}});
    if (!out.ok()) return out.status();
    return std::move(out->front());
  }
  // More than one Txn carries: parts of it, the running runs first, then
  // the waiting ones oldest first (equal times in request order), so that
  // a part never admits a run ahead of an older one a later part brings.
  // Each part is atomic and idempotent; the whole is not.
  std::vector<const ImportRequest::Waiting*> by_time;
  for (const ImportRequest::Waiting& w : request.waiting) by_time.push_back(&w);
  std::stable_sort(by_time.begin(), by_time.end(),
                   [](const auto* a, const auto* b) {
                     return a->creation_time < b->creation_time;
                   });
  std::set<std::string> others;
  size_t r = 0, w = 0;
  bool first = true;
  while (first || r < request.running.size() || w < by_time.size()) {
    ImportRequest part;
    part.set_limit = request.set_limit;
    for (; r < request.running.size() && part.running.size() < per_part; ++r) {
      part.running.push_back(request.running[r]);
    }
    for (; w < by_time.size() &&
           part.running.size() + part.waiting.size() < per_part;
         ++w) {
      part.waiting.push_back(*by_time[w]);
    }
    first = false;
    auto got = ImportBatch(ctx, {RepositoryImport{repo, std::move(part)}});
    if (!got.ok()) return got.status();
    for (const Lease& l : got->front().others_admitted) {
      others.insert(l.pipeline_run_key);
    }
  }
  // The leases and places as the last part left them.
  auto v = Read(ctx, repo.Key());
  if (!v.ok()) return v.status();
  return ImportResultOf(*v, request, others);
}

std::vector<Lease> EtcdDriver::RunningOfView(const RepoView& v) {
  std::vector<Lease> out;
  const absl::Time now = clock_->Now();
  for (const auto& [run, slot] : v.slots) {
    int64_t lease = 0;
    ParseHex(slot.lease_hex, &lease);
    Lease l = MakeLease(v.repo, run, lease, slot.revision, slot.seat, now);
    l.cancel_requested = CancelRequested(v, slot);
    l.expires_at = ExpiryOf(lease, now);
    out.push_back(std::move(l));
  }
  return out;
}

ImportResult EtcdDriver::ImportResultOf(const RepoView& v,
                                        const ImportRequest& request,
                                        const std::set<std::string>& others) {
  std::map<std::string, Lease> held;
  for (Lease& l : RunningOfView(v)) {
    std::string run = l.pipeline_run_key;
    held.emplace(std::move(run), std::move(l));
  }
  std::map<std::string, QueueEntry> queued;
  for (QueueEntry& q : QueuedOf(v)) {
    std::string run = q.pipeline_run_key;
    queued.emplace(std::move(run), std::move(q));
  }
  ImportResult out;
  for (const std::string& run : request.running) {
    if (auto it = held.find(run); it != held.end()) {
      out.running.push_back(it->second);
    }
  }
  for (const ImportRequest::Waiting& w : request.waiting) {
    if (auto it = held.find(w.pipeline_run_key); it != held.end()) {
      out.admitted.push_back(it->second);
    } else if (auto q = queued.find(w.pipeline_run_key); q != queued.end()) {
      out.queued.push_back(q->second);
    }
  }
  std::set<std::string_view> mine(request.running.begin(),
                                  request.running.end());
  for (const ImportRequest::Waiting& w : request.waiting) {
    mine.insert(w.pipeline_run_key);
  }
  for (const std::string& run : others) {
    auto it = held.find(run);
    if (it != held.end() && mine.count(run) == 0) {
      out.others_admitted.push_back(it->second);
    }
  }
  return out;
}

size_t EtcdDriver::PlanImport(const RepositoryImport& part,
                              const std::string& commit_id, bool promote_others,
                              const std::vector<int64_t>* leases,
                              size_t* next_lease, ImportPart* plan,
                              etcdpb::TxnRequest* txn) {
  const RepoView& v = plan->view;
  plan->others.clear();
  plan->promote_more = false;
  const ImportRequest& req = part.request;
  const std::string p = RepoPrefix(plan->repo);
  const int32_t wanted = EffectiveLimit(part.repository);
  // As an acquire with keep_recorded_limit records it, when set_limit is
  // false: the recorded limit stays, the request's is recorded if none is.
  const bool set = req.set_limit || !v.has_limit;
  plan->limit = set ? wanted : v.limit;
  const bool limit_changed = set && (!v.has_limit || v.limit != wanted);
  RepoView& after = plan->after;
  after = v;
  size_t grants = 0;
  const int ops_before = txn->success_size();
  auto take_lease = [&]() -> int64_t {
    return leases == nullptr ? 0 : (*leases)[(*next_lease)++];
  };
  const std::set<const QueueInfo*> stale = StaleEntries(v);
  std::map<std::string, const QueueInfo*> live;
  for (const QueueInfo& q : v.queue) {
    if (stale.count(&q) == 0) live.emplace(q.run, &q);
  }
  // The running runs: a seat each (out of the queue if they wait there).
  for (const std::string& run : req.running) {
    if (after.slots.count(run) > 0) continue;
    auto q = live.find(run);
    const std::string dequeued = q == live.end() ? "" : q->second->key;
    ++grants;
    AddGrant(txn, &after, run, take_lease(), dequeued, commit_id, "");
    if (q != live.end()) live.erase(q);
    if (after.removed.erase(run) > 0) {  // removed, but the cluster runs it
      *txn->add_success() = DeleteOp(Cat(p, "removed/", run));
    }
  }
  // The waiting runs the backend does not hold yet join the queue, in
  // request order among equal creation times.
  std::set<std::string> mine(req.running.begin(), req.running.end());
  const int64_t now_us = absl::ToUnixMicros(clock_->Now());
  std::vector<QueueInfo> joining;
  int64_t ord = 0;
  for (const ImportRequest::Waiting& w : req.waiting) {
    mine.insert(w.pipeline_run_key);
    if (after.slots.count(w.pipeline_run_key) > 0 ||
        live.count(w.pipeline_run_key) > 0 ||
        after.removed.count(w.pipeline_run_key) > 0) {
      continue;  // held, or removed from the queue: stays out
    }
    const int64_t us = absl::ToUnixMicros(w.creation_time);
    joining.push_back(
        QueueInfo{w.pipeline_run_key,
                  Cat(p, "queue/", QueueTime(us), "/", w.pipeline_run_key), us,
                  kPending, now_us, ++ord});
    joining.back().group = w.group;
    joining.back().priority = w.priority;
  }
  // Admission order over what waits: the live entries and the joining.
  std::vector<const QueueInfo*> order;
  const QueueMode mode = v.mode;
  // (Entries past their queue deadline wait for nothing: a step removes
  // them.)
  const std::set<const QueueInfo*> due = TimedOut(v, now_us);
  for (const auto& [run, q] : live) {
    if (due.count(q) == 0) order.push_back(q);
  }
  for (const QueueInfo& q : joining) order.push_back(&q);
  std::sort(order.begin(), order.end(),
            [mode](const QueueInfo* a, const QueueInfo* b) {
              return AdmitsBefore(mode, *a, *b);
            });
  int64_t running = static_cast<int64_t>(after.slots.size());
  std::set<const QueueInfo*> admitted;
  for (const QueueInfo* q : order) {
    // A member's queue is admitted by SharedPass, after the batch.
    if (!v.shared.empty()) break;
    if (plan->limit != 0 && running >= plan->limit) break;
    const bool joins = q->create_revision == kPending;
    if (!joins && mine.count(q->run) == 0) {
      if (!promote_others) {
        plan->promote_more = true;  // the rest by ordinary steps (FIFO)
        break;
      }
      plan->others.insert(q->run);
    }
    ++grants;
    ++running;
    admitted.insert(q);
    AddGrant(txn, &after, q->run, take_lease(), joins ? "" : q->key, commit_id,
             q->group);
  }
  for (const QueueInfo& q : joining) {
    if (admitted.count(&q) > 0) continue;
    // "<enqueued µs>/<ord>[^<priority>][/<group>]" (etcd_view.cc)
    *txn->add_success() =
        PutOp(q.key, Cat(std::to_string(q.enqueued_us), "/", q.ord,
                         q.priority != 0 ? Cat("^", q.priority) : std::string(),
                         q.group.empty() ? std::string() : Cat("/", q.group)));
    QueueInfo e = q;
    e.create_revision = 0;  // the commit's, once known
    after.queue.push_back(std::move(e));
  }
  plan->writes = txn->success_size() > ops_before || limit_changed;
  if (plan->writes) {
    // Commits only if no key of the repository was put since the view:
    // no grant, no join, no limit, no `meta` (a deleted slot, an expiry or
    // a release, only leaves a seat free, which Answer's step fills).
    auto* cmp = txn->add_compare();
    cmp->set_key(p);
    cmp->set_range_end(PrefixEnd(p));
    cmp->set_target(etcdpb::Compare::MOD);
    cmp->set_result(etcdpb::Compare::LESS);
    cmp->set_mod_revision(v.revision + 1);
    *txn->add_success() = PutOp(p + "meta", commit_id);
    if (limit_changed) {
      *txn->add_success() = PutOp(p + "limit", std::to_string(wanted));
      after.limit = wanted;
      after.has_limit = true;
    }
  }
  return grants;
}

absl::StatusOr<std::vector<ImportResult>> EtcdDriver::ImportBatch(
    const Context& ctx, const std::vector<RepositoryImport>& parts) {
  if (absl::Status s = ValidateImportBatch(parts, GetImportCapacity());
      !s.ok()) {
    return s;
  }
  std::vector<std::string> pass;
  auto out = ImportBatchInTurns(ctx, parts, &pass);
  if (absl::IsResourceExhausted(out.status()) && parts.size() > 1) {
    // Members' `held` keys made the batch too big for one Txn: each part
    // by itself (each atomic, as a batch's parts are not together).
    std::vector<ImportResult> each;
    for (const RepositoryImport& part : parts) {
      auto one = ImportRuns(ctx, part.repository, part.request);
      if (!one.ok()) return one.status();
      each.push_back(*std::move(one));
    }
    return each;
  }
  if (!out.ok() || pass.empty()) return out;
  // The members' queues, admitted once the turns are over (rule 22), and
  // the answers of their parts read again.
  if (SharedPass(ctx, pass).empty()) return out;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto v = Read(ctx, parts[i].repository.Key());
    if (!v.ok()) return v.status();
    if (v->shared.empty()) continue;
    std::set<std::string> others;
    for (const Lease& l : (*out)[i].others_admitted) {
      others.insert(l.pipeline_run_key);
    }
    (*out)[i] = ImportResultOf(*v, parts[i].request, others);
  }
  return out;
}

absl::StatusOr<std::vector<ImportResult>> EtcdDriver::ImportBatchInTurns(
    const Context& ctx, const std::vector<RepositoryImport>& parts,
    std::vector<std::string>* pass) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  // This process's guarded steps of these repositories wait their turn
  // (taken in key order, so two batches cannot hold each other's).
  std::map<std::string, size_t> by_repo;
  for (size_t i = 0; i < parts.size(); ++i) {
    by_repo[parts[i].repository.Key()] = i;
  }
  std::vector<std::string> turns;
  absl::Cleanup end_turns = [&] {
    for (const std::string& repo : turns) EndTurn(repo);
  };
  for (const auto& [repo, i] : by_repo) {
    if (absl::Status s = TakeTurn(ctx, repo, nullptr); !s.ok()) return s;
    turns.push_back(repo);
  }
  std::vector<ImportPart> plans(parts.size());
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    if (absl::Status s = CheckOpen(); !s.ok()) return s;
    // The first plan is on the views the watch keeps (an import's batches
    // of one repository follow each other, each planned on what the last
    // one left, instead of reading a queue that grows with every batch);
    // a Txn that fails its compares is planned again on fresh reads.
    for (size_t i = 0; i < parts.size(); ++i) {
      plans[i] = ImportPart{};
      plans[i].repo = parts[i].repository.Key();
      bool cached = false;
      auto v = attempt == 0 ? View(ctx, plans[i].repo, &cached)
                            : Read(ctx, plans[i].repo);
      if (!v.ok()) return v.status();
      plans[i].view = *std::move(v);
    }
    // Planned first without leases, for its size: admitting other runs'
    // queue heads too if the Txn has room for them, else only the
    // request's runs.
    bool promote_others = true;
    size_t n_leases = 0;
    etcdpb::TxnRequest sized;
    for (int pass = 0; pass < 2; ++pass) {
      sized.Clear();
      n_leases = 0;
      for (size_t i = 0; i < parts.size(); ++i) {
        n_leases += PlanImport(parts[i], "", promote_others, nullptr, nullptr,
                               &plans[i], &sized);
      }
      if (static_cast<size_t>(sized.success_size()) <= kMaxTxnOps) break;
      promote_others = false;
    }
    const size_t ops = static_cast<size_t>(sized.success_size());
    if (ops > kMaxTxnOps) {
      return absl::ResourceExhaustedError(
          Cat("etcd import: a batch planned ", ops, " operations, above ",
              kMaxTxnOps, " (GetImportCapacity)"));
    }
    pass->clear();
    for (const ImportPart& plan : plans) {
      pass->insert(pass->end(), plan.view.shared.begin(),
                   plan.view.shared.end());
    }
    if (ops == 0) {  // everything in place already
      return Answer(ctx, parts, plans, 0, "");
    }
    auto leases = Leases(ctx, n_leases);
    if (!leases.ok()) return leases.status();
    const std::string commit_id = NewCommitId();
    etcdpb::TxnRequest txn;
    size_t next = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      PlanImport(parts[i], commit_id, promote_others, &*leases, &next,
                 &plans[i], &txn);
    }
    auto tr = kv_->Txn(ctx, txn);
    if (tr.ok() && tr->succeeded()) {
      return Answer(ctx, parts, plans, tr->header().revision(), commit_id);
    }
    if (tr.ok() || absl::IsInvalidArgument(tr.status()) ||
        absl::IsPermissionDenied(tr.status())) {
      // Nothing written: the leases carry nothing.
      MutexLock lock(&mu_);
      for (int64_t l : *leases) spare_leases_.push_back(l);
    }
    if (!tr.ok() && !IsRetryable(tr.status())) return tr.status();
    // A lost compare, or an answer lost (the Txn may have committed: the
    // next plan, on fresh reads, then finds everything in place).
  }
  return absl::AbortedError("etcd import: too much contention; try again");
}

absl::StatusOr<std::vector<ImportResult>> EtcdDriver::Answer(
    const Context& ctx, const std::vector<RepositoryImport>& parts,
    std::vector<ImportPart>& plans, int64_t revision,
    const std::string& commit_id) {
  std::vector<ImportResult> out(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    ImportPart& plan = plans[i];
    RepoView& after = plan.after;
    if (revision > 0 && plan.writes) {
      after.revision = revision;
      after.meta_mod = revision;
      after.meta_commit_id = commit_id;
      after.exists = true;
      for (auto& [run, slot] : after.slots) {
        if (slot.revision == 0) slot.revision = revision;
      }
      for (QueueInfo& q : after.queue) {
        if (q.create_revision == 0) q.create_revision = revision;
      }
      SortQueue(&after);
      CacheView(plan.repo, after);
    }
    // Free seats beside a queue: heads this Txn had no room for, or seats
    // freed since the read. Admitted by an ordinary step, in order.
    std::set<std::string> others = plan.others;
    const int64_t held = static_cast<int64_t>(after.slots.size());
    const bool room = plan.limit == 0 || held < plan.limit;
    if (after.shared.empty() && !QueuedOf(after).empty() &&
        (plan.promote_more || room)) {
      auto r = Step(ctx, plan.repo, plan.limit, false, "", AcquireOptions{},
                    /*holding_turn=*/true);
      if (!r.ok()) return r.status();
      for (const Lease& l : r->admitted) others.insert(l.pipeline_run_key);
      auto v = Read(ctx, plan.repo);
      if (!v.ok()) return v.status();
      after = *std::move(v);
    }
    out[i] = ImportResultOf(after, parts[i].request, others);
    logger_->info("imported {} running and {} waiting runs into {}",
                  parts[i].request.running.size(),
                  parts[i].request.waiting.size(), plan.repo);
  }
  return out;
}

}  // namespace pac::concurrency::internal
