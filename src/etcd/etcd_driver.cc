// The etcd driver's front (etcd_driver.h has the key layout): creation
// and closing, argument checks of the Driver API, the reads that answer
// status (limit, running and queued runs, snapshots), lease renewal,
// free-form states and cleanup. Listings are in etcd_listing.cc. The steps that
// change slots and queues are in etcd_step.cc.
#include "src/etcd/etcd_driver.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <map>
#include <set>
#include <string>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_encoding.h"
#include "src/etcd/mock_etcd.h"

namespace pac::concurrency::internal {

std::shared_ptr<EtcdKV> SharedMockEtcd(Clock* clock) {
  static std::mutex mu;
  static std::map<Clock*, std::weak_ptr<EtcdKV>> stores;
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<EtcdKV> kv = stores[clock].lock();
  if (kv == nullptr) {
    kv = std::make_shared<MockEtcd>(clock);
    stores[clock] = kv;
  }
  return kv;
}

absl::StatusOr<std::unique_ptr<Driver>> EtcdDriver::Create(
    std::shared_ptr<EtcdKV> kv, const EtcdConfig& config,
    const DriverOptions& options) {
  std::unique_ptr<EtcdDriver> d(new EtcdDriver(std::move(kv), config, options));
  // Prove the store answers, and learn the revision to watch from.
  Context ctx =
      Context::WithTimeout(Context::Background(), config.dial_timeout);
  etcdpb::RangeRequest probe;
  probe.set_key(d->prefix_);
  probe.set_range_end(PrefixEnd(d->prefix_));
  probe.set_count_only(true);
  auto r = d->kv_->Range(ctx, probe);
  if (!r.ok()) return r.status();
  // The watch stream opens on first need (EnsureWatch).
  d->clock_listener_ = d->clock_->AddAdvanceListener([p = d.get()] {
    MutexLock lock(&p->mu_);
    p->cv_.NotifyAll();
  });
  d->promote_thread_ = std::thread([p = d.get()] { p->PromoteLoop(); });
  d->refill_thread_ = std::thread([p = d.get()] { p->RefillLoop(); });
  d->logger_->info("etcd driver ready (mode {}, prefix {}, lease ttl {}s)",
                   config.mode, d->prefix_, d->ttl_seconds_);
  return std::unique_ptr<Driver>(std::move(d));
}

EtcdDriver::EtcdDriver(std::shared_ptr<EtcdKV> kv, const EtcdConfig& config,
                       const DriverOptions& options)
    : kv_(std::move(kv)),
      prefix_(config.prefix.back() == '/' ? config.prefix
                                          : config.prefix + "/"),
      ttl_(absl::Seconds(
          std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(
                                   config.lease_ttl, absl::Seconds(1)))))),
      ttl_seconds_(absl::ToInt64Seconds(ttl_)),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      logger_(OrNullLogger(options.logger)),
      background_(options.background_cleanup),
      instance_id_(RandomInstanceId()) {}

EtcdDriver::~EtcdDriver() { (void)Close(); }

absl::Status EtcdDriver::Close() {
  if (closed_.exchange(true)) return absl::OkStatus();
  if (clock_listener_ != 0) clock_->RemoveAdvanceListener(clock_listener_);
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  watchers_.StopAll();
  cv_.NotifyAll();
  turns_cv_.NotifyAll();
  views_cv_.NotifyAll();
  refill_cv_.NotifyAll();
  if (promote_thread_.joinable()) promote_thread_.join();
  if (refill_thread_.joinable()) refill_thread_.join();
  {
    MutexLock lock(&watch_mu_);
    watch_.reset();
  }
  dispatcher_.Shutdown();
  logger_->info("etcd driver closed");
  return absl::OkStatus();
}

absl::Status EtcdDriver::CheckOpen() const {
  if (closed_.load())
    return absl::FailedPreconditionError("etcd driver is closed");
  return absl::OkStatus();
}

