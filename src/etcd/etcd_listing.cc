// The etcd driver's listings: the repositories' keys and pages of
// repositories with their snapshots (their sizes, for metrics, are
// etcd_counts.cc's). Keys sort in
// etcd as `P repo/<ns>/<name>/...`, so a repository whose key is a prefix
// of another's cut at '-' or '.' ("a/b" and "a/b-c") comes after it in
// etcd and before it in key order; each listing answers in key order.
#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

absl::StatusOr<std::pair<std::string, std::string>> EtcdDriver::ListingBounds(
    const Context& ctx, std::string_view namespace_name) {
  if (absl::Status s = ValidateNamespaceFilter(namespace_name); !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string p = prefix_ + "repo/";
  std::string from = namespace_name.empty() ? p : Cat(p, namespace_name, "/");
  std::string end = PrefixEnd(from);
  return std::make_pair(std::move(from), std::move(end));
}

bool EtcdDriver::HasRecord(const RepoView& v) {
  return v.has_limit || !v.slots.empty() || !v.queue.empty();
}

absl::StatusOr<std::vector<std::string>> EtcdDriver::ListRepositories(
    const Context& ctx, std::string_view namespace_name) {
  auto bounds = ListingBounds(ctx, namespace_name);
  if (!bounds.ok()) return bounds.status();
  const std::string p = prefix_ + "repo/";
  const auto& [from, end] = *bounds;
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
  // Key order: etcd orders `key/`, so "a/b-c" comes before "a/b".
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::vector<RepositoryListing>>
EtcdDriver::ListRepositorySnapshots(const Context& ctx,
                                    std::string_view namespace_name,
                                    std::string_view after, size_t limit) {
  auto bounds = ListingBounds(ctx, namespace_name);
  if (!bounds.ok()) return bounds.status();
  const std::string p = prefix_ + "repo/";
  const auto& [from, end] = *bounds;
  // Every key of a repository after `after` in key order sorts at or
  // after `P repo/<after>` in etcd.
  std::string start = std::max(from, Cat(p, after));
  // Ranges of keys and values at one revision, from `start`, decoded
  // into views as they come, until `limit` repositories are whole.
  constexpr int64_t kPage = 2048;
  int64_t revision = 0;
  std::map<std::string, RepoView> got;  // whole views, key order
  auto keep = [&](RepoView v) {
    if (v.repo.empty() || v.repo <= after) return;
    if (!HasRecord(v)) return;
    SortQueue(&v);
    std::string key = v.repo;
    got.emplace(std::move(key), std::move(v));
  };
  RepoView v;         // the repository being read
  bool ended = true;  // read to `end` (else stopped with `limit` whole)
  while (start < end) {
    etcdpb::RangeRequest req;
    req.set_key(start);
    req.set_range_end(end);
    req.set_limit(kPage);
    req.set_revision(revision);
    auto r = kv_->Range(ctx, req);
    if (!r.ok()) return r.status();
    if (revision == 0) revision = r->header().revision();
    for (const etcdpb::KeyValue& kv : r->kvs()) {
      std::string_view repo, kind;
      if (!SplitRepoKey(std::string_view(kv.key()).substr(p.size()), &repo,
                        &kind)) {
        continue;
      }
      if (repo != v.repo) {
        keep(std::move(v));
        v = RepoView{};
        v.repo = std::string(repo);
        v.revision = revision;
      }
      ApplyKv(&v, kind, true, kv, /*fresh=*/true);
    }
    if (!r->more() || r->kvs_size() == 0) break;
    start = r->kvs(r->kvs_size() - 1).key() + '\0';
    if (limit > 0 && got.size() >= limit) {
      ended = false;
      break;
    }
  }
  if (ended) keep(std::move(v));
  // Stopped early: a repository not read whole that sorts before one of
  // the page is a prefix, cut at '-' or '.', of a key of the page (see
  // above); those are read one by one, at the same revision.
  if (!ended) {
    std::set<std::string> missing;
    size_t n = 0;
    for (const auto& [key, view] : got) {
      if (n++ == limit) break;
      for (size_t i = key.find('/') + 1; i < key.size(); ++i) {
        if (key[i] != '-' && key[i] != '.') continue;
        std::string k = key.substr(0, i);
        if (k > after && got.count(k) == 0 &&
            PrefixEnd(RepoPrefix(k)) > start) {
          missing.insert(std::move(k));
        }
      }
    }
    for (const std::string& k : missing) {
      etcdpb::RequestOp op = RangeRepoOp(k);
      op.mutable_request_range()->set_revision(revision);
      auto r = kv_->Range(ctx, op.request_range());
      if (!r.ok()) return r.status();
      keep(ParseView(k, *r, revision));
    }
  }
  // The page's leases asked at once, not repository by repository.
  std::vector<int64_t> leases;
  size_t n = 0;
  for (const auto& [key, view] : got) {
    if (limit > 0 && n++ == limit) break;
    AddLeases(view, &leases);
  }
  auto ttls = LeaseTtls(ctx, leases);
  if (!ttls.ok()) return ttls.status();
  std::vector<RepositoryListing> out;
  for (auto& [key, view] : got) {
    if (limit > 0 && out.size() == limit) break;
    RepositorySnapshot snap;
    if (view.has_limit) snap.limit = view.limit;
    auto running = RunningOf(ctx, view, &*ttls);
    if (!running.ok()) return running.status();
    snap.running = *std::move(running);
    snap.queued = QueuedOf(view);
    snap.mode = view.mode;
    out.push_back(RepositoryListing{key, std::move(snap)});
  }
  return out;
}

}  // namespace pac::concurrency::internal
