// The etcd driver's watch: one stream over every repository, which keeps
// the cached views current, names released and admitted runs to local
// watchers, and, when a slot expires or is freed without a guarded Txn,
// promotes the queue (PromoteLoop). It also restarts the stream after a
// break or a compaction.
#include <algorithm>
#include <charconv>
#include <map>
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

absl::StatusOr<std::unique_ptr<WatchHandle>> EtcdDriver::WatchSlotAvailability(
    const Context& ctx, std::string_view repo_key, WatchCallback callback) {
  if (absl::Status s = ValidateKey(repo_key, "repository"); !s.ok()) return s;
  if (!callback) return absl::InvalidArgumentError("callback: must be set");
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  // The stream starts after this read's revision: nothing committed once
  // this call returns is missed.
  const std::string repo(repo_key);
  auto v = Read(ctx, repo);
  if (!v.ok()) return v.status();
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
  std::vector<BareDeletion> bare;
  CollectWatchEvents(b, &events, &bare);
  CountEvents(b);
  ResolveExpiries(&events, bare);
  dispatcher_.Post(std::move(events));
}

void EtcdDriver::ResolveExpiries(PendingEvents* events,
                                 const std::vector<BareDeletion>& bare) {
  // The driver never revokes a lease: a released slot's lease lives on
  // (reused, or left to run out unrenewed), while etcd deletes an expired
  // one with its keys. So a lease etcd no longer knows ran out. Asked
  // without mu_, on the watch thread, only for repositories watched here;
  // a lease that cannot be asked about leaves the event `released`.
  for (const BareDeletion& d : bare) {
    if (d.lease == 0) continue;
    Context ctx = Context::WithTimeout(Context::Background(), absl::Seconds(2));
    auto ttl = kv_->LeaseTimeToLive(ctx, d.lease);
    if (!ttl.ok() || *ttl >= 0) continue;
    for (size_t i = d.begin; i < d.end; ++i) {
      (*events)[i].second.type = WatchEventType::kExpired;
    }
  }
}