absl::Status EtcdDriver::PutKey(const Context& ctx, std::string key,
                                std::string_view value) {
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  etcdpb::PutRequest req;
  req.set_key(std::move(key));
  req.set_value(std::string(value));
  auto r = kv_->Put(ctx, req);
  return r.ok() ? absl::OkStatus() : r.status();
}

absl::StatusOr<std::string> EtcdDriver::GetKey(const Context& ctx,
                                               std::string key,
                                               std::string_view what) {
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  etcdpb::RangeRequest req;
  req.set_key(std::move(key));
  auto r = kv_->Range(ctx, req);
  if (!r.ok()) return r.status();
  if (r->kvs_size() == 0)
    return absl::NotFoundError(Cat(what, " has no state"));
  return r->kvs(0).value();
}

absl::StatusOr<AcquireResult> EtcdDriver::AcquireSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key,
    const AcquireOptions& options) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ValidateAcquireOptions(options); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  return Step(ctx, repo.Key(), EffectiveLimit(repo), true, std::string(run_key),
              options);
}

absl::StatusOr<std::vector<Lease>> EtcdDriver::SetRepositoryLimit(
    const Context& ctx, const Repository& repo) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  auto r = Step(ctx, repo.Key(), EffectiveLimit(repo), true, "", {});
  if (!r.ok()) return r.status();
  return r->admitted;
}

absl::StatusOr<Lease> EtcdDriver::RenewLease(const Context& ctx,
                                             std::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError("lease_id: must not be empty");
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  std::optional<ParsedLeaseId> id = ParseLeaseId(lease_id);
  if (!id.has_value()) return LeaseLostError("unknown lease id");
  const int64_t lease = id->lease, revision = id->revision;
  const std::string& repo = id->repo;
  const std::string& run = id->run;
  // The seat and the run's request to stop, in one read-only Txn.
  etcdpb::TxnRequest reads;
  reads.add_success()->mutable_request_range()->set_key(
      SeatKey(repo, id->seat));
  reads.add_success()->mutable_request_range()->set_key(
      Cat(RepoPrefix(repo), "cancel/", run));
  auto tr = kv_->Txn(ctx, reads);
  if (!tr.ok()) return tr.status();
  if (tr->responses_size() != 2) {
    return absl::InternalError("etcd: a read-only Txn answered no ranges");
  }
  const etcdpb::RangeResponse& s = tr->responses(0).response_range();
  const etcdpb::RangeResponse& c = tr->responses(1).response_range();
  // The seat must hold the grant this id names (same revision): the etcd
  // lease, and the seat, may carry a later grant by now.
  const std::vector<absl::string_view> f =
      s.kvs_size() == 0 ? std::vector<absl::string_view>{}
                        : SeatFields(s.kvs(0).value());
  if (f.size() != 4 || s.kvs(0).mod_revision() != revision ||
      SV(f[0]) != Hex(lease) || SV(f[3]) != run) {
    return LeaseLostError("lease has expired or was released");
  }
  // A request names the grant it asks (an earlier grant's asks nothing).
  int64_t asked = 0;
  const bool cancel_requested = c.kvs_size() > 0 &&
                                ParseHex(c.kvs(0).value(), &asked) &&
                                asked == revision;
  const absl::Time before = clock_->Now();
  auto ttl = kv_->LeaseKeepAlive(ctx, lease);
  if (!ttl.ok()) return ttl.status();
  if (*ttl <= 0) return LeaseLostError("lease has expired");
  absl::Time now = clock_->Now();
  {
    MutexLock lock(&mu_);
    if (auto it = lease_since_.find(lease); it != lease_since_.end()) {
      it->second = before;  // its TTL restarted
    }
  }
  Lease out = MakeLease(repo, run, lease, revision, id->seat, now);
  out.expires_at = now + absl::Seconds(*ttl);
  out.cancel_requested = cancel_requested;
  return out;
}

