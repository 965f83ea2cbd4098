#include "src/torture/checker.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"

namespace pac::concurrency::torture {

namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// An invocation and its completion (null: unknown outcome).
struct Call {
  const Op* inv = nullptr;
  const Op* done = nullptr;
  int64_t t0() const { return inv->t_ns; }
  int64_t t1() const { return done != nullptr ? done->t_ns : kNever; }
  bool ok() const { return done != nullptr && done->phase == Phase::kOk; }
  // A call that may have taken effect: not refused before doing anything.
  bool MayHaveActed() const {
    if (ok()) return true;
    if (done == nullptr) return true;
    const std::string& e = done->error;
    return e != "INVALID_ARGUMENT" && e != "FAILED_PRECONDITION" &&
           e != "NOT_FOUND";
  }
};

struct LeaseInfo {
  std::string run;
  int64_t token = 0;
  int64_t start = kNever;    // first answer that reported it
  int64_t renewed_sent = 0;  // last renewal sent that succeeded
  bool adopted = false;
  int64_t end = kNever;  // computed
  int64_t lo = 0;        // earliest possible grant
};

struct RepoState {
  std::map<std::string, LeaseInfo> leases;                   // by lease id
  std::map<std::string, std::vector<const Call*>> acquires;  // by run
  std::vector<const Call*> releases;
  std::vector<const Call*> cleanups;
  std::vector<const Call*> limit_calls;
  // Runs certainly removed from the queue (a refusal as RUN_REMOVED, a
  // clear that named them): when that was first known.
  std::map<std::string, int64_t> removed;
  // Every report of a grant, with the call that made it.
  struct GrantReport {
    std::string run;
    const Call* call;
    bool adopted;
  };
  std::vector<GrantReport> grant_reports;
};

std::string Ms(int64_t ns) {
  return absl::FormatDuration(absl::Nanoseconds(ns));
}

// A shared limit and the repositories that draw from it.
struct SharedSet {
  std::string name;
  int64_t limit = 0;
  std::vector<std::string> members;
};

class Checker {
 public:
  Checker(const std::vector<Op>& h, const CheckOptions& o) : o_(o) { Pair(h); }

  Report Run() {
    for (const Call& c : calls_) Index(c);
    for (auto& [name, r] : repos_) Bounds(r);
    for (auto& [name, r] : repos_) {
      OverLimit(name, r);
      DoubleGrant(name, r);
      Tokens(name, r);
      Fifo(name, r);
      Lost(name, r);
      RemovedAdmitted(name, r);
    }
    for (const SharedSet& sh : shared_) OverSharedLimit(sh);
    Drain();
    Stalled();
    for (const auto& [name, r] : repos_) {
      report_.grants += static_cast<int64_t>(r.leases.size());
    }
    return std::move(report_);
  }

 private:
  void Pair(const std::vector<Op>& h) {
    std::map<std::string, const Op*> last_line;  // by process
    for (const Op& op : h) {
      if (op.wall_us == 0) continue;
      const Op*& prev = last_line[op.proc];
      if (prev != nullptr) {
        const int64_t step =
            (op.wall_us - prev->wall_us) - (op.t_ns - prev->t_ns) / 1000;
        if (std::llabs(step) > std::llabs(report_.clock_step_us)) {
          report_.clock_step_us = step;
          report_.clock_step_at_ns = op.t_ns;
        }
      }
      prev = &op;
    }
    std::map<std::pair<std::string, int64_t>, size_t> open;
    calls_.reserve(h.size());
    for (const Op& op : h) {
      if (op.phase == Phase::kInvoke) {
        open[{op.proc, op.id}] = calls_.size();
        calls_.push_back(Call{&op, nullptr});
      } else if (auto it = open.find({op.proc, op.id}); it != open.end()) {
        calls_[it->second].done = &op;
        open.erase(it);
      }
    }
  }

  void Reported(RepoState& r, const Grant& g, int64_t at, bool adopted) {
    if (g.lease_id.empty()) return;
    LeaseInfo& l = r.leases[g.lease_id];
    l.run = g.run;
    l.token = g.token;
    l.start = std::min(l.start, at);
    l.adopted = l.adopted || adopted;
  }

