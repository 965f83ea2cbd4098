// etcd's floors for bench/scale_bench.cc (see scale_etcd_floors.h): what
// etcd itself charges, at the backend's current size, for the requests the
// driver makes.
#include "bench/scale_etcd_floors.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "src/etcd/grpc_etcd.h"

namespace pac::concurrency::scale {

// etcd's own rate beside the driver's: `threads` threads each Put one key
// of theirs in a loop over the driver's gRPC client, for `seconds`
// (Puts/s, and a Put's p99). What etcd charges for a write at the
// backend's current size.
PairResult RawEtcdPuts(const DriverConfig& config, const Sizes& z,
                       const std::string& tag) {
  auto kv = Must(internal::NewGrpcEtcd(*config.etcd, nullptr), "etcd client");
  return TimedLoops(z, [&](int t) {
    internal::etcdpb::PutRequest req;
    req.set_key(absl::StrCat("/pac-", tag, "-raw/", t));
    req.set_value("x");
    return [&kv, req](int64_t) {
      MustOk(kv->Put(Context::Background(), req).status(), "raw Put");
    };
  });
}

// The driver's pair without the driver: `threads` threads each grant an
// etcd lease once, then loop over two Txns, as a light acquire and release
// are: create a new slot key on the lease (compare: it does not exist) and
// rewrite the thread's `meta` key; then delete that slot (compare: its
// revision is the one created) and rewrite `meta` again. Outside the
// driver's prefix, so its watch never sees them. Pairs/s and a pair's
// p99: what etcd charges for the driver's round trips at the backend's
// current size.
PairResult RawEtcdTxnPairs(const DriverConfig& config, const Sizes& z,
                           const std::string& tag) {
  namespace pb = internal::etcdpb;
  auto kv = Must(internal::NewGrpcEtcd(*config.etcd, nullptr), "etcd client");
  const auto put = [](pb::RequestOp* op, const std::string& key,
                      int64_t lease) {
    op->mutable_request_put()->set_key(key);
    op->mutable_request_put()->set_value("x");
    op->mutable_request_put()->set_lease(lease);
  };
  // Each thread's lease outlives the measure (600 s) and carries no key
  // after it.
  return TimedLoops(z, [&](int t) {
    const int64_t lease =
        Must(kv->LeaseGrant(Context::Background(), 600), "raw lease");
    const std::string base = absl::StrCat("/pac-", tag, "-rawtxn/", t, "/");
    return [&kv, &put, lease, base, meta = base + "meta"](int64_t n) {
      const Context ctx = Context::Background();
      const std::string slot = absl::StrCat(base, "slot/", n);
      pb::TxnRequest acquire;
      pb::Compare* c = acquire.add_compare();
      c->set_key(slot);
      c->set_target(pb::Compare::VERSION);
      c->set_result(pb::Compare::EQUAL);
      c->set_version(0);
      put(acquire.add_success(), slot, lease);
      put(acquire.add_success(), meta, 0);
      auto a = Must(kv->Txn(ctx, acquire), "raw acquire Txn");
      if (!a.succeeded()) Fail("raw acquire Txn: slot exists");
      pb::TxnRequest release;
      c = release.add_compare();
      c->set_key(slot);
      c->set_target(pb::Compare::MOD);
      c->set_result(pb::Compare::EQUAL);
      c->set_mod_revision(a.header().revision());
      release.add_success()->mutable_request_delete_range()->set_key(slot);
      put(release.add_success(), meta, 0);
      auto r = Must(kv->Txn(ctx, release), "raw release Txn");
      if (!r.succeeded()) Fail("raw release Txn: slot changed");
    };
  });
}

// What etcd charges for a status's reads of the repository `repo_key`,
// one after another, `count` times each: the Range of its keys and the
// LeaseTimeToLive of its running run's lease (p99 of each, ms).
std::pair<double, double> RawEtcdReads(const DriverConfig& config, Driver* d,
                                       const std::string& repo_key, int count) {
  auto kv = Must(internal::NewGrpcEtcd(*config.etcd, nullptr), "etcd client");
  std::string prefix = config.etcd->prefix;
  if (prefix.empty() || prefix.back() != '/') prefix += '/';
  prefix = absl::StrCat(prefix, "repo/", repo_key, "/");
  std::string end = prefix;
  end.back() = static_cast<char>(end.back() + 1);
  auto running =
      Must(d->GetRunningPipelineRuns(Context::Background(), repo_key),
           "running of " + repo_key);
  if (running.empty()) Fail(repo_key + " has no running run");
  int64_t lease = 0;
  const std::string& id = running[0].lease_id;
  if (!absl::SimpleHexAtoi(id.substr(0, id.find('-')), &lease)) {
    Fail("not an etcd lease id: " + id);
  }
  Latencies range, ttl;
  for (int i = 0; i < count; ++i) {
    internal::etcdpb::RangeRequest req;
    req.set_key(prefix);
    req.set_range_end(end);
    auto t0 = SteadyClock::now();
    MustOk(kv->Range(Context::Background(), req).status(), "raw Range");
    range.ms.push_back(MsSince(t0));
    t0 = SteadyClock::now();
    MustOk(kv->LeaseTimeToLive(Context::Background(), lease).status(),
           "raw LeaseTimeToLive");
    ttl.ms.push_back(MsSince(t0));
  }
  return {range.Quantile(0.99), ttl.Quantile(0.99)};
}

}  // namespace pac::concurrency::scale