void EtcdDriver::CollectWatchEvents(const WatchBatch& b, PendingEvents* out,
                                    std::vector<BareDeletion>* bare) {
  PendingEvents& events = *out;
  MutexLock lock(&mu_);
  if (b.compact_revision > 0 || b.broken) {
    // Resume from the last revision seen; after a compaction, from just
    // after the compacted revision, telling every watcher to re-read.
    // Not "from now": a watcher re-reads when told, possibly before the
    // stream is back, and a change made between its read and the restart
    // would be heard by nobody. Changes after the compaction that the
    // re-read already saw come again, which a watcher takes as a hint.
    // Cached views may have missed changes. Their repositories with a
    // queue are stepped too (a slot may have expired unseen), not only the
    // watched ones.
    for (const auto& [repo, v] : views_) {
      if (!v.queue.empty()) to_promote_.insert(repo);
    }
    views_.clear();
    restart_watch_ = true;
    if (b.compact_revision > 0) {
      // The oldest revision still kept: the stream resumes there (its
      // events are not compacted).
      last_revision_ = std::max(last_revision_, b.compact_revision - 1);
    }
    watchers_.CollectAll(WatchEventType::kResync, &events);
    for (const auto& [w, ev] : events) to_promote_.insert(ev.repository_key);
    cv_.NotifyAll();
    return;
  }
  // Resume after the last event delivered, as etcd's clientv3 does: a
  // response's header revision may be ahead of events still being caught
  // up, which a resume from it would skip.
  if (!b.events.empty()) {
    last_revision_ =
        std::max(last_revision_, b.events.back().kv().mod_revision());
  }
  const std::string p = prefix_ + "repo/";
  // Guarded Txns write the repository's `meta` key: a slot deleted in the
  // same revision as a `meta` put was released by a Txn that already
  // admitted the queue. Other deletions (expiries, light releases) may
  // need a promotion step (`freed`): unless the repository's view, which
  // the stream keeps current, has no queue (a light release always finds
  // none; LightProof).
  std::set<std::pair<std::string_view, int64_t>> txn_writes;
  std::set<std::string> freed;
  // Repositories a run joined the queue of: a join planned before a slot
  // expired (a plan under a limit above 64 compares no slots) waits beside
  // the free slot, and the expiry, heard while the queue was empty,
  // promoted nobody.
  std::set<std::string> joined;
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
    if (tail.substr(0, 6) == "queue/" && ev.type() == etcdpb::Event::PUT) {
      joined.insert(repo);
      // A queue time limit of its own: this driver steps the repository
      // at its deadline too (and at the repository's, via the view below).
      RepoView one;
      ApplyKv(&one, tail, true, ev.kv(), /*fresh=*/true);
      if (!one.queue.empty() && one.queue[0].max_queue_us > 0) {
        ScheduleLocked(repo, DeadlineUs(one, one.queue[0]));
      }
    } else if (tail == "policy") {
      to_promote_.insert(repo);  // a new limit may be past already
    }
    WatchEventType type;
    std::string run;
    if (tail.substr(0, 5) == "slot/") {
      // The seat's holder until now: the event's previous value (the
      // stream asks for it), exact even after a gap in the stream. Without
      // one (etcd could not read it back) the watchers re-read instead of
      // hearing a release named wrong.
      std::string gone_run;
      int64_t gone_lease = 0;
      bool named = false;
      if (ev.has_prev_kv()) {
        const std::vector<absl::string_view> prev =
            SeatFields(ev.prev_kv().value());
        if (prev.size() == 4) {
          gone_run = std::string(prev[3]);
          gone_lease = ev.prev_kv().lease();
          named = true;
        }
      }
      const bool held =
          ev.type() == etcdpb::Event::DELETE || ev.kv().version() > 1;
      if (held && !named) {
        watchers_.Collect(repo, WatchEventType::kResync, "", &events);
      }
      if (ev.type() == etcdpb::Event::DELETE) {
        const size_t begin = events.size();
        if (named) {
          watchers_.Collect(repo, WatchEventType::kReleased, gone_run, &events);
        }
        if (txn_writes.count({repo_view, ev.kv().mod_revision()}) == 0) {
          freed.insert(repo);  // a slot freed: admit the queue, if any
          if (events.size() > begin) {
            bare->push_back(BareDeletion{begin, events.size(), gone_lease});
          }
        }
        continue;
      }
      // Every put of a seat is a grant. Over a held seat (the key existed:
      // version > 1) it is a release that admitted the queue head into the
      // seat it freed, in one Txn: its holder was released.
      if (held && named) {
        watchers_.Collect(repo, WatchEventType::kReleased, gone_run, &events);
      }
      const std::vector<absl::string_view> f = SeatFields(ev.kv().value());
      if (f.size() != 4) continue;
      run = std::string(f[3]);
      type = WatchEventType::kAdmitted;
    } else if (tail.substr(0, 8) == "removed/" &&
               ev.type() == etcdpb::Event::PUT) {
      // A run removed from the queue (ClearQueue): its reason is the value.
      watchers_.Collect(repo, WatchEventType::kRemoved,
                        std::string(tail.substr(8)), &events, ev.kv().value());
      continue;
    } else if (tail.substr(0, 7) == "cancel/" &&
               ev.type() == etcdpb::Event::PUT) {
      // A running run asked to stop (cancel_running).
      type = WatchEventType::kCancelRequested;
      run = std::string(tail.substr(7));
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
    if (joined.count(repo) > 0) NoteDeadlinesLocked(repo, it->second);
  }
  if (!applied.empty()) views_cv_.NotifyAll();
  for (const std::string& repo : freed) {
    // A view still cached took every event of this batch (or is later).
    // (A member's freed slot may admit another member's head.)
    auto it = views_.find(repo);
    if (it != views_.end() && it->second.queue.empty() &&
        it->second.shared.empty()) {
      continue;
    }
    to_promote_.insert(repo);
  }
  for (const std::string& repo : joined) {
    // Only a view the stream keeps current tells that there is room.
    auto it = views_.find(repo);
    if (it == views_.end() || it->second.queue.empty()) continue;
    const RepoView& v = it->second;
    if (v.limit == 0 || static_cast<int64_t>(v.slots.size()) < v.limit) {
      to_promote_.insert(repo);
    }
  }
  if (!to_promote_.empty()) cv_.NotifyAll();
}