  void Index(const Call& c) {
    const Op& in = *c.inv;
    ++report_.calls;
    if (c.done == nullptr) ++report_.unknown;
    if (c.done != nullptr && c.done->phase == Phase::kFail) ++report_.failed;
    if (in.kind == "fault") {
      ++report_.faults;
      fault_times_.push_back(in.t_ns);
      return;
    }
    if (in.kind == "heal") {
      heal_times_.push_back(in.t_ns);
      return;
    }
    if (in.kind == "shared") {
      // Set before any worker starts; a failed one stops the run.
      if (c.ok()) shared_.push_back(SharedSet{in.note, in.limit, in.members});
      return;
    }
    if (in.proc != "torture") by_proc_[in.proc].push_back(&c);
    if (in.kind == "drain") {
      drain_start_ = std::min(drain_start_, in.t_ns);
      return;
    }
    if (in.repo.empty()) return;
    RepoState& r = repos_[in.repo];
    const Op* out = c.ok() ? c.done : nullptr;
    auto removed_at = [&](const std::string& run, int64_t t) {
      auto [it, fresh] = r.removed.emplace(run, t);
      if (!fresh) it->second = std::min(it->second, t);
    };
    if (in.kind == "acquire") {
      r.acquires[in.run].push_back(&c);
      if (in.limit >= 0) r.limit_calls.push_back(&c);
      if (out != nullptr && out->acquired) {
        Reported(r, out->lease, out->t_ns, in.adopt);
        r.grant_reports.push_back({in.run, &c, in.adopt});
      }
      if (c.done != nullptr && !c.done->removed.empty()) {
        removed_at(in.run, c.done->t_ns);
      }
    } else if (in.kind == "clear") {
      if (out != nullptr) {
        for (const std::string& run : out->queued) removed_at(run, out->t_ns);
      }
    } else if (in.kind == "release") {
      r.releases.push_back(&c);
    } else if (in.kind == "set_limit") {
      r.limit_calls.push_back(&c);
    } else if (in.kind == "cleanup") {
      r.cleanups.push_back(&c);
    } else if (in.kind == "renew") {
      if (out != nullptr) {
        Reported(r, out->lease, out->t_ns, false);
        LeaseInfo& l = r.leases[out->lease.lease_id];
        l.renewed_sent = std::max(l.renewed_sent, in.t_ns);
      }
    }
    if (out != nullptr) {
      for (const Grant& g : out->admitted) Reported(r, g, out->t_ns, false);
      for (const Grant& g : out->running) Reported(r, g, out->t_ns, false);
      for (const std::vector<Grant>* gs : {&out->admitted, &out->running}) {
        for (const Grant& g : *gs)
          r.grant_reports.push_back({g.run, &c, false});
      }
    }
  }

  // removed_admitted: a grant of a run reported by a call sent after the
  // run was certainly removed from the queue, unless something that ends
  // its record (a release by its key, a cleanup, an adoption) may have
  // acted in between.
  void RemovedAdmitted(const std::string& name, const RepoState& r) {
    std::set<std::string> told;
    for (const RepoState::GrantReport& g : r.grant_reports) {
      auto rm = r.removed.find(g.run);
      if (g.adopted || rm == r.removed.end() || told.count(g.run) > 0) {
        continue;
      }
      const int64_t removed = rm->second, sent = g.call->t0();
      if (sent <= removed) continue;
      auto between = [&](const Call* e) {
        return e->t0() <= sent && e->t1() >= removed && e->MayHaveActed();
      };
      bool ended = false;
      for (const Call* e : r.releases) {
        ended = ended || (e->inv->lease_id.empty() && e->inv->run == g.run &&
                          between(e));
      }
      for (const Call* e : r.cleanups) ended = ended || between(e);
      if (auto a = r.acquires.find(g.run); a != r.acquires.end()) {
        for (const Call* e : a->second) {
          ended = ended || (e->inv->adopt && between(e));
        }
      }
      if (ended) continue;
      told.insert(g.run);
      Add("removed_admitted", name,
          absl::StrCat(g.run, " was reported holding a slot by a ",
                       g.call->inv->kind, " sent ", Ms(sent - removed),
                       " after it was removed from the queue"),
          sent);
    }
  }

  // The first submission of `run` in `r`: no grant of it comes earlier.
  static int64_t FirstSubmission(const RepoState& r, const std::string& run) {
    auto it = r.acquires.find(run);
    if (it == r.acquires.end() || it->second.empty()) return 0;
    int64_t first = kNever;
    for (const Call* c : it->second) first = std::min(first, c->t0());
    return first;
  }

