// Private to the etcd driver: its tuning constants and the encodings of
// its keys, values and lease ids (docs/etcd.md), shared by the files the
// driver is split into. Nothing here talks to etcd.
#ifndef PAC_SRC_ETCD_ETCD_ENCODING_H_
#define PAC_SRC_ETCD_ETCD_ENCODING_H_

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/driver.h"
#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_kv.h"

namespace pac::concurrency::internal {

inline constexpr int kMaxAttempts = 200;
inline constexpr size_t kMaxCachedViews = 4096;
inline constexpr size_t kMaxGuardedSlots = 64;
// Light grants (GuardSeats) compare every seat below the limit, besides
// the up to kMaxGuardedSlots slots a plan may compare: etcd allows 128
// compares per Txn.
inline constexpr int32_t kMaxLightGrantLimit = 32;
// Leases granted ahead, so an admission need not wait for a grant.
inline constexpr size_t kLeasePoolTarget = 4;
// How long View waits for the watch to bring this driver's own commit.
inline constexpr absl::Duration kOwnCommitWait = absl::Milliseconds(50);
// A failed promotion is tried again after a pause that doubles up to this.
inline constexpr absl::Duration kMaxPromoteRetry = absl::Seconds(30);
// How often the promotion loop steps every cached repository with a queue.
inline constexpr absl::Duration kPromoteSweep = absl::Seconds(30);
// Releases of one repository answered by one Txn, at most (ReleaseGroup).
inline constexpr size_t kMaxReleaseGroup = 16;

// Seats below this number make distinct fencing tokens (FencingToken).
inline constexpr int64_t kSeatsPerRevision = int64_t{1} << 20;
// etcd's default `--max-txn-ops`: a Txn's compares, success ops and
// failure ops may each number this many at most.
inline constexpr size_t kMaxTxnOps = 128;
// Queue entries of runs that hold a slot or are queued twice, deleted by
// one Txn at most (the rest by later ones).
inline constexpr size_t kMaxStaleDeletes = 32;
// A supersede group's older entries removed by one step (two operations
// each). Every run of a group is submitted by a guarded step that removes
// the group's older entries, so a group has one queued run at a time.
inline constexpr size_t kMaxSuperseded = 16;
// Running runs of a group one cancel_running submit asks to stop, at most
// (a put and, unless compared already, a compare each).
inline constexpr size_t kMaxCancels = 8;

// A grant's fencing token: the revision of the Txn that granted it, then
// its seat. Tokens strictly increase per repository (rule 4): a later Txn
// has a greater revision, and the grants of one Txn take seats in the
// order they are admitted (AddGrant fills the lowest free seat each time,
// and the lower ones are taken by then), so each is above the one before.
// Seats from kSeatsPerRevision up (a million slots held at once) would
// overlap the next revision's tokens.
inline int64_t FencingToken(int64_t revision, int64_t seat) {
  return revision * kSeatsPerRevision + std::min(seat, kSeatsPerRevision - 1);
}

// Splits `rest`, a key after `P repo/`, into "<ns>/<name>" and what
// follows its '/' (the kind: meta, limit, slot/..., queue/...). False if
// the key has no kind.
inline bool SplitRepoKey(std::string_view rest, std::string_view* repo,
                         std::string_view* kind) {
  size_t s1 = rest.find('/');
  size_t s2 = s1 == std::string_view::npos ? s1 : rest.find('/', s1 + 1);
  if (s2 == std::string_view::npos) return false;
  *repo = rest.substr(0, s2);
  *kind = rest.substr(s2 + 1);
  return true;
}

// A random 64-bit instance id, in hex.
inline std::string RandomInstanceId() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  char buf[24];
  auto end = std::to_chars(buf, buf + sizeof(buf), v, 16).ptr;
  return std::string(buf, end);
}

inline std::string Hex(int64_t v) {
  char buf[24];
  auto end =
      std::to_chars(buf, buf + sizeof(buf), static_cast<uint64_t>(v), 16).ptr;
  return std::string(buf, end);
}