absl::StatusOr<std::optional<int32_t>> EtcdDriver::GetRepositoryLimit(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  etcdpb::RangeRequest req;
  req.set_key(RepoPrefix(repo_key) + "limit");
  auto r = kv_->Range(ctx, req);
  if (!r.ok()) return r.status();
  if (r->kvs_size() == 0) return std::optional<int32_t>();
  int32_t limit = 0;
  const std::string& v = r->kvs(0).value();
  std::from_chars(v.data(), v.data() + v.size(), limit);
  return std::optional<int32_t>(limit);
}

absl::StatusOr<int> EtcdDriver::GetCurrentSlots(const Context& ctx,
                                                std::string_view repo_key) {
  auto l = GetRunningPipelineRuns(ctx, repo_key);
  if (!l.ok()) return l.status();
  return static_cast<int>(l->size());
}

absl::StatusOr<std::map<int64_t, int64_t>> EtcdDriver::LeaseTtls(
    const Context& ctx, const std::vector<int64_t>& leases) {
  std::vector<int64_t> ids(leases);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<absl::StatusOr<int64_t>> ttls(ids.size(), int64_t{0});
  // One round trip each: a listing page of 500 repositories with a lease
  // each asked them one after another (0.3 s a page). Up to
  // kTtlQueries at a time.
  std::atomic<size_t> next{0};
  auto ask = [&] {
    for (size_t i = next++; i < ids.size(); i = next++) {
      ttls[i] = kv_->LeaseTimeToLive(ctx, ids[i]);
    }
  };
  std::vector<std::thread> helpers;
  const size_t n = std::min(ids.size(), kTtlQueries);
  for (size_t t = 1; t < n; ++t) helpers.emplace_back(ask);
  ask();
  for (std::thread& t : helpers) t.join();
  std::map<int64_t, int64_t> out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ttls[i].ok()) return ttls[i].status();
    out.emplace(ids[i], *ttls[i]);
  }
  return out;
}

void EtcdDriver::AddLeases(const RepoView& v, std::vector<int64_t>* out) {
  for (const auto& [run, slot] : v.slots) {
    int64_t lease = 0;
    ParseHex(slot.lease_hex, &lease);
    out->push_back(lease);
  }
}

absl::StatusOr<std::vector<Lease>> EtcdDriver::RunningOf(
    const Context& ctx, const RepoView& v,
    const std::map<int64_t, int64_t>* ttls) {
  std::map<int64_t, int64_t> asked;
  if (ttls == nullptr) {
    std::vector<int64_t> leases;
    AddLeases(v, &leases);
    auto t = LeaseTtls(ctx, leases);
    if (!t.ok()) return t.status();
    asked = *std::move(t);
    ttls = &asked;
  }
  std::vector<Lease> out;
  absl::Time now = clock_->Now();
  for (const auto& [run, s] : v.slots) {
    int64_t lease = 0;
    ParseHex(s.lease_hex, &lease);
    Lease l = MakeLease(v.repo, run, lease, s.revision, s.seat, now);
    l.cancel_requested = CancelRequested(v, s);
    // The true expiry: what is left of the etcd lease (renewals move it).
    auto left = ttls->find(lease);
    if (left == ttls->end() || left->second < 0) {
      continue;  // expired; etcd deletes the key any moment
    }
    l.expires_at = now + absl::Seconds(left->second);
    out.push_back(std::move(l));
  }
  std::sort(out.begin(), out.end(), [](const Lease& a, const Lease& b) {
    return a.fencing_token < b.fencing_token;
  });
  return out;
}

std::vector<QueueEntry> EtcdDriver::QueuedOf(const RepoView& v) {
  // A run is queued once: an entry of a run that holds a slot, or a
  // second entry of one (StaleEntries), waits for nothing and is not shown.
  const std::set<const QueueInfo*> stale = StaleEntries(v);
  std::vector<QueueEntry> out;
  int64_t pos = 0;
  for (const QueueInfo& q : v.queue) {
    if (stale.count(&q) > 0) continue;
    out.push_back(QueueEntry{
        q.run, absl::FromUnixMicros(q.creation_us), q.create_revision,
        absl::FromUnixMicros(q.enqueued_us), ++pos, q.priority});
  }
  return out;
}