  void Bounds(RepoState& r) {
    const int64_t ttl = absl::ToInt64Nanoseconds(o_.ttl - o_.margin);
    for (auto& [id, l] : r.leases) {
      l.lo = FirstSubmission(r, l.run);
      l.end = std::max(l.lo, l.renewed_sent) + ttl;
      for (const Call* c : r.releases) {
        const Op& in = *c->inv;
        const bool targets =
            in.lease_id.empty() ? in.run == l.run : in.lease_id == id;
        // Any release that completed after the lease may have been
        // granted may have ended it, even one that completed before the
        // grant was first reported.
        if (targets && c->t1() >= l.lo && c->MayHaveActed()) {
          l.end = std::min(l.end, c->t0());
        }
      }
      for (const Call* c : r.cleanups) {
        if (c->t1() >= l.lo && c->MayHaveActed()) {
          l.end = std::min(l.end, c->t0());
        }
      }
    }
  }

  // Every limit that may have been in force at some moment in [w, t].
  // Returns false when one of them is "none" (0) or none is known.
  bool MaxLimit(const RepoState& r, int64_t w, int64_t t, int64_t* out) const {
    int64_t best = -1;
    bool unlimited = false;
    auto take = [&](const Call* c) {
      if (c->inv->limit == 0) unlimited = true;
      best = std::max(best, c->inv->limit);
    };
    // The limits settled before w that may have been the last to take
    // effect (no other settled call certainly came after them: started
    // after they completed), and every limit sent by t that may have taken
    // effect at or after w (failed calls: any time). Of two settled calls
    // that overlap, either may have committed last.
    std::vector<const Call*> settled;
    int64_t last_start = kNever;
    for (const Call* c : r.limit_calls) {
      if (c->t0() > t) continue;
      if (c->ok() && c->t1() < w) {
        settled.push_back(c);
        last_start =
            last_start == kNever ? c->t0() : std::max(last_start, c->t0());
      } else if (c->MayHaveActed()) {
        take(c);
      }
    }
    for (const Call* c : settled) {
      if (c->t1() >= last_start) take(c);
    }
    if (unlimited || best < 0) return false;
    *out = best;
    return true;
  }

  void Add(std::string kind, const std::string& repo, std::string what,
           int64_t t) {
    report_.violations.push_back(
        Violation{std::move(kind), repo, std::move(what), t});
  }

  // A lease's holding interval, for the limit checks.
  struct Iv {
    int64_t start, end, lo;
    const std::string* repo;
    const std::string* id;
    const LeaseInfo* l;
  };
  // The intervals of `r`'s leases that count (not adopted, not empty).
  static void Intervals(const std::string& repo, const RepoState& r,
                        std::vector<Iv>& out) {
    for (const auto& [id, l] : r.leases) {
      if (l.adopted || l.start >= l.end) continue;
      out.push_back(Iv{l.start, l.end, l.lo, &repo, &id, &l});
    }
  }
  // Calls f(x, live) at the start of every interval x, with the intervals
  // live then (x's among them).
  template <typename F>
  static void Overlaps(std::vector<Iv>& ivs, F f) {
    std::sort(ivs.begin(), ivs.end(),
              [](const Iv& a, const Iv& b) { return a.start < b.start; });
    std::vector<const Iv*> live;
    for (const Iv& x : ivs) {
      live.erase(std::remove_if(live.begin(), live.end(),
                                [&](const Iv* y) { return y->end <= x.start; }),
                 live.end());
      live.push_back(&x);
      f(x, live);
    }
  }

  void OverLimit(const std::string& name, const RepoState& r) {
    std::vector<Iv> ivs;
    Intervals(name, r, ivs);
    Overlaps(ivs, [&](const Iv& x, const std::vector<const Iv*>& live) {
      int64_t w = kNever;
      for (const Iv* y : live) w = std::min(w, y->lo);
      int64_t limit = 0;
      if (!MaxLimit(r, w, x.start, &limit)) return;
      if (static_cast<int64_t>(live.size()) <= limit) return;
      std::string who;
      for (const Iv* y : live) {
        absl::StrAppend(&who, who.empty() ? "" : ", ", y->l->run, " (lease ",
                        *y->id, ", token ", y->l->token, ")");
      }
      Add("over_limit", name,
          absl::StrCat(live.size(), " holders at once under limit ", limit,
                       ": ", who),
          x.start);
    });
  }

