// The etcd driver's counts of every repository (GetRepositoryCounts, what
// a metrics scrape reads): one read of every key under `P repo/` at one
// revision, then kept current from the driver's watch stream, which
// carries every change under that prefix. A scrape after the first reads
// no key: at 10,000 repositories and 130,000 queued runs, each scrape read
// all their keys (0.7-1.2 s, and as much work for etcd).
//
// What the cache holds per repository: its limit, each seat's run and each
// queue entry's key tail ("<time>/<run>"), enough to count as
// GetRepositorySnapshot shows (a run queued once, not while it holds a
// slot). About 100 bytes per queued run. A slot whose lease ran out
// counts until etcd deletes its key (within a second), as a listing's
// keys do.
//
// Consistency: the counts are as of the events the stream has delivered,
// a few milliseconds behind a write, like any scrape. Events of revisions
// the read already saw are skipped; those that came while the read ran
// wait in a backlog. A stream that broke or met a compaction may have
// missed changes: the cache is dropped, and the next scrape reads again.
// The cache has its own mutex, so a scrape's counting (tens of ms at 10k
// repositories) holds up neither admissions nor the stream's other work.
#include <algorithm>
#include <charconv>
#include <map>
#include <set>
#include <string>

#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

void EtcdDriver::ApplyCount(CountsMap* m, std::string_view repo,
                            std::string_view tail, bool put,
                            const etcdpb::KeyValue& kv) {
  auto it = m->find(std::string(repo));
  if (it == m->end()) {
    if (!put) return;
    it = m->emplace(std::string(repo), CountsView{}).first;
  }
  CountsView& c = it->second;
  if (tail == "limit") {
    c.has_limit = put;
    c.limit = 0;
    if (put) {
      std::from_chars(kv.value().data(), kv.value().data() + kv.value().size(),
                      c.limit);
    }
  } else if (tail.substr(0, 5) == "slot/") {
    const std::string_view num = tail.substr(5);
    int64_t seat = -1;
    auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), seat);
    if (ec != std::errc() || end != num.data() + num.size() || seat < 0) {
      return;  // not a seat (as ApplyKv)
    }
    c.seats.erase(seat);
    if (put) {
      const std::vector<absl::string_view> f = SeatFields(kv.value());
      if (f.size() == 4 && !f[3].empty()) c.seats[seat] = std::string(f[3]);
    }
  } else if (tail.substr(0, 6) == "queue/") {
    const std::string_view entry = tail.substr(6);
    if (entry.find('/') == std::string_view::npos) return;
    if (put) {
      c.queue.emplace(entry);
    } else {
      c.queue.erase(std::string(entry));
    }
  }
  if (!c.has_limit && c.seats.empty() && c.queue.empty()) m->erase(it);
}

std::vector<RepositoryCounts> EtcdDriver::CountsOf(const CountsMap& m) {
  std::vector<RepositoryCounts> out;
  out.reserve(m.size());
  for (const auto& [repo, c] : m) {  // byte order, as ListRepositories
    std::set<std::string_view> running;
    for (const auto& [seat, run] : c.seats) running.insert(run);
    // A run is queued once, and not while it holds a slot (StaleEntries).
    std::set<std::string_view> seen;
    int64_t queued = 0;
    for (const std::string& e : c.queue) {
      const std::string_view run = std::string_view(e).substr(e.find('/') + 1);
      if (running.count(run) == 0 && seen.insert(run).second) ++queued;
    }
    out.push_back(RepositoryCounts{
        repo, c.has_limit ? std::optional<int32_t>(c.limit) : std::nullopt,
        static_cast<int64_t>(c.seats.size()), queued});
  }
  return out;
}

