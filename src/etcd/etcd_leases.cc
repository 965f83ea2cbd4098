// The etcd driver's pool of etcd leases: leases granted ahead of need
// (RefillLoop), when each one's TTL started (what a grant's expiry is
// computed from), reuse of a young lease freed by a release, and the
// Lease values handed to callers.
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
                            int64_t lease, int64_t revision, int64_t seat,
                            absl::Time now) const {
  return Lease{LeaseId(lease, revision, seat, repo, run),
               repo,
               run,
               now,
               now + ttl_,
               FencingToken(revision, seat)};
}

}  // namespace pac::concurrency::internal