  // The holders of every member of a shared limit (its value fixed for the
  // whole run), counted together as OverLimit counts one repository's.
  void OverSharedLimit(const SharedSet& sh) {
    if (sh.limit <= 0) return;
    std::vector<Iv> ivs;
    for (const std::string& m : sh.members) {
      if (auto it = repos_.find(m); it != repos_.end()) {
        Intervals(it->first, it->second, ivs);
      }
    }
    Overlaps(ivs, [&](const Iv& x, const std::vector<const Iv*>& live) {
      if (static_cast<int64_t>(live.size()) <= sh.limit) return;
      std::string who;
      for (const Iv* y : live) {
        absl::StrAppend(&who, who.empty() ? "" : ", ", y->l->run, " of ",
                        *y->repo);
      }
      Add("over_shared_limit", sh.name,
          absl::StrCat(live.size(), " holders at once under shared limit ",
                       sh.limit, ": ", who),
          x.start);
    });
  }

  void DoubleGrant(const std::string& name, const RepoState& r) {
    std::map<std::string,
             std::vector<std::pair<const std::string*, const LeaseInfo*>>>
        by_run;
    for (const auto& [id, l] : r.leases) {
      if (l.start < l.end) by_run[l.run].push_back({&id, &l});
    }
    for (const auto& [run, ls] : by_run) {
      for (size_t i = 0; i < ls.size(); ++i) {
        for (size_t j = i + 1; j < ls.size(); ++j) {
          const LeaseInfo& a = *ls[i].second;
          const LeaseInfo& b = *ls[j].second;
          if (a.start < b.end && b.start < a.end) {
            Add("double_grant", name,
                absl::StrCat(run, " held leases ", *ls[i].first, " and ",
                             *ls[j].first, " at once"),
                std::max(a.start, b.start));
          }
        }
      }
    }
  }

  void Tokens(const std::string& name, const RepoState& r) {
    std::map<int64_t, const std::string*> seen;
    std::vector<std::pair<int64_t, int64_t>> by_start;  // (start, token)
    for (const auto& [id, l] : r.leases) {
      if (l.start == kNever) continue;
      if (auto [it, fresh] = seen.emplace(l.token, &id); !fresh) {
        Add("token_reused", name,
            absl::StrCat("leases ", *it->second, " and ", id,
                         " both carry token ", l.token),
            l.start);
      }
      by_start.push_back({l.start, l.token});
    }
    std::sort(by_start.begin(), by_start.end());
    std::vector<int64_t> prefix_max(by_start.size());
    for (size_t i = 0; i < by_start.size(); ++i) {
      prefix_max[i] =
          std::max(i == 0 ? INT64_MIN : prefix_max[i - 1], by_start[i].second);
    }
    for (const auto& [id, l] : r.leases) {
      if (l.start == kNever || l.lo == 0) continue;
      // Leases reported before this run was first submitted were granted
      // before this one: their tokens must be lower.
      auto it = std::lower_bound(by_start.begin(), by_start.end(),
                                 std::make_pair(l.lo, INT64_MIN));
      if (it == by_start.begin()) continue;
      const size_t k = static_cast<size_t>(it - by_start.begin()) - 1;
      if (prefix_max[k] >= l.token) {
        Add("token_order", name,
            absl::StrCat("lease ", id, " of ", l.run, " has token ", l.token,
                         ", not above token ", prefix_max[k],
                         " of a grant reported before ", l.run,
                         " was submitted"),
            l.start);
      }
    }
  }

  struct QueueLife {
    const Call* queued = nullptr;  // the enqueuing call that said "queued"
    int64_t created = 0;
  };

  // For each run: its first enqueuing acquire answered "queued".
  std::map<std::string, QueueLife> Queued(const RepoState& r) const {
    std::map<std::string, QueueLife> out;
    for (const auto& [run, cs] : r.acquires) {
      for (const Call* c : cs) {
        if (!c->inv->enqueue || c->inv->adopt || !c->ok()) continue;
        if (c->done->acquired || c->done->position <= 0) continue;
        if (out[run].queued == nullptr || c->t0() < out[run].queued->t0()) {
          out[run] = QueueLife{c, c->inv->creation_us};
        }
      }
    }
    return out;
  }