absl::StatusOr<EtcdDriver::RepoView> EtcdDriver::ReadChecked(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  return Read(ctx, std::string(repo_key));
}

absl::StatusOr<std::vector<Lease>> EtcdDriver::GetRunningPipelineRuns(
    const Context& ctx, std::string_view repo_key) {
  auto v = ReadChecked(ctx, repo_key);
  if (!v.ok()) return v.status();
  return RunningOf(ctx, *v);
}

absl::StatusOr<std::vector<QueueEntry>> EtcdDriver::GetQueuedPipelineRuns(
    const Context& ctx, std::string_view repo_key) {
  auto v = ReadChecked(ctx, repo_key);
  if (!v.ok()) return v.status();
  return QueuedOf(*v);
}

// One Range of the repository: its limit, slots and queue at one revision.
// (A slot whose lease etcd reports expired is left out, as in
// GetRunningPipelineRuns; etcd deletes such a key any moment.)
absl::StatusOr<RepositorySnapshot> EtcdDriver::GetRepositorySnapshot(
    const Context& ctx, std::string_view repo_key) {
  auto v = ReadChecked(ctx, repo_key);
  if (!v.ok()) return v.status();
  RepositorySnapshot out;
  if (v->has_limit) out.limit = v->limit;
  auto running = RunningOf(ctx, *v);
  if (!running.ok()) return running.status();
  out.running = *std::move(running);
  out.queued = QueuedOf(*v);
  out.mode = v->mode;
  return out;
}

absl::Status EtcdDriver::SetRepositoryState(const Context& ctx,
                                            const Repository& repo,
                                            std::string_view state) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ValidateState(state); !s.ok()) return s;
  return PutKey(ctx, Cat(prefix_, "state/repo/", repo.Key()), state);
}

absl::StatusOr<std::string> EtcdDriver::GetRepositoryState(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  return GetKey(ctx, Cat(prefix_, "state/repo/", repo_key),
                Cat("repository ", repo_key));
}

absl::Status EtcdDriver::SetPipelineRunState(const Context& ctx,
                                             std::string_view run_key,
                                             std::string_view state) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  if (absl::Status s = ValidateState(state); !s.ok()) return s;
  return PutKey(ctx, Cat(prefix_, "state/run/", run_key), state);
}

absl::StatusOr<std::string> EtcdDriver::GetPipelineRunState(
    const Context& ctx, std::string_view run_key) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  return GetKey(ctx, Cat(prefix_, "state/run/", run_key),
                Cat("pipeline run ", run_key));
}