absl::StatusOr<int64_t> EtcdDriver::ReadCounts(const Context& ctx,
                                               CountsMap* out) {
  const std::string p = prefix_ + "repo/";
  const std::string end = PrefixEnd(p);
  constexpr int64_t kPage = 4096;
  int64_t revision = 0;
  std::string start = p;
  while (true) {
    etcdpb::RangeRequest req;
    req.set_key(start);
    req.set_range_end(end);
    req.set_limit(kPage);
    req.set_revision(revision);  // 0 for the first page: the latest
    auto r = kv_->Range(ctx, req);
    if (!r.ok()) return r.status();
    if (revision == 0) revision = r->header().revision();
    for (const etcdpb::KeyValue& kv : r->kvs()) {
      std::string_view repo, tail;
      if (!SplitRepoKey(std::string_view(kv.key()).substr(p.size()), &repo,
                        &tail)) {
        continue;
      }
      ApplyCount(out, repo, tail, /*put=*/true, kv);
    }
    if (!r->more() || r->kvs_size() == 0) break;
    start = r->kvs(r->kvs_size() - 1).key() + '\0';
  }
  return revision;
}

void EtcdDriver::CountEvents(const WatchBatch& b) {
  MutexLock lock(&counts_mu_);
  if (b.compact_revision > 0 || b.broken) {
    // The resumed stream may miss changes (a compaction) or bring again
    // some already applied: read again at the next scrape.
    if (counts_state_ != CountsState::kNone) DropCountsLocked();
    return;
  }
  if (counts_state_ == CountsState::kNone) return;
  if (counts_state_ == CountsState::kBuilding) {
    counts_backlog_.insert(counts_backlog_.end(), b.events.begin(),
                           b.events.end());
    return;
  }
  ApplyCountEvents(&counts_, b.events, counts_revision_);
}

void EtcdDriver::ApplyCountEvents(CountsMap* m,
                                  const std::vector<etcdpb::Event>& events,
                                  int64_t after) const {
  const std::string p = prefix_ + "repo/";
  for (const etcdpb::Event& ev : events) {
    if (ev.kv().mod_revision() <= after) continue;  // in the read
    std::string_view key(ev.kv().key()), repo, tail;
    if (key.substr(0, p.size()) != p ||
        !SplitRepoKey(key.substr(p.size()), &repo, &tail)) {
      continue;
    }
    ApplyCount(m, repo, tail, ev.type() == etcdpb::Event::PUT, ev.kv());
  }
}

void EtcdDriver::DropCountsLocked() {
  counts_state_ = CountsState::kNone;
  ++counts_gen_;
  counts_.clear();
  counts_backlog_.clear();
  counts_backlog_.shrink_to_fit();
}

bool EtcdDriver::CountsCachedForTest() const {
  MutexLock lock(&counts_mu_);
  return counts_state_ == CountsState::kReady;
}

absl::StatusOr<std::vector<RepositoryCounts>> EtcdDriver::GetRepositoryCounts(
    const Context& ctx) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  uint64_t gen = 0;
  bool build = false;
  {
    MutexLock lock(&counts_mu_);
    if (counts_state_ == CountsState::kReady) return CountsOf(counts_);
    if (counts_state_ == CountsState::kNone) {
      counts_state_ = CountsState::kBuilding;
      gen = ++counts_gen_;
      build = true;
    }
  }
  if (build && !watch_started_.load()) {
    // The stream must run from before the read: it brings every change
    // after the read's revision.
    etcdpb::RangeRequest probe;
    probe.set_key(prefix_ + "repo/");
    probe.set_count_only(true);
    auto r = kv_->Range(ctx, probe);
    if (!r.ok()) {
      MutexLock lock(&counts_mu_);
      if (counts_gen_ == gen) DropCountsLocked();
      return r.status();
    }
    EnsureWatch(r->header().revision() + 1);
  }
  CountsMap read;
  auto revision = ReadCounts(ctx, &read);
  if (!build) {  // another scrape builds the cache: answer from this read
    if (!revision.ok()) return revision.status();
    return CountsOf(read);
  }
  MutexLock lock(&counts_mu_);
  if (counts_gen_ != gen) {  // dropped meanwhile (a broken stream)
    if (!revision.ok()) return revision.status();
    return CountsOf(read);
  }
  if (!revision.ok()) {
    DropCountsLocked();
    return revision.status();
  }
  ApplyCountEvents(&read, counts_backlog_, *revision);
  counts_backlog_.clear();
  counts_ = std::move(read);
  counts_revision_ = *revision;
  counts_state_ = CountsState::kReady;
  return CountsOf(counts_);
}

}  // namespace pac::concurrency::internal