  // Nothing but an admission can have taken `run` out of the queue in
  // (from, to]: no withdrawal, no cleanup, no second enqueuing call.
  bool Undisturbed(const RepoState& r, const std::string& run,
                   const Call* queued, int64_t to) const {
    const int64_t from = queued->t0();
    for (const Call* c : r.releases) {
      if (c->inv->run == run && c->t0() <= to && c->t1() >= from) return false;
    }
    for (const Call* c : r.cleanups) {
      if (c->t0() <= to && c->t1() >= from) return false;
    }
    for (const Call* c : r.acquires.at(run)) {
      if (c != queued && c->inv->enqueue && c->t0() <= to && c->t1() >= from) {
        return false;
      }
    }
    return true;
  }

  void Fifo(const std::string& name, const RepoState& r) {
    const auto queued = Queued(r);
    // Each run's earliest certain grant.
    std::map<std::string, int64_t> granted;
    for (const auto& [id, l] : r.leases) {
      if (l.adopted || l.start == kNever) continue;
      auto [it, fresh] = granted.emplace(l.run, l.start);
      if (!fresh) it->second = std::min(it->second, l.start);
    }
    for (const auto& [y, y_at] : granted) {
      const int64_t y_lo = FirstSubmission(r, y);
      auto yq = queued.find(y);
      for (const auto& [x, xl] : queued) {
        if (x == y) continue;
        // x ahead of y: an older creation time, or the same one and x in
        // the queue before y was first submitted.
        const int64_t y_created =
            yq != queued.end() ? yq->second.created : CreatedOf(r, y);
        const bool ahead = xl.created < y_created ||
                           (xl.created == y_created && xl.queued->t1() < y_lo);
        if (!ahead || xl.queued->t1() >= y_lo) continue;
        // Still queued after y's grant: a poll sent after it said so.
        for (const Call* c : r.acquires.at(x)) {
          if (c->inv->enqueue || !c->ok() || c->done->acquired ||
              c->done->position <= 0 || c->t0() <= y_at) {
            continue;
          }
          if (!Undisturbed(r, x, xl.queued, c->t0())) break;
          Add("fifo", name,
              absl::StrCat(y, " was admitted while ", x,
                           ", ahead of it, stayed queued (position ",
                           c->done->position, " ", Ms(c->t0() - y_at),
                           " after)"),
              y_at);
          break;
        }
      }
    }
  }

  static int64_t CreatedOf(const RepoState& r, const std::string& run) {
    auto it = r.acquires.find(run);
    if (it == r.acquires.end()) return 0;
    for (const Call* c : it->second) {
      if (c->inv->creation_us != 0) return c->inv->creation_us;
    }
    return 0;
  }

  void Lost(const std::string& name, const RepoState& r) {
    const int64_t ttl = absl::ToInt64Nanoseconds(o_.ttl - o_.margin);
    std::set<std::string> ever_granted;
    for (const auto& [id, l] : r.leases) ever_granted.insert(l.run);
    for (const auto& [x, xl] : Queued(r)) {
      if (ever_granted.count(x)) continue;
      std::vector<const Call*> polls;
      for (const Call* c : r.acquires.at(x)) {
        if (c->t0() > xl.queued->t0()) polls.push_back(c);
      }
      std::sort(polls.begin(), polls.end(),
                [](const Call* a, const Call* b) { return a->t0() < b->t0(); });
      // Seen queued at some moment after this; an admission after that
      // moment holds a lease for at least a TTL, which the next look,
      // answered within the TTL, would show.
      int64_t seen_after = xl.queued->t0();
      for (const Call* c : polls) {
        if (c->t1() - seen_after >= ttl) break;
        if (!c->ok()) break;
        if (c->done->acquired || c->done->position > 0) {
          seen_after = c->t0();
          continue;
        }
        if (c->inv->enqueue) break;
        if (!Undisturbed(r, x, xl.queued, c->t0())) break;
        Add("lost_queued", name,
            absl::StrCat(x,
                         " was queued and later not in the queue, never "
                         "admitted, withdrawn or cleaned up"),
            c->t0());
        break;
      }
    }
  }

