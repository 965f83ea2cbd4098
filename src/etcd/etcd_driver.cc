#include "src/etcd/etcd_driver.h"

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/mock_etcd.h"

namespace pac::concurrency::internal {
namespace {

constexpr int kMaxAttempts = 200;
constexpr size_t kMaxCachedViews = 4096;
constexpr size_t kMaxGuardedSlots = 64;
// Light grants (GuardSeats) compare every seat below the limit, besides
// the up to kMaxGuardedSlots slots a plan may compare: etcd allows 128
// compares per Txn.
constexpr int32_t kMaxLightGrantLimit = 32;
constexpr size_t kMaxSeatRuns = 100000;
// Leases granted ahead, so an admission need not wait for a grant.
constexpr size_t kLeasePoolTarget = 4;
// How long View waits for the watch to bring this driver's own commit.
constexpr absl::Duration kOwnCommitWait = absl::Milliseconds(50);
// Releases of one repository answered by one Txn, at most (ReleaseGroup).
constexpr size_t kMaxReleaseGroup = 16;

// Splits `rest`, a key after `P repo/`, into "<ns>/<name>" and what
// follows its '/' (the kind: meta, limit, slot/..., queue/...). False if
// the key has no kind.
bool SplitRepoKey(std::string_view rest, std::string_view* repo,
                  std::string_view* kind) {
  size_t s1 = rest.find('/');
  size_t s2 = s1 == std::string_view::npos ? s1 : rest.find('/', s1 + 1);
  if (s2 == std::string_view::npos) return false;
  *repo = rest.substr(0, s2);
  *kind = rest.substr(s2 + 1);
  return true;
}

// A random 64-bit instance id, in hex.
std::string RandomInstanceId() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[24];
  auto end = std::to_chars(buf, buf + sizeof(buf), v, 16).ptr;
  return std::string(buf, end);
}

std::string Hex(int64_t v) {
  char buf[24];
  auto end =
      std::to_chars(buf, buf + sizeof(buf), static_cast<uint64_t>(v), 16).ptr;
  return std::string(buf, end);
}

bool ParseHex(std::string_view s, int64_t* out) {
  uint64_t v = 0;
  if (s.empty() || s.size() > 16) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
  if (ec != std::errc() || ptr != s.data() + s.size()) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

// A Lease's id: the etcd lease, the grant's revision (its fencing token),
// the seat, and the repository and run the grant is for, as
// `<lease hex>-<revision hex>-<seat hex>:<ns>:<name>:<run ns>:<run name>`
// (':' since a key's '/' would split an HTTP path). An etcd lease is reused
// after a release, and a seat by the next grant, so neither alone names one
// grant; with the revision, a stale holder's id never matches a later grant
// (rule 12). The keys let a release or renewal by id alone go straight to
// the slot, with no index key from lease to slot to write, delete and read.
std::string LeaseId(int64_t lease, int64_t token, int64_t seat,
                    std::string_view repo, std::string_view run) {
  std::string out =
      Cat(Hex(lease), "-", Hex(token), "-", Hex(seat), ":", repo, ":", run);
  std::replace(out.begin(), out.end(), '/', ':');
  return out;
}

struct ParsedLeaseId {
  int64_t lease = 0, token = 0, seat = 0;
  std::string repo, run;
};

// nullopt: not an id this driver issued (then it names no grant here).
std::optional<ParsedLeaseId> ParseLeaseId(std::string_view id) {
  const std::vector<absl::string_view> parts = absl::StrSplit(AV(id), ':');
  if (parts.size() != 5) return std::nullopt;
  const std::vector<absl::string_view> grant = absl::StrSplit(parts[0], '-');
  ParsedLeaseId out;
  if (grant.size() != 3 || !ParseHex(SV(grant[0]), &out.lease) ||
      !ParseHex(SV(grant[1]), &out.token) ||
      !ParseHex(SV(grant[2]), &out.seat)) {
    return std::nullopt;
  }
  out.repo = Cat(SV(parts[1]), "/", SV(parts[2]));
  out.run = Cat(SV(parts[3]), "/", SV(parts[4]));
  if (!ValidateKey(out.repo, "lease id").ok() ||
      !ValidateKey(out.run, "lease id").ok()) {
    return std::nullopt;
  }
  return out;
}

// The fields of a seat's value, "<lease hex>/<µs>/<commit id>/<run>"
// (the run keeps its '/'); fewer than four if it is not one.
std::vector<absl::string_view> SeatFields(const std::string& value) {
  return absl::StrSplit(AV(value), absl::MaxSplits('/', 3));
}

std::string Pad20(int64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%020" PRId64, std::max<int64_t>(v, 0));
  return buf;
}

etcdpb::RequestOp PutOp(const std::string& key, const std::string& value,
                        int64_t lease = 0) {
  etcdpb::RequestOp op;
  auto* p = op.mutable_request_put();
  p->set_key(key);
  p->set_value(value);
  p->set_lease(lease);
  return op;
}

etcdpb::RequestOp DeleteOp(const std::string& key,
                           const std::string& range_end = "") {
  etcdpb::RequestOp op;
  auto* d = op.mutable_request_delete_range();
  d->set_key(key);
  d->set_range_end(range_end);
  return op;
}

}  // namespace

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

EtcdDriver::~EtcdDriver() { (void)Close(); }

absl::Status EtcdDriver::Close() {
  if (closed_.exchange(true)) return absl::OkStatus();
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
  cmp->set_key(Cat(q, Pad20(v.queue.front().creation_us), "/"));
  cmp->set_range_end(drained ? PrefixEnd(q) : last_admitted->key);
  cmp->set_target(etcdpb::Compare::CREATE);
  cmp->set_result(etcdpb::Compare::LESS);
  cmp->set_create_revision(v.revision + 1);
}

std::set<const EtcdDriver::QueueInfo*> EtcdDriver::StaleEntries(
    const RepoView& v) {
  std::set<const QueueInfo*> out;
  std::set<std::string_view> seen;
  for (const QueueInfo& q : v.queue) {
    if (v.slots.count(q.run) > 0 || !seen.insert(q.run).second) {
      out.insert(&q);
    }
  }
  return out;
}

void EtcdDriver::DropStale(etcdpb::TxnRequest* txn, RepoView* after,
                           const std::set<const QueueInfo*>& stale,
                           const std::set<std::string>& callers) {
  for (const QueueInfo* q : stale) {
    if (callers.count(q->run) > 0) continue;  // the callers' are handled
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
                             const std::string& commit_id) const {
  std::set<int64_t> taken;
  for (const auto& [r, slot] : after->slots) taken.insert(slot.seat);
  int64_t seat = 0;
  while (taken.count(seat) > 0) ++seat;
  const std::string key = SeatKey(after->repo, seat);
  const int64_t since_us = absl::ToUnixMicros(LeaseSince(lease));
  *txn->add_success() = PutOp(
      key,
      Cat(Hex(lease), "/", std::to_string(since_us), "/", commit_id, "/", run),
      lease);
  // Its revision is the commit's, filled in by CommitStep.
  after->slots[run] = SlotInfo{run, Hex(lease), 0, since_us, commit_id, seat};
  if (!dequeued_key.empty()) {
    *txn->add_success() = DeleteOp(dequeued_key);
    std::erase_if(after->queue,
                  [&](const QueueInfo& q) { return q.key == dequeued_key; });
  }
  return seat;
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
  }
  // A queue needs promoting when a slot expires, which only the watch
  // sees: from now on this driver watches.
  if (!v.queue.empty()) EnsureWatch(v.revision + 1);
}

void EtcdDriver::ApplyKv(RepoView* v, std::string_view rest, bool put,
                         const etcdpb::KeyValue& kv) {
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
    SlotInfo slot{std::string(f[3]), std::string(f[0]),
                  kv.mod_revision(), 0,
                  std::string(f[2]), seat};
    std::from_chars(f[1].data(), f[1].data() + f[1].size(), slot.since_us);
    v->slots[slot.run] = slot;
  } else if (rest.substr(0, 6) == "queue/") {
    std::erase_if(v->queue,
                  [&](const QueueInfo& q) { return q.key == kv.key(); });
    if (!put) return;
    std::string_view q = rest.substr(6);
    size_t slash = q.find('/');
    if (slash == std::string_view::npos) return;
    QueueInfo qi;
    qi.run = std::string(q.substr(slash + 1));
    qi.key = kv.key();
    std::from_chars(q.data(), q.data() + slash, qi.creation_us);
    qi.create_revision = kv.create_revision();
    std::from_chars(kv.value().data(), kv.value().data() + kv.value().size(),
                    qi.enqueued_us);
    v->queue.push_back(std::move(qi));
  }
}

