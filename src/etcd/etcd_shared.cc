// The etcd driver's shared limits (docs/policies.md, "Shared limits";
// docs/etcd.md, "Shared limits"): the keys under `P shared/<name>/`, the
// read of their counts, the pass that admits the members' queue heads
// (SharedPass), membership changes, and SetSharedLimit, DeleteSharedLimit
// and ListSharedLimits. A member's grants (Step, etcd_step.cc) compare and
// rewrite each limit's `meta` (GuardShared) and put a `held` key per seat
// (AddGrant); its releases delete them (ReleaseGroup).
#include <algorithm>
#include <charconv>
#include <map>
#include <set>
#include <string>
#include <tuple>

#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/etcd_encoding.h"

namespace pac::concurrency::internal {

std::string EtcdDriver::SharedPrefix(std::string_view name) const {
  return Cat(prefix_, "shared/", name, "/");
}

std::string EtcdDriver::HeldKey(std::string_view name, std::string_view repo,
                                int64_t seat) const {
  return Cat(SharedPrefix(name), "held/", repo, "/", std::to_string(seat));
}

absl::StatusOr<std::vector<etcdpb::RangeResponse>> EtcdDriver::Ranges(
    const Context& ctx, const std::vector<etcdpb::RangeRequest>& ranges) {
  std::vector<etcdpb::RangeResponse> out;
  for (size_t begin = 0; begin < ranges.size(); begin += kMaxTxnOps) {
    const size_t end = std::min(ranges.size(), begin + kMaxTxnOps);
    etcdpb::TxnRequest reads;
    for (size_t i = begin; i < end; ++i) {
      *reads.add_success()->mutable_request_range() = ranges[i];
    }
    auto tr = kv_->Txn(ctx, reads);
    if (!tr.ok()) return tr.status();
    if (tr->responses_size() != static_cast<int>(end - begin)) {
      return absl::InternalError("etcd: a read-only Txn answered no ranges");
    }
    for (const auto& r : tr->responses()) out.push_back(r.response_range());
  }
  return out;
}

namespace {

etcdpb::RangeRequest RangeOf(const std::string& key, bool prefix = false,
                             bool count_only = false, bool keys_only = false) {
  etcdpb::RangeRequest r;
  r.set_key(key);
  if (prefix) r.set_range_end(PrefixEnd(key));
  r.set_count_only(count_only);
  r.set_keys_only(keys_only);
  return r;
}

}  // namespace

absl::StatusOr<std::map<std::string, EtcdDriver::SharedState>>
EtcdDriver::ReadShared(const Context& ctx,
                       const std::vector<std::string>& names) {
  std::map<std::string, SharedState> out;
  for (const std::string& name : names) out[name];
  // Three ranges a limit: its `limit`, its `meta` and the count of its
  // `held` keys.
  std::vector<etcdpb::RangeRequest> ranges;
  for (const auto& [name, st] : out) {
    const std::string sp = SharedPrefix(name);
    ranges.push_back(RangeOf(sp + "limit"));
    ranges.push_back(RangeOf(sp + "meta"));
    ranges.push_back(RangeOf(sp + "held/", true, /*count_only=*/true));
  }
  auto got = Ranges(ctx, ranges);
  if (!got.ok()) return got.status();
  size_t at = 0;
  for (auto& [name, st] : out) {
    const etcdpb::RangeResponse& limit = (*got)[at++];
    const etcdpb::RangeResponse& meta = (*got)[at++];
    if (limit.kvs_size() > 0) {
      const std::string& value = limit.kvs(0).value();
      st.defined =
          std::from_chars(value.data(), value.data() + value.size(), st.limit)
              .ec == std::errc();
    }
    st.meta_mod = meta.kvs_size() > 0 ? meta.kvs(0).mod_revision() : 0;
    st.held = (*got)[at++].count();
  }
  return out;
}

int64_t EtcdDriver::SharedFree(const std::map<std::string, SharedState>& st,
                               const std::vector<std::string>& names) {
  int64_t free = INT64_MAX;
  for (const std::string& name : names) {
    auto it = st.find(name);
    if (it == st.end() || !it->second.defined || it->second.limit == 0) {
      continue;  // a name no limit is set for limits nothing
    }
    free = std::min(free,
                    std::max<int64_t>(0, it->second.limit - it->second.held));
  }
  return free;
}

void EtcdDriver::GuardShared(etcdpb::TxnRequest* txn,
                             const std::vector<std::string>& names,
                             const std::map<std::string, SharedState>& st,
                             const std::string& commit_id) const {
  for (const std::string& name : names) {
    auto it = st.find(name);
    const std::string key = SharedPrefix(name) + "meta";
    auto* cmp = txn->add_compare();
    cmp->set_key(key);
    cmp->set_target(etcdpb::Compare::MOD);
    cmp->set_result(etcdpb::Compare::EQUAL);
    cmp->set_mod_revision(it == st.end() ? 0 : it->second.meta_mod);
    *txn->add_success() = PutOp(key, commit_id.empty() ? "-" : commit_id);
  }
}

void EtcdDriver::DeleteHeld(etcdpb::TxnRequest* txn, const RepoView& v,
                            int64_t seat) const {
  for (const std::string& name : v.shared) {
    *txn->add_success() = DeleteOp(HeldKey(name, v.repo, seat));
  }
}

absl::StatusOr<std::set<std::string>> EtcdDriver::SharedMembers(
    const Context& ctx, const std::vector<std::string>& names) {
  std::vector<etcdpb::RangeRequest> ranges;
  for (const std::string& name : names) {
    ranges.push_back(RangeOf(SharedPrefix(name) + "member/", true, false,
                             /*keys_only=*/true));
  }
  auto got = Ranges(ctx, ranges);
  if (!got.ok()) return got.status();
  std::set<std::string> out;
  for (size_t i = 0; i < got->size(); ++i) {
    const size_t skip = ranges[i].key().size();
    for (const auto& kv : (*got)[i].kvs()) {
      if (kv.key().size() > skip) out.insert(kv.key().substr(skip));
    }
  }
  return out;
}

absl::StatusOr<std::map<std::string, int64_t>> EtcdDriver::QueueCounts(
    const Context& ctx, const std::set<std::string>& repos) {
  std::vector<etcdpb::RangeRequest> ranges;
  for (const std::string& repo : repos) {
    ranges.push_back(RangeOf(RepoPrefix(repo) + "queue/", true,
                             /*count_only=*/true));
  }
  auto got = Ranges(ctx, ranges);
  if (!got.ok()) return got.status();
  std::map<std::string, int64_t> out;
  size_t i = 0;
  for (const std::string& repo : repos) out[repo] = (*got)[i++].count();
  return out;
}

std::vector<Lease> EtcdDriver::SharedPass(const Context& ctx,
                                          std::vector<std::string> names) {
  std::vector<Lease> admitted;
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  if (names.empty()) return admitted;
  auto fail = [&](const absl::Status& s) {
    if (!closed_.load()) {
      logger_->warn(
          "etcd: the pass of shared limits {} failed (again soon): {}",
          absl::StrJoin(names, ", "), s.ToString());
      MutexLock lock(&mu_);
      to_pass_.insert(names.begin(), names.end());
      cv_.NotifyAll();
    }
    return admitted;
  };
  // Each round admits one head: the earliest queued of the members' heads
  // that fit their repository's limit and each of their shared limits
  // (rule 22). A round that admits nobody (a race: another pass took the
  // slot) reads again, a few times at most.
  int idle = 0;
  for (int round = 0; round < 100000 && idle < 3; ++round) {
    if (!CheckOpen().ok()) return admitted;
    // (A caller's deadline cut short: PromoteLoop passes again.)
    if (absl::Status s = ctx.Err(); !s.ok()) return fail(s);
    auto members = SharedMembers(ctx, names);
    if (!members.ok()) return fail(members.status());
    auto counts = QueueCounts(ctx, *members);
    if (!counts.ok()) return fail(counts.status());
    std::vector<RepoView> candidates;
    std::vector<std::string> involved;
    for (const auto& [repo, n] : *counts) {
      if (n == 0) continue;
      auto v = Read(ctx, repo);
      if (!v.ok()) return fail(v.status());
      if (v->shared.empty()) continue;  // it left: its own steps admit
      involved.insert(involved.end(), v->shared.begin(), v->shared.end());
      candidates.push_back(*std::move(v));
    }
    if (candidates.empty()) break;
    auto st = ReadShared(ctx, involved);
    if (!st.ok()) return fail(st.status());
    const int64_t now_us = absl::ToUnixMicros(clock_->Now());
    const RepoView* best = nullptr;
    std::tuple<int64_t, int64_t, std::string> best_key;
    for (const RepoView& v : candidates) {
      if (v.limit != 0 && static_cast<int64_t>(v.slots.size()) >= v.limit) {
        continue;  // held by its own limit
      }
      if (SharedFree(*st, v.shared) <= 0) continue;
      const std::set<const QueueInfo*> stale = StaleEntries(v);
      const std::set<const QueueInfo*> due = TimedOut(v, now_us);
      for (const QueueInfo& q : v.queue) {
        if (stale.count(&q) > 0 || due.count(&q) > 0) continue;
        // Enqueue order: the revision that put the entry (one Txn of an
        // import puts several: then their place in it).
        auto key = std::make_tuple(q.create_revision, q.ord, v.repo);
        if (best == nullptr || key < best_key) {
          best = &v;
          best_key = key;
        }
        break;  // its head only
      }
    }
    if (best == nullptr) break;
    auto r = Step(ctx, best->repo, 0, /*set_limit=*/false, "", {},
                  /*holding_turn=*/false, StepShared{1, false});
    if (!r.ok()) return fail(r.status());
    if (r->admitted.empty()) {
      ++idle;
      continue;
    }
    idle = 0;
    admitted.insert(admitted.end(), r->admitted.begin(), r->admitted.end());
  }
  return admitted;
}

absl::StatusOr<bool> EtcdDriver::ChangeMembership(
    const Context& ctx, const std::string& repo, const RepositoryPolicy& policy,
    std::vector<std::string>* touched) {
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    if (absl::Status s = ctx.Err(); !s.ok()) return s;
    auto view = Read(ctx, repo);
    if (!view.ok()) return view.status();
    const RepoView& v = *view;
    if (v.shared == policy.shared_limits) return false;
    std::vector<std::string> added, removed;
    std::set_difference(policy.shared_limits.begin(),
                        policy.shared_limits.end(), v.shared.begin(),
                        v.shared.end(), std::back_inserter(added));
    std::set_difference(
        v.shared.begin(), v.shared.end(), policy.shared_limits.begin(),
        policy.shared_limits.end(), std::back_inserter(removed));
    const size_t ops =
        3 + 2 * removed.size() + added.size() * (2 + v.slots.size());
    if (ops > kMaxTxnOps) {
      return absl::FailedPreconditionError(
          Cat("shared_limits: ", repo, " holds ", v.slots.size(),
              " slots, and joining ", added.size(),
              " shared limits at once writes a key per slot and limit, "
              "more than etcd's ",
              kMaxTxnOps, " per transaction; join fewer at a time"));
    }
    const std::string p = RepoPrefix(repo);
    const std::string commit_id = NewCommitId();
    etcdpb::TxnRequest txn;
    if (v.exists) {
      // Every plan on the old membership fails its compare of `meta`;
      // a light grant (no `meta`) into a seat this view has free fails
      // GuardSeats.
      txn = GuardedTxn(p, v.meta_mod, commit_id);
      GuardSeats(&txn, v);
    } else {
      auto* cmp = txn.add_compare();
      cmp->set_key(p + "meta");
      cmp->set_target(etcdpb::Compare::CREATE);
      cmp->set_result(etcdpb::Compare::EQUAL);
      cmp->set_create_revision(0);
    }
    RepositoryPolicy recorded = policy;
    const std::string value = EncodePolicy(recorded);
    *txn.add_success() =
        value.empty() ? DeleteOp(p + "policy") : PutOp(p + "policy", value);
    for (const std::string& name : added) {
      const std::string sp = SharedPrefix(name);
      *txn.add_success() = PutOp(Cat(sp, "member/", repo), "");
      // The count grows by the running runs: grants planned on the old
      // count fail their compare.
      *txn.add_success() = PutOp(sp + "meta", commit_id);
      for (const auto& [run, slot] : v.slots) {
        int64_t lease = 0;
        ParseHex(slot.lease_hex, &lease);
        *txn.add_success() = PutOp(HeldKey(name, repo, slot.seat), run, lease);
      }
    }
    for (const std::string& name : removed) {
      const std::string sp = SharedPrefix(name);
      *txn.add_success() = DeleteOp(Cat(sp, "member/", repo));
      const std::string held = Cat(sp, "held/", repo, "/");
      *txn.add_success() = DeleteOp(held, PrefixEnd(held));
    }
    auto tr = kv_->Txn(ctx, txn);
    ForgetView(repo);
    if (!tr.ok()) return tr.status();
    if (!tr->succeeded()) continue;  // the repository moved: again
    touched->insert(touched->end(), added.begin(), added.end());
    touched->insert(touched->end(), removed.begin(), removed.end());
    logger_->info("{} draws from shared limits [{}]", repo,
                  absl::StrJoin(policy.shared_limits, ", "));
    return true;
  }
  return absl::AbortedError(
      Cat("etcd: too much contention on ", repo, "; try again"));
}