  void Drain() {
    if (drain_start_ == kNever) return;
    const int64_t bound = absl::ToInt64Nanoseconds(o_.drain_bound);
    // Per repository: the last snapshot, and when its queue was last seen
    // non-empty.
    std::map<std::string, std::pair<const Call*, int64_t>> last;
    for (const Call& c : calls_) {
      if (c.inv->kind != "snapshot" || !c.ok() || c.t0() < drain_start_) {
        continue;
      }
      auto& [snap, busy_until] = last[c.inv->repo];
      if (snap == nullptr || c.t0() > snap->t0()) snap = &c;
      if (!c.done->queued.empty()) busy_until = std::max(busy_until, c.t1());
    }
    // A repository used before the drain but never seen after it began.
    for (const auto& [repo, r] : repos_) {
      if (!last.count(repo)) {
        Add("not_drained", repo,
            "no snapshot of it succeeded after the drain began", drain_start_);
      }
    }
    for (const auto& [repo, s] : last) {
      const auto& [snap, busy_until] = s;
      if (!snap->done->queued.empty()) {
        Add("not_drained", repo,
            absl::StrCat(snap->done->queued.size(),
                         " runs still queued when the drain ended, ",
                         Ms(snap->t1() - drain_start_), " after it began"),
            snap->t1());
      } else if (busy_until - drain_start_ > bound) {
        Add("not_drained", repo,
            absl::StrCat("the queue emptied ", Ms(busy_until - drain_start_),
                         " after the drain began (bound ",
                         absl::FormatDuration(o_.drain_bound), ")"),
            busy_until);
      }
    }
  }

  // Workers answered again within the bound after each fault healed.
  void Stalled() {
    const int64_t bound = absl::ToInt64Nanoseconds(o_.recovery_bound);
    std::sort(fault_times_.begin(), fault_times_.end());
    for (int64_t h : heal_times_) {
      auto next = std::upper_bound(fault_times_.begin(), fault_times_.end(), h);
      if (next != fault_times_.end() && *next < h + bound) continue;
      for (const auto& [proc, calls] : by_proc_) {
        bool tried = false, later = false, answered = false;
        for (const Call* c : calls) {
          if (c->t0() >= h && c->t0() < h + bound) tried = true;
          if (c->t0() >= h + bound) later = true;
          if (c->ok() && c->t1() >= h && c->t1() <= h + bound) answered = true;
        }
        if (tried && later && !answered) {
          Add("stalled", "",
              absl::StrCat(proc, " got no answer within ",
                           absl::FormatDuration(o_.recovery_bound),
                           " of a fault healing, and was still calling"),
              h);
        }
      }
    }
  }

  const CheckOptions o_;
  std::vector<int64_t> fault_times_, heal_times_;
  std::map<std::string, std::vector<const Call*>> by_proc_;
  std::vector<Call> calls_;
  std::map<std::string, RepoState> repos_;
  std::vector<SharedSet> shared_;
  int64_t drain_start_ = kNever;
  Report report_;
};

}  // namespace

Report Check(const std::vector<Op>& history, const CheckOptions& options) {
  return Checker(history, options).Run();
}

std::string Window(const std::vector<Op>& history, const std::string& repo,
                   int64_t t_ns, absl::Duration before, size_t max_lines) {
  const int64_t lo = t_ns - absl::ToInt64Nanoseconds(before);
  const int64_t hi = t_ns + absl::ToInt64Nanoseconds(absl::Milliseconds(200));
  std::vector<const Op*> near;
  for (const Op& op : history) {
    if (op.t_ns < lo || op.t_ns > hi) continue;
    if (op.repo == repo || op.kind == "fault") near.push_back(&op);
  }
  std::sort(near.begin(), near.end(), [&](const Op* a, const Op* b) {
    return std::llabs(a->t_ns - t_ns) < std::llabs(b->t_ns - t_ns);
  });
  if (near.size() > max_lines) near.resize(max_lines);
  std::sort(near.begin(), near.end(),
            [](const Op* a, const Op* b) { return a->t_ns < b->t_ns; });
  std::string out;
  for (const Op* op : near) {
    absl::StrAppend(&out, op->t_ns - t_ns >= 0 ? "+" : "",
                    absl::FormatDuration(absl::Nanoseconds(op->t_ns - t_ns)),
                    " ", ToJsonLine(*op), "\n");
  }
  return out;
}

}  // namespace pac::concurrency::torture