EtcdDriver::RepoView EtcdDriver::ParseView(const std::string& repo,
                                           const etcdpb::RangeResponse& r,
                                           int64_t revision) const {
  const std::string p = RepoPrefix(repo);
  RepoView v;
  v.repo = repo;
  v.revision = revision;
  for (const auto& kv : r.kvs()) {
    ApplyKv(&v, std::string_view(kv.key()).substr(p.size()), true, kv);
  }
  SortQueue(&v);
  return v;
}

absl::StatusOr<std::vector<int64_t>> EtcdDriver::Leases(const Context& ctx,
                                                        size_t n) {
  std::vector<int64_t> out;
  {
    MutexLock lock(&mu_);
    // A spare lease's TTL runs from its grant: use young ones only.
    const absl::Time oldest = clock_->Now() - ttl_ / 10;
    while (out.size() < n && !spare_leases_.empty()) {
      int64_t l = spare_leases_.back();
      spare_leases_.pop_back();
      auto it = lease_since_.find(l);
      if (it == lease_since_.end() || it->second < oldest) {
        if (it != lease_since_.end()) lease_since_.erase(it);
        continue;  // too old: left to expire (it carries no key)
      }
      out.push_back(l);
    }
    if (n > 0 && spare_leases_.size() < kLeasePoolTarget) {
      refill_wanted_ = true;
      refill_cv_.NotifyOne();
    }
  }
  while (out.size() < n) {
    const absl::Time granted = clock_->Now();
    auto id = kv_->LeaseGrant(ctx, ttl_seconds_);
    if (!id.ok()) {
      MutexLock lock(&mu_);
      for (int64_t l : out) spare_leases_.push_back(l);
      return id.status();
    }
    MutexLock lock(&mu_);
    NoteGrantLocked(*id, granted);
    out.push_back(*id);
  }
  return out;
}