absl::Status EtcdDriver::SetSharedLimit(const Context& ctx,
                                        const SharedLimit& limit) {
  if (absl::Status s = ValidateSharedLimit(limit); !s.ok()) return s;
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string sp = SharedPrefix(limit.name);
  // `meta` rewritten: a grant planned on the old limit fails its compare.
  etcdpb::TxnRequest txn;
  *txn.add_success() = PutOp(sp + "limit", std::to_string(limit.limit));
  *txn.add_success() = PutOp(sp + "meta", NewCommitId());
  if (auto r = kv_->Txn(ctx, txn); !r.ok()) return r.status();
  logger_->info("shared limit {} set to {}", limit.name, limit.limit);
  SharedPass(ctx, {limit.name});
  return absl::OkStatus();
}

absl::Status EtcdDriver::DeleteSharedLimit(const Context& ctx,
                                           std::string_view name) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const std::string sp = SharedPrefix(name);
  etcdpb::TxnRequest txn;
  *txn.add_success() = DeleteOp(sp + "limit");
  *txn.add_success() = PutOp(sp + "meta", NewCommitId());
  if (auto r = kv_->Txn(ctx, txn); !r.ok()) return r.status();
  logger_->info("shared limit {} deleted", name);
  SharedPass(ctx, {std::string(name)});
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SharedLimitStatus>> EtcdDriver::ListSharedLimits(
    const Context& ctx) {
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  // The limits and members, keys and values (`held` keys counted apart).
  const std::string root = prefix_ + "shared/";
  std::map<std::string, SharedLimitStatus> out;
  std::string from = root;
  while (true) {
    etcdpb::RangeRequest req;
    req.set_key(from);
    req.set_range_end(PrefixEnd(root));
    req.set_limit(1000);
    auto r = kv_->Range(ctx, req);
    if (!r.ok()) return r.status();
    for (const auto& kv : r->kvs()) {
      std::string_view rest = std::string_view(kv.key()).substr(root.size());
      const size_t slash = rest.find('/');
      if (slash == std::string_view::npos) continue;
      const std::string name(rest.substr(0, slash));
      const std::string_view tail = rest.substr(slash + 1);
      if (tail == "limit") {
        int32_t limit = 0;
        if (std::from_chars(kv.value().data(),
                            kv.value().data() + kv.value().size(), limit)
                .ec == std::errc()) {
          out[name].limit = limit;
        }
      } else if (tail.substr(0, 7) == "member/") {
        out[name].members.emplace_back(tail.substr(7));
      } else if (tail.substr(0, 5) == "held/") {
        ++out[name].running;
      }
    }
    if (!r->more() || r->kvs_size() == 0) break;
    from = r->kvs(r->kvs_size() - 1).key() + '\0';
  }
  std::vector<SharedLimitStatus> list;
  for (auto& [name, st] : out) {
    if (!st.limit.has_value() && st.members.empty()) continue;
    std::set<std::string> members(st.members.begin(), st.members.end());
    auto counts = QueueCounts(ctx, members);
    if (!counts.ok()) return counts.status();
    for (const auto& [repo, n] : *counts) st.queued += n;
    st.name = name;
    list.push_back(std::move(st));
  }
  return list;
}

}  // namespace pac::concurrency::internal