absl::StatusOr<ClearQueueResult> EtcdDriver::ClearQueue(
    const Context& ctx, std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string repo(repo_key);
  const std::string p = RepoPrefix(repo);
  // In this process's turn of the repository, as other guarded steps.
  if (absl::Status s = TakeTurn(ctx, repo, nullptr); !s.ok()) return s;
  absl::Cleanup end_turn = [&] { EndTurn(repo); };
  // Each Txn deletes an entry and puts its removal record per run, and
  // rewrites `meta`: every grant from the queue compares `meta`, so none
  // admits a run this Txn removes, and a run that joins the end of the
  // queue (not guarded by `meta`) compares the record's absence.
  constexpr size_t kMaxClearPerTxn = 60;
  static_assert(2 * kMaxClearPerTxn + 1 <= kMaxTxnOps);
  ClearQueueResult out;
  std::set<std::string> targets;  // the runs queued at the first read
  bool first = true;
  for (int lost = 0; lost < kMaxAttempts;) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    auto view = Read(ctx, repo);
    if (!view.ok()) return view.status();
    const RepoView& v = *view;
    const std::set<const QueueInfo*> stale = StaleEntries(v);
    std::vector<const QueueInfo*> batch;
    for (const QueueInfo& q : v.queue) {
      if (stale.count(&q) > 0) continue;
      if (first) targets.insert(q.run);
      if (targets.count(q.run) > 0 && batch.size() < kMaxClearPerTxn) {
        batch.push_back(&q);
      }
    }
    first = false;
    if (batch.empty()) break;
    const std::string commit_id = NewCommitId();
    etcdpb::TxnRequest txn = GuardedTxn(p, v.meta_mod, commit_id);
    RepoView after = v;
    for (const QueueInfo* q : batch) {
      *txn.add_success() = DeleteOp(q->key);
      *txn.add_success() =
          PutOp(Cat(p, "removed/", q->run), std::string(kRemovedCleared));
      after.removed[q->run] = std::string(kRemovedCleared);
    }
    std::erase_if(after.queue, [&](const QueueInfo& q) {
      return after.removed.count(q.run) > 0;
    });
    auto tr = CommitStep(ctx, repo, std::move(txn), {}, std::move(after),
                         Commit::kQueue, /*admits=*/false, commit_id);
    if (!tr.ok()) return tr.status();
    if (!tr->has_value()) {  // planned on an outdated view: read again
      ++lost;
      continue;
    }
    for (const QueueInfo* q : batch) {
      out.removed.push_back(q->run);
      targets.erase(q->run);
    }
  }
  if (!targets.empty() && !first) {
    // Still queued after kMaxAttempts lost compares: those already removed
    // stay removed, and a call again removes the rest.
    bool left = false;
    auto v = Read(ctx, repo);
    if (!v.ok()) return v.status();
    for (const QueueInfo& q : v->queue) left = left || targets.count(q.run) > 0;
    if (left) {
      return absl::AbortedError(
          Cat("etcd: too much contention on ", repo, " to clear its queue"));
    }
  }
  logger_->info("cleared the queue of {} ({} runs removed)", repo,
                out.removed.size());
  return out;
}

absl::Status EtcdDriver::CleanupRepository(const Context& ctx,
                                           std::string_view repo_key) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  std::string repo(repo_key);
  auto v = Read(ctx, repo);
  if (!v.ok()) return v.status();
  const std::string p = RepoPrefix(repo);
  // The runs' states first, by Txns of at most kMaxTxnOps deletes (etcd's
  // limit), then the repository's keys and state in one Txn, so that an
  // error part way leaves the repository there to clean up again.
  std::set<std::string> runs;
  for (const auto& [run, s] : v->slots) runs.insert(run);
  for (const QueueInfo& q : v->queue) runs.insert(q.run);
  for (const auto& [run, reason] : v->removed) runs.insert(run);
  etcdpb::TxnRequest txn;
  for (auto it = runs.begin(); it != runs.end();) {
    *txn.add_success() = DeleteOp(Cat(prefix_, "state/run/", *it));
    if (++it == runs.end() ||
        static_cast<size_t>(txn.success_size()) == kMaxTxnOps) {
      auto r = kv_->Txn(ctx, txn);
      if (!r.ok()) return r.status();
      txn.Clear();
    }
  }
  *txn.add_success() = DeleteOp(p, PrefixEnd(p));
  *txn.add_success() = DeleteOp(Cat(prefix_, "state/repo/", repo));
  // A member leaves its shared limits, and its slots stop counting.
  for (const std::string& name : v->shared) {
    const std::string sp = SharedPrefix(name);
    *txn.add_success() = DeleteOp(Cat(sp, "member/", repo));
    const std::string held = Cat(sp, "held/", repo, "/");
    *txn.add_success() = DeleteOp(held, PrefixEnd(held));
  }
  auto r = kv_->Txn(ctx, txn);
  ForgetView(repo);
  if (!r.ok()) return r.status();
  SharedPass(ctx, v->shared);
  if (!v->exists) {
    // No meta key to signal the cleanup: tell local watchers directly.
    PendingEvents events;
    watchers_.Collect(repo, WatchEventType::kCleaned, "", &events);
    dispatcher_.Post(std::move(events));
  }
  logger_->info("cleaned up repository {}", repo);
  return absl::OkStatus();
}

}  // namespace pac::concurrency::internal