void EtcdDriver::RefillLoop() {
  MutexLock lock(&mu_);
  while (true) {
    while (!stop_ && !refill_wanted_) refill_cv_.Wait(&mu_);
    if (stop_) return;
    refill_wanted_ = false;
    while (!stop_ && spare_leases_.size() < kLeasePoolTarget) {
      mu_.Unlock();
      Context ctx =
          Context::WithTimeout(Context::Background(), absl::Seconds(5));
      const absl::Time granted = clock_->Now();
      auto id = kv_->LeaseGrant(ctx, ttl_seconds_);
      mu_.Lock();
      if (!id.ok()) break;  // the next demand tries again
      NoteGrantLocked(*id, granted);
      spare_leases_.insert(spare_leases_.begin(), *id);  // oldest first out
    }
  }
}

void EtcdDriver::NoteGrantLocked(int64_t lease, absl::Time since) {
  // Leases that expire unreleased stay here: bound the map (a lease
  // forgotten is just never reused).
  if (lease_since_.size() > 100000) lease_since_.clear();
  lease_since_[lease] = since;
}

absl::Time EtcdDriver::ExpiryOf(int64_t lease, absl::Time now) {
  MutexLock lock(&mu_);
  auto it = lease_since_.find(lease);
  return (it == lease_since_.end() ? now : it->second) + ttl_;
}

absl::Time EtcdDriver::LeaseSince(int64_t lease) const {
  MutexLock lock(&mu_);
  auto it = lease_since_.find(lease);
  return it == lease_since_.end() ? clock_->Now() : it->second;
}

void EtcdDriver::RecycleLocked(int64_t lease, absl::Time since) {
  // This driver's own record is the better one (renewals move it).
  auto it = lease_since_.find(lease);
  if (it != lease_since_.end()) since = it->second;
  // Its keys are gone; while young it can carry the next grant (the next
  // Lease gets a new id: the new slot's revision is part of it).
  if (since != absl::InfinitePast() && clock_->Now() - since < ttl_ / 10) {
    lease_since_[lease] = since;
    spare_leases_.push_back(lease);
  } else if (it != lease_since_.end()) {
    lease_since_.erase(it);
  }
}

Lease EtcdDriver::MakeLease(const std::string& repo, const std::string& run,
                            int64_t lease, int64_t token, int64_t seat,
                            absl::Time now) const {
  return Lease{LeaseId(lease, token, seat, repo, run),
               repo,
               run,
               now,
               now + ttl_,
               token};
}

void EtcdDriver::SortQueue(RepoView* v) {
  std::sort(v->queue.begin(), v->queue.end(),
            [](const QueueInfo& a, const QueueInfo& b) {
              if (a.creation_us != b.creation_us) {
                return a.creation_us < b.creation_us;
              }
              return a.create_revision < b.create_revision;
            });
}