inline bool ParseHex(std::string_view s, int64_t* out) {
  uint64_t v = 0;
  if (s.empty() || s.size() > 16) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
  if (ec != std::errc() || ptr != s.data() + s.size()) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

// A Lease's id: the etcd lease, the grant's revision (with the seat, its
// fencing token),
// the seat, and the repository and run the grant is for, as
// `<lease hex>-<revision hex>-<seat hex>:<ns>:<name>:<run ns>:<run name>`
// (':' since a key's '/' would split an HTTP path). An etcd lease is reused
// after a release, and a seat by the next grant, so neither alone names one
// grant; with the revision, a stale holder's id never matches a later grant
// (rule 12). The keys let a release or renewal by id alone go straight to
// the slot, with no index key from lease to slot to write, delete and read.
inline std::string LeaseId(int64_t lease, int64_t revision, int64_t seat,
                           std::string_view repo, std::string_view run) {
  std::string out =
      Cat(Hex(lease), "-", Hex(revision), "-", Hex(seat), ":", repo, ":", run);
  std::replace(out.begin(), out.end(), '/', ':');
  return out;
}

struct ParsedLeaseId {
  int64_t lease = 0, revision = 0, seat = 0;
  std::string repo, run;
};

// nullopt: not an id this driver issued (then it names no grant here).
inline std::optional<ParsedLeaseId> ParseLeaseId(std::string_view id) {
  const std::vector<absl::string_view> parts = absl::StrSplit(AV(id), ':');
  if (parts.size() != 5) return std::nullopt;
  const std::vector<absl::string_view> grant = absl::StrSplit(parts[0], '-');
  ParsedLeaseId out;
  if (grant.size() != 3 || !ParseHex(SV(grant[0]), &out.lease) ||
      !ParseHex(SV(grant[1]), &out.revision) ||
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

// The fields of a seat's value, "<lease hex>/<µs>/<commit id>/<run>
// [ <group>]" (the run keeps its '/'; the supersede group the run was
// submitted with, if any, follows a space, which neither has): fewer than
// four if it is not one.
inline std::vector<absl::string_view> SeatFields(const std::string& value) {
  std::vector<absl::string_view> f =
      absl::StrSplit(AV(value), absl::MaxSplits('/', 3));
  if (f.size() == 4) f[3] = f[3].substr(0, f[3].find(' '));
  return f;
}
// The group of a seat's value; empty if none.
inline std::string_view SeatGroup(const std::string& value) {
  const size_t space = value.find(' ');
  return space == std::string::npos ? std::string_view()
                                    : std::string_view(value).substr(space + 1);
}

inline std::string Pad20(int64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%020" PRId64, std::max<int64_t>(v, 0));
  return buf;
}

// A creation time (µs since 1970) as a queue key's time field, ordered as
// the times are when compared as bytes: from 1970 twenty digits; before it
// '-' (below every digit) and nineteen digits of v - INT64_MIN, which grow
// with v. Keys written before pre-1970 times were accepted are unchanged.
inline std::string QueueTime(int64_t us) {
  if (us >= 0) return Pad20(us);
  char buf[32];
  const uint64_t shifted = static_cast<uint64_t>(us) ^ (uint64_t{1} << 63);
  std::snprintf(buf, sizeof(buf), "-%019" PRIu64, shifted);
  return buf;
}

// The inverse of QueueTime; false if `field` is not one.
inline bool ParseQueueTime(std::string_view field, int64_t* us) {
  const bool negative = !field.empty() && field.front() == '-';
  if (negative) field.remove_prefix(1);
  if (field.size() != (negative ? 19u : 20u)) return false;
  uint64_t v = 0;
  auto [end, ec] =
      std::from_chars(field.data(), field.data() + field.size(), v);
  if (ec != std::errc() || end != field.data() + field.size()) return false;
  if (negative) {
    if (v >= (uint64_t{1} << 63)) return false;
    *us = static_cast<int64_t>(v ^ (uint64_t{1} << 63));
  } else {
    if (v > static_cast<uint64_t>(INT64_MAX)) return false;
    *us = static_cast<int64_t>(v);
  }
  return true;
}

inline etcdpb::RequestOp PutOp(const std::string& key, const std::string& value,
                               int64_t lease = 0) {
  etcdpb::RequestOp op;
  auto* p = op.mutable_request_put();
  p->set_key(key);
  p->set_value(value);
  p->set_lease(lease);
  return op;
}

inline etcdpb::RequestOp DeleteOp(const std::string& key,
                                  const std::string& range_end = "") {
  etcdpb::RequestOp op;
  auto* d = op.mutable_request_delete_range();
  d->set_key(key);
  d->set_range_end(range_end);
  return op;
}

// A repository's policy as the value of its `policy` key:
// "q=<max queue µs>,m=<mode>,s=<shared limit>+<shared limit>...", each
// part left out when it is the default (a default policy has no key).
inline std::string EncodePolicy(const RepositoryPolicy& p) {
  std::string out;
  if (p.max_queue_time.has_value()) {
    out = Cat("q=", absl::ToInt64Microseconds(*p.max_queue_time));
  }
  if (p.mode != QueueMode::kOldestFirst) {
    out += Cat(out.empty() ? "" : ",", "m=", QueueModeName(p.mode));
  }
  if (!p.shared_limits.empty()) {
    out +=
        Cat(out.empty() ? "" : ",", "s=", absl::StrJoin(p.shared_limits, "+"));
  }
  return out;
}

// The policy of a `policy` value; nullopt when it does not parse.
inline std::optional<RepositoryPolicy> DecodePolicy(std::string_view value) {
  RepositoryPolicy p;
  for (absl::string_view part : absl::StrSplit(AV(value), ',')) {
    if (part.empty()) continue;
    if (part.substr(0, 2) == "q=") {
      int64_t us = 0;
      auto [end, ec] =
          std::from_chars(part.data() + 2, part.data() + part.size(), us);
      if (ec != std::errc() || end != part.data() + part.size() || us <= 0) {
        return std::nullopt;
      }
      p.max_queue_time = absl::Microseconds(us);
    } else if (part.substr(0, 2) == "m=") {
      auto mode = ParseQueueMode(SV(part.substr(2)), "mode");
      if (!mode.ok()) return std::nullopt;
      p.mode = *mode;
    } else if (part.substr(0, 2) == "s=") {
      for (absl::string_view name : absl::StrSplit(part.substr(2), '+')) {
        if (!ValidateSharedLimitName(SV(name), "name").ok()) {
          return std::nullopt;
        }
        p.shared_limits.emplace_back(name);
      }
    } else {
      return std::nullopt;
    }
  }
  return p;
}

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_ETCD_ETCD_ENCODING_H_