void EtcdDriver::PromoteLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Time last_restart = absl::InfinitePast();
  // Promotions that failed (the store unavailable, say): each is tried
  // again after a pause that doubles from 100 ms to kMaxPromoteRetry, until
  // it succeeds, so a queue drains after an outage with no new call.
  struct Retry {
    absl::Time at;
    absl::Duration pause;
  };
  std::map<std::string, Retry> retries;
  // Shared limits whose pass failed, by name (to_pass_).
  std::map<std::string, Retry> pass_retries;
  // And a slow sweep: every repository whose cached view has a queue is
  // stepped now and then, in case a promotion was missed altogether.
  absl::Time next_sweep = absl::Now() + kPromoteSweep;
  while (true) {
    std::set<std::string> repos;
    std::vector<std::string> passes_due;
    bool restart = false;
    {
      MutexLock lock(&mu_);
      for (const std::string& name : to_pass_) {
        auto [it, first] =
            pass_retries.try_emplace(name, Retry{{}, absl::Milliseconds(100)});
        if (!first) {
          it->second.pause = std::min(it->second.pause * 2, kMaxPromoteRetry);
        }
        it->second.at = absl::Now() + it->second.pause;
      }
      to_pass_.clear();
      while (!stop_ && to_promote_.empty() && !restart_watch_ &&
             to_pass_.empty()) {
        absl::Time until = std::min(next_sweep, absl::Now() + absl::Seconds(1));
        for (const auto& [repo, r] : retries) until = std::min(until, r.at);
        for (const auto& [name, r] : pass_retries) {
          until = std::min(until, r.at);
        }
        if (!deadline_steps_.empty()) {
          // Queue deadlines are by clock_ (a test's may jump: its listener
          // wakes this loop).
          int64_t first = INT64_MAX;
          for (const auto& [repo, at] : deadline_steps_) {
            first = std::min(first, at);
          }
          until = std::min(until, absl::Now() + (absl::FromUnixMicros(first) -
                                                 clock_->Now()));
        }
        if (absl::Now() >= until) break;
        cv_.WaitUntil(&mu_, until);
      }
      if (stop_) return;
      if (background_) {
        repos.swap(to_promote_);
        const int64_t now_us = absl::ToUnixMicros(clock_->Now());
        for (auto it = deadline_steps_.begin(); it != deadline_steps_.end();) {
          if (it->second <= now_us) {
            repos.insert(it->first);
            it = deadline_steps_.erase(it);
          } else {
            ++it;
          }
        }
        const absl::Time now = absl::Now();
        for (const auto& [repo, r] : retries) {
          if (r.at <= now) repos.insert(repo);
        }
        for (const auto& [name, r] : pass_retries) {
          if (r.at <= now) passes_due.push_back(name);
        }
        if (now >= next_sweep) {
          next_sweep = now + kPromoteSweep;
          for (const auto& [repo, v] : views_) {
            if (!v.queue.empty()) repos.insert(repo);
          }
        }
      }
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
    // The shared limits of the members stepped: each passed once, after
    // the steps (a sweep may step many members of one limit).
    std::vector<std::string> collected;
    for (const std::string& repo : repos) {
      Context ctx =
          Context::WithTimeout(Context::Background(), absl::Seconds(10));
      auto r = Step(ctx, repo, 0, /*set_limit=*/false, "", {},
                    /*holding_turn=*/false, StepShared{0, true, &collected});
      if (r.ok() || closed_.load()) {
        retries.erase(repo);
        continue;
      }
      auto [it, first] =
          retries.try_emplace(repo, Retry{{}, absl::Milliseconds(100)});
      if (!first)
        it->second.pause = std::min(it->second.pause * 2, kMaxPromoteRetry);
      it->second.at = absl::Now() + it->second.pause;
      logger_->warn("etcd: admitting the queue of {} failed (again in {}): {}",
                    repo, absl::FormatDuration(it->second.pause),
                    r.status().ToString());
    }
    std::set<std::string> pass(collected.begin(), collected.end());
    pass.insert(passes_due.begin(), passes_due.end());
    if (!pass.empty()) {
      Context ctx =
          Context::WithTimeout(Context::Background(), absl::Seconds(10));
      SharedPass(ctx, std::vector<std::string>(pass.begin(), pass.end()));
      // A pass that failed put its limits back in to_pass_ (next round).
      MutexLock lock(&mu_);
      for (const std::string& name : passes_due) {
        if (to_pass_.count(name) == 0) pass_retries.erase(name);
      }
    }
  }
}

}  // namespace pac::concurrency::internal