absl::StatusOr<std::optional<etcdpb::TxnResponse>> EtcdDriver::CommitStep(
    const Context& ctx, const std::string& repo, etcdpb::TxnRequest txn,
    const std::vector<int64_t>& leases, RepoView after, Commit kind,
    bool admits, const std::string& commit_id, const LightProof* light,
    std::optional<RepoView>* current) {
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
      CacheView(repo, *now);
      etcdpb::TxnResponse done;
      done.set_succeeded(true);
      done.mutable_header()->set_revision(rev);
      return std::optional<etcdpb::TxnResponse>(std::move(done));
    }
  }
  if (tr.ok()) {
    // A lost compare is certain: this Txn wrote nothing.
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

absl::StatusOr<AcquireResult> EtcdDriver::Step(const Context& ctx,
                                               const std::string& repo,
                                               int32_t limit, bool set_limit,
                                               const std::string& run,
                                               const AcquireOptions& options) {
  bool fresh = false;
  std::optional<RepoView> confirmed;  // etcd's view, from Confirm
  Turn turn(this);  // taken once the step turns out to need a guarded write
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
    const int32_t eff_limit = set_limit ? limit : v.limit;
    const bool limit_changed = set_limit && (!v.exists || v.limit != limit);
    int64_t running = static_cast<int64_t>(v.slots.size());
    auto free_slots = [&] {
      return eff_limit == 0 ? INT64_MAX : eff_limit - running;
    };
    // Queue heads admitted into free slots, oldest first.
    const std::set<const QueueInfo*> stale = StaleEntries(v);
    std::vector<const QueueInfo*> promote;
    for (const QueueInfo& q : v.queue) {
      if (free_slots() <= 0) break;
      if (stale.count(&q) > 0) continue;
      promote.push_back(&q);
      ++running;
    }
    AcquireResult result;
    bool grant_caller = false, enqueue_caller = false;
    const QueueInfo* caller_queued = nullptr;
    for (const QueueInfo& q : v.queue) {
      if (q.run == run) caller_queued = &q;
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
      } else if (caller_promoted) {
        // Admitted below with the others.
      } else if (options.adopt_running ||
                 (promote.size() == v.queue.size() && free_slots() > 0)) {
        grant_caller = true;
      } else if (caller_queued != nullptr) {
        int64_t pos = 0;
        for (const QueueInfo& q : v.queue) {
          if (std::find(promote.begin(), promote.end(), &q) != promote.end()) {
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
    if (!limit_changed && promote.empty() && !grant_caller && !enqueue_caller) {
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
      return result;
    }
    const absl::Time now = clock_->Now();
    const std::string p = RepoPrefix(repo);
    int64_t creation_us = 0;
    std::string queue_key;
    if (enqueue_caller) {
      creation_us = absl::ToUnixMicros(options.creation_time.value_or(now));
      queue_key = Cat(p, "queue/", Pad20(creation_us), "/", run);
    }
    const QueueInfo* last = LastQueueKey(v);
    // Joining the end of a queue is a Txn of its own that leaves `meta`
    // alone, so it does not conflict with releases (see FastEnqueueTxn).
    // Only with a given creation time: a re-submit then writes the same key
    // again, where "now" would queue the run a second time.
    const bool fast = enqueue_caller && options.creation_time.has_value() &&
                      !limit_changed && promote.empty() && !grant_caller &&
                      last != nullptr && queue_key > last->key;
    if (!fast && !turn.held()) {
      // Plan again once it is this thread's turn: the view may have moved.
      if (absl::Status s = turn.Take(ctx, repo); !s.ok()) return s;
      --attempt;
      continue;
    }
    // Only the caller granted, nobody queued, under a small limit: a Txn
    // that puts only its seat (GuardSeats shows it atomic).
    const bool light = grant_caller && promote.empty() && !limit_changed &&
                       v.queue.empty() && LightGrantsPossible(v);
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
      DropStale(&txn, &after, stale, {run});
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
          AddGrant(&txn, &after, q->run, lease, q->key, commit_id));
    }
    if (grant_caller) {
      int64_t lease = (*leases)[li++];
      granted.emplace_back(
          run, lease,
          AddGrant(&txn, &after, run, lease,
                   caller_queued != nullptr ? caller_queued->key : "",
                   commit_id));
    }
    if (enqueue_caller) {
      QueueInfo q{run, queue_key, creation_us, 0, absl::ToUnixMicros(now)};
      *txn.add_success() = PutOp(q.key, std::to_string(q.enqueued_us));
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
    const int64_t token = (*tr)->header().revision();
    for (const auto& [r, lease, seat] : granted) {
      Lease l = MakeLease(repo, r, lease, token, seat, now);
      l.expires_at = ExpiryOf(lease, now);
      if (r == run) {
        result.acquired = true;
        result.lease = l;
      } else {
        result.admitted.push_back(l);
        logger_->info("admitted {} from the queue of {} (token {})", r, repo,
                      token);
      }
    }
    // The caller was promoted from the queue along with the others.
    for (auto it = result.admitted.begin(); it != result.admitted.end(); ++it) {
      if (it->pipeline_run_key == run && !run.empty()) {
        result.acquired = true;
        result.lease = *it;
        result.admitted.erase(it);
        break;
      }
    }
    if (enqueue_caller) {
      int64_t pos = 1;
      for (const QueueInfo& q : v.queue) {
        if (std::find(promote.begin(), promote.end(), &q) != promote.end()) {
          continue;
        }
        if (q.creation_us <= creation_us) ++pos;
      }
      result.position = pos;
      logger_->info(
          "concurrency limit {} of {} reached; {} queued at position {}",
          eff_limit, repo, run, pos);
    }
    return result;
  }
  return absl::AbortedError(
      Cat("etcd: too much contention on ", repo, "; try again"));
}

absl::StatusOr<AcquireResult> EtcdDriver::AcquireSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key,
    const AcquireOptions& options) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
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
  int64_t lease = 0, token = 0;
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
    token = id->token;
  }
  ReleaseReq self;
  self.run = run;
  self.lease = lease;
  self.token = token;
  self.by_lease = !lease_id.empty();
  Turn turn(this);
  if (absl::Status s = turn.Take(ctx, repo, &self); !s.ok()) return s;
  if (self.state == ReleaseReq::kDone) return std::move(self.result);
  return ReleaseGroup(ctx, repo, &self);
}

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
                          const std::vector<ReleaseReq*>& group) {
  MutexLock lock(&mu_);
  for (size_t i = group.size(); i-- > 1;) {
    group[i]->state = ReleaseReq::kWaiting;
    release_waiters_[repo].push_front(group[i]);
  }
  turns_cv_.NotifyAll();
}

absl::StatusOr<ReleaseResult> EtcdDriver::ReleaseGroup(const Context& ctx,
                                                       const std::string& repo,
                                                       ReleaseReq* self) {
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
    // Nobody queued: a light release (LightProof), which compares `meta`
    // but does not rewrite it, so it carries no commit id. Its compare
    // keeps the queue empty until it commits: there is nobody to admit.
    const bool light =
        v.queue.empty() && v.limit <= static_cast<int32_t>(kMaxGuardedSlots);
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
                           slot->second.revision == m.token))) {
        results[i].released = true;
        freed[i].slot = &slot->second;
        --running;
      } else if (!m.by_lease) {
        for (const QueueInfo& q : v.queue) {
          if (q.run == m.run) {
            *txn.add_success() = DeleteOp(q.key);
            results[i].dequeued = true;
          }
        }
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
    std::vector<const QueueInfo*> promote;
    for (const QueueInfo& q : v.queue) {
      if (done_runs.count(q.run) > 0) continue;
      if (v.limit != 0 && running >= v.limit) break;
      if (stale.count(&q) > 0) continue;
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
      if (results[i].dequeued) {
        std::erase_if(after.queue,
                      [&](const QueueInfo& q) { return q.run == r; });
      }
    }
    std::vector<int64_t> seats;  // of the admitted runs
    for (size_t i = 0; i < promote.size(); ++i) {
      seats.push_back(AddGrant(&txn, &after, promote[i]->run, grant_leases[i],
                               promote[i]->key, commit_id));
    }
    // A freed seat an admitted run took is put over (etcd refuses a put and
    // a delete of one key in one Txn); the others are deleted.
    for (const Freed& f : freed) {
      if (f.slot != nullptr &&
          std::find(seats.begin(), seats.end(), f.slot->seat) == seats.end()) {
        *txn.add_success() = DeleteOp(SeatKey(repo, f.slot->seat));
      }
    }
    auto tr = CommitStep(ctx, repo, std::move(txn), *leases, std::move(after),
                         light             ? Commit::kLight
                         : v.queue.empty() ? Commit::kExact
                                           : Commit::kQueue,
                         !promote.empty(), commit_id, light ? &proof : nullptr);
    if (!tr.ok()) return tr.status();
    if (!tr->has_value()) {  // planned on an outdated view: plan again
      fresh = false;
      continue;
    }
    const int64_t rev = (*tr)->header().revision();
    {
      MutexLock lock(&mu_);
      for (const Freed& f : freed) {
        if (f.slot != nullptr && !f.reused) {
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

absl::StatusOr<Lease> EtcdDriver::RenewLease(const Context& ctx,
                                             std::string_view lease_id) {
  if (lease_id.empty()) {
    return absl::InvalidArgumentError("lease_id: must not be empty");
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  std::optional<ParsedLeaseId> id = ParseLeaseId(lease_id);
  if (!id.has_value()) return LeaseLostError("unknown lease id");
  const int64_t lease = id->lease, token = id->token;
  const std::string& repo = id->repo;
  const std::string& run = id->run;
  etcdpb::RangeRequest sreq;
  sreq.set_key(SeatKey(repo, id->seat));
  auto s = kv_->Range(ctx, sreq);
  if (!s.ok()) return s.status();
  // The seat must hold the grant this id names (same revision): the etcd
  // lease, and the seat, may carry a later grant by now.
  const std::vector<absl::string_view> f =
      s->kvs_size() == 0 ? std::vector<absl::string_view>{}
                         : SeatFields(s->kvs(0).value());
  if (f.size() != 4 || s->kvs(0).mod_revision() != token ||
      SV(f[0]) != Hex(lease) || SV(f[3]) != run) {
    return LeaseLostError("lease has expired or was released");
  }
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
  Lease out = MakeLease(repo, run, lease, token, id->seat, now);
  out.expires_at = now + absl::Seconds(*ttl);
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

absl::StatusOr<std::vector<std::string>> EtcdDriver::ListRepositories(
    const Context& ctx, std::string_view namespace_name) {
  if (absl::Status s = ValidateNamespaceFilter(namespace_name); !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string p = prefix_ + "repo/";
  const std::string from =
      namespace_name.empty() ? p : Cat(p, namespace_name, "/");
  const std::string end = PrefixEnd(from);
  // Pages of keys only. Once a repository is known to have a record, the
  // rest of its keys (a long queue, many slots) are skipped: the next page
  // starts after its prefix.
  constexpr int64_t kPage = 256;
  std::vector<std::string> out;
  std::string start = from;
  while (start < end) {
    etcdpb::RangeRequest req;
    req.set_key(start);
    req.set_range_end(end);
    req.set_keys_only(true);
    req.set_limit(kPage);
    auto r = kv_->Range(ctx, req);
    if (!r.ok()) return r.status();
    if (r->kvs_size() == 0) break;
    std::string next = start;
    for (const etcdpb::KeyValue& kv : r->kvs()) {
      next = std::max(next, kv.key() + '\0');
      // `meta` alone is not a record (a cleaned repository keeps nothing,
      // and `meta` goes with it).
      std::string_view repo, kind;
      if (!SplitRepoKey(std::string_view(kv.key()).substr(p.size()), &repo,
                        &kind) ||
          (!out.empty() && out.back() == repo)) {
        continue;
      }
      if (kind != "limit" && !kind.starts_with("slot/") &&
          !kind.starts_with("queue/")) {
        continue;
      }
      out.emplace_back(repo);
      next = PrefixEnd(RepoPrefix(repo));
    }
    if (!r->more()) break;
    start = std::move(next);
  }
  return out;
}

absl::StatusOr<int> EtcdDriver::GetCurrentSlots(const Context& ctx,
                                                std::string_view repo_key) {
  auto l = GetRunningPipelineRuns(ctx, repo_key);
  if (!l.ok()) return l.status();
  return static_cast<int>(l->size());
}

absl::StatusOr<std::vector<Lease>> EtcdDriver::RunningOf(const Context& ctx,
                                                         const RepoView& v) {
  std::vector<Lease> out;
  absl::Time now = clock_->Now();
  for (const auto& [run, s] : v.slots) {
    int64_t lease = 0;
    ParseHex(s.lease_hex, &lease);
    Lease l = MakeLease(v.repo, run, lease, s.revision, s.seat, now);
    // The true expiry: what is left of the etcd lease (renewals move it).
    auto left = kv_->LeaseTimeToLive(ctx, lease);
    if (!left.ok()) return left.status();
    if (*left < 0) continue;  // expired; etcd deletes the key any moment
    l.expires_at = now + absl::Seconds(*left);
    out.push_back(std::move(l));
  }
  std::sort(out.begin(), out.end(), [](const Lease& a, const Lease& b) {
    return a.fencing_token < b.fencing_token;
  });
  return out;
}

std::vector<QueueEntry> EtcdDriver::QueuedOf(const RepoView& v) {
  std::vector<QueueEntry> out;
  int64_t pos = 0;
  for (const QueueInfo& q : v.queue) {
    out.push_back(QueueEntry{q.run, absl::FromUnixMicros(q.creation_us),
                             q.create_revision,
                             absl::FromUnixMicros(q.enqueued_us), ++pos});
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
  return out;
}

absl::StatusOr<std::unique_ptr<WatchHandle>> EtcdDriver::WatchSlotAvailability(
    const Context& ctx, std::string_view repo_key, WatchCallback callback) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (!callback) return absl::InvalidArgumentError("callback: must be set");
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  // Which run holds each seat now, so that a release heard as a seat's
  // deletion names its run (seat_runs_). The stream starts after this
  // read's revision: nothing committed once this call returns is missed.
  const std::string repo(repo_key);
  auto v = Read(ctx, repo);
  if (!v.ok()) return v.status();
  {
    MutexLock lock(&mu_);
    if (seat_runs_.size() + v->slots.size() > kMaxSeatRuns) seat_runs_.clear();
    for (const auto& [run, slot] : v->slots) {
      seat_runs_.emplace(SeatKey(repo, slot.seat), run);
    }
  }
  if (!watch_started_.load()) EnsureWatch(v->revision + 1);
  return watchers_.Add(ctx, repo, std::move(callback));
}

void EtcdDriver::ResumeWatchForTest(int64_t revision) {
  MutexLock lock(&watch_mu_);
  {
    MutexLock l(&mu_);
    last_revision_ = revision - 1;
  }
  RestartWatchLocked();
}

void EtcdDriver::RestartWatch() {
  MutexLock lock(&watch_mu_);
  RestartWatchLocked();
}

void EtcdDriver::RestartWatchLocked() {
  watch_.reset();  // first: its events move last_revision_ until it is gone
  int64_t from;
  {
    MutexLock lock(&mu_);
    from = last_revision_ == 0 ? 0 : last_revision_ + 1;
  }
  watch_started_.store(true);
  StartWatchLocked(from);
}

void EtcdDriver::EnsureWatch(int64_t from_revision) {
  if (watch_started_.load() || closed_.load()) return;
  MutexLock lock(&watch_mu_);
  if (watch_started_.load()) return;
  {
    // A stream that fails to start is resumed from here by PromoteLoop.
    MutexLock l(&mu_);
    last_revision_ = std::max(last_revision_, from_revision - 1);
  }
  watch_started_.store(true);
  StartWatchLocked(from_revision);
}

void EtcdDriver::StartWatchLocked(int64_t from_revision) {
  {
    // Views older than the stream's start cannot take its events.
    MutexLock lock(&mu_);
    watch_from_ = from_revision > 0 ? from_revision : INT64_MAX;
  }
  const std::string p = prefix_ + "repo/";
  auto w = kv_->Watch(p, PrefixEnd(p), from_revision,
                      [this](const WatchBatch& b) { OnWatch(b); });
  if (w.ok()) {
    watch_ = std::move(*w);
  } else {
    logger_->warn("etcd watch failed to start: {}", w.status().ToString());
    MutexLock lock(&mu_);
    restart_watch_ = true;
  }
}

void EtcdDriver::OnWatch(const WatchBatch& b) {
  PendingEvents events;
  MutexLock lock(&mu_);
  if (b.compact_revision > 0 || b.broken) {
    // Resume from the last revision seen; after a compaction, from just
    // after the compacted revision, telling every watcher to re-read.
    // Not "from now": a watcher re-reads when told, possibly before the
    // stream is back, and a change made between its read and the restart
    // would be heard by nobody. Changes after the compaction that the
    // re-read already saw come again, which a watcher takes as a hint.
    // Cached views may have missed changes.
    views_.clear();
    restart_watch_ = true;
    if (b.compact_revision > 0) {
      last_revision_ = std::max(last_revision_, b.compact_revision);
    }
    watchers_.CollectAll(WatchEventType::kResync, &events);
    for (const auto& [w, ev] : events) to_promote_.insert(ev.repository_key);
    cv_.NotifyAll();
    dispatcher_.Post(std::move(events));
    return;
  }
  last_revision_ = std::max(last_revision_, b.revision);
  const std::string p = prefix_ + "repo/";
  // Guarded Txns write the repository's `meta` key: a slot deleted in the
  // same revision as a `meta` put was released by a Txn that already
  // admitted the queue. Other deletions (expiries, light releases) may
  // need a promotion step (`freed`): unless the repository's view, which
  // the stream keeps current, has no queue (a light release always finds
  // none; LightProof).
  std::set<std::pair<std::string_view, int64_t>> txn_writes;
  std::set<std::string> freed;
  // Views that took events, and the revision they are now at (set after
  // the loop: a revision's events all come in one batch).
  std::map<std::string, int64_t> applied;
  if (event_rev_.size() > kMaxCachedViews) {
    event_rev_.clear();
    event_rev_floor_ = last_revision_;
  }
  for (const auto& ev : b.events) {
    std::string_view key(ev.kv().key());
    if (ev.type() != etcdpb::Event::PUT || key.size() < p.size() + 5 ||
        key.substr(key.size() - 5) != "/meta" || key.substr(0, p.size()) != p) {
      continue;
    }
    txn_writes.emplace(key.substr(p.size(), key.size() - p.size() - 5),
                       ev.kv().mod_revision());
  }
  for (const auto& ev : b.events) {
    std::string_view key(ev.kv().key());
    if (key.substr(0, p.size()) != p) continue;
    std::string_view repo_view, tail;
    if (!SplitRepoKey(key.substr(p.size()), &repo_view, &tail)) continue;
    std::string repo(repo_view);
    // A change the cached view does not include (another process, or an
    // expiry): applied to the view when the stream has delivered every
    // change since the view's revision, else the view is dropped.
    const int64_t rev = ev.kv().mod_revision();
    // (etcd sends all events of a revision in one response.)
    if (auto it = views_.find(repo);
        it != views_.end() && rev > it->second.revision) {
      if (it->second.revision + 1 >= watch_from_) {
        ApplyKv(&it->second, tail, ev.type() == etcdpb::Event::PUT, ev.kv());
        int64_t& upto = applied[repo];
        upto = std::max(upto, rev);
      } else {
        views_.erase(it);
      }
    }
    int64_t& seen = event_rev_[repo];
    seen = std::max(seen, rev);
    WatchEventType type;
    std::string run;
    if (tail.substr(0, 5) == "slot/") {
      // The seat's holder until now, as this watch saw it put, or the
      // watcher's registration read it (a delete event carries only the
      // key).
      const std::string seat_key(key);
      std::string gone;
      if (auto known = seat_runs_.find(seat_key); known != seat_runs_.end()) {
        gone = std::move(known->second);
        seat_runs_.erase(known);
      }
      if (ev.type() == etcdpb::Event::DELETE) {
        if (txn_writes.count({repo_view, ev.kv().mod_revision()}) == 0) {
          freed.insert(repo);  // a slot freed: admit the queue, if any
        }
        watchers_.Collect(repo, WatchEventType::kReleased, gone, &events);
        continue;
      }
      // Every put of a seat is a grant. Over a held seat (the key existed:
      // version > 1) it is a release that admitted the queue head into the
      // seat it freed, in one Txn: its holder was released.
      if (ev.kv().version() > 1) {
        watchers_.Collect(repo, WatchEventType::kReleased, gone, &events);
      }
      const std::vector<absl::string_view> f = SeatFields(ev.kv().value());
      if (f.size() != 4) continue;
      run = std::string(f[3]);
      if (seat_runs_.size() >= kMaxSeatRuns) seat_runs_.clear();
      seat_runs_[seat_key] = run;
      type = WatchEventType::kAdmitted;
    } else if (tail == "limit") {
      type = WatchEventType::kLimitChanged;
    } else if (tail == "meta" && ev.type() == etcdpb::Event::DELETE) {
      type = WatchEventType::kCleaned;
    } else {
      continue;
    }
    watchers_.Collect(repo, type, run, &events);
  }
  for (const auto& [repo, rev] : applied) {
    auto it = views_.find(repo);
    if (it == views_.end()) continue;
    it->second.revision = std::max(it->second.revision, rev);
    SortQueue(&it->second);
  }
  if (!applied.empty()) views_cv_.NotifyAll();
  for (const std::string& repo : freed) {
    // A view still cached took every event of this batch (or is later).
    auto it = views_.find(repo);
    if (it != views_.end() && it->second.queue.empty()) continue;
    to_promote_.insert(repo);
  }
  if (!to_promote_.empty()) cv_.NotifyAll();
  dispatcher_.Post(std::move(events));
}

void EtcdDriver::PromoteLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Time last_restart = absl::InfinitePast();
  while (true) {
    std::set<std::string> repos;
    bool restart = false;
    {
      MutexLock lock(&mu_);
      while (!stop_ && to_promote_.empty() && !restart_watch_) {
        cv_.WaitUntil(&mu_, absl::Now() + absl::Seconds(1));
      }
      if (stop_) return;
      if (background_) repos.swap(to_promote_);
      to_promote_.clear();
      restart = restart_watch_;
      restart_watch_ = false;
    }
    if (restart) {
      // A stream that breaks again at once (its endpoint is down, say) is
      // restarted after a pause that grows, not in a busy loop.
      if (absl::Now() - last_restart < absl::Seconds(1)) {
        MutexLock lock(&mu_);
        const absl::Time until = absl::Now() + backoff;
        while (!stop_ && absl::Now() < until) cv_.WaitUntil(&mu_, until);
        if (stop_) return;
        backoff = std::min(backoff * 2, absl::Seconds(5));
      } else {
        backoff = absl::Milliseconds(100);
      }
      last_restart = absl::Now();
      RestartWatch();  // after the pause: from the last revision seen
    }
    for (const std::string& repo : repos) {
      Context ctx =
          Context::WithTimeout(Context::Background(), absl::Seconds(10));
      auto r = Step(ctx, repo, 0, /*set_limit=*/false, "", {});
      if (!r.ok()) {
        logger_->warn("etcd: admitting the queue of {} failed: {}", repo,
                      r.status().ToString());
      }
    }
  }
}

absl::Status EtcdDriver::SetRepositoryState(const Context& ctx,
                                            const Repository& repo,
                                            std::string_view state) {
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
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
  return PutKey(ctx, Cat(prefix_, "state/run/", run_key), state);
}

absl::StatusOr<std::string> EtcdDriver::GetPipelineRunState(
    const Context& ctx, std::string_view run_key) {
  if (absl::Status s = ValidateKey(run_key, "pipeline_run"); !s.ok()) return s;
  return GetKey(ctx, Cat(prefix_, "state/run/", run_key),
                Cat("pipeline run ", run_key));
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
  etcdpb::TxnRequest txn;
  // Delete the meta key last in key order is irrelevant: one revision.
  *txn.add_success() = DeleteOp(p, PrefixEnd(p));
  *txn.add_success() = DeleteOp(Cat(prefix_, "state/repo/", repo));
  for (const auto& [run, s] : v->slots) {
    *txn.add_success() = DeleteOp(Cat(prefix_, "state/run/", run));
  }
  for (const QueueInfo& q : v->queue) {
    *txn.add_success() = DeleteOp(Cat(prefix_, "state/run/", q.run));
  }
  auto r = kv_->Txn(ctx, txn);
  ForgetView(repo);
  if (!r.ok()) return r.status();
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
