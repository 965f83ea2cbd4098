#include "src/torture/worker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "pac/concurrency/status.h"

namespace pac::concurrency::torture {

TortureRepos::TortureRepos(const std::string& ns)
    : fixed{{ns, "one", 1},
            {ns, "two", 2},
            {ns, "three", 3},
            {ns, "wide", 200}},
      flex{ns, "flex", 2},
      scratch{ns, "scratch", 2},
      adopt{ns, "adopt", 1} {}

std::vector<Repository> TortureRepos::All() const {
  std::vector<Repository> all = fixed;
  all.push_back(flex);
  all.push_back(scratch);
  all.push_back(adopt);
  return all;
}

namespace {

Grant ToGrant(const Lease& l) {
  return Grant{l.pipeline_run_key, l.lease_id, l.fencing_token};
}

std::vector<Grant> ToGrants(const std::vector<Lease>& ls) {
  std::vector<Grant> out;
  out.reserve(ls.size());
  for (const Lease& l : ls) out.push_back(ToGrant(l));
  return out;
}

class DriverTarget final : public Target {
 public:
  explicit DriverTarget(Driver& d) : d_(d) {}
  absl::StatusOr<AcquireResult> Acquire(const Context& ctx,
                                        const Repository& repo,
                                        const std::string& run,
                                        const AcquireOptions& o) override {
    return d_.AcquireSlot(ctx, repo, run, o);
  }
  absl::StatusOr<ReleaseResult> Release(const Context& ctx,
                                        const std::string& repo,
                                        const std::string& lease_id,
                                        const std::string& run) override {
    return lease_id.empty() ? d_.ReleaseSlot(ctx, "", run, repo)
                            : d_.ReleaseSlot(ctx, lease_id, "", "");
  }
  absl::StatusOr<Lease> Renew(const Context& ctx, const std::string& repo,
                              const std::string& lease_id) override {
    (void)repo;
    return d_.RenewLease(ctx, lease_id);
  }
  absl::StatusOr<std::vector<Lease>> SetLimit(const Context& ctx,
                                              const Repository& repo) override {
    return d_.SetRepositoryLimit(ctx, repo);
  }
  absl::Status Cleanup(const Context& ctx, const std::string& repo) override {
    return d_.CleanupRepository(ctx, repo);
  }
  absl::StatusOr<RepositorySnapshot> Snapshot(
      const Context& ctx, const std::string& repo) override {
    return d_.GetRepositorySnapshot(ctx, repo);
  }
  absl::StatusOr<ClearQueueResult> Clear(const Context& ctx,
                                         const std::string& repo) override {
    return d_.ClearQueue(ctx, repo);
  }
  absl::Status Share(const Context& ctx, const SharedLimit& limit,
                     const std::vector<std::string>& members) override {
    if (absl::Status s = d_.SetSharedLimit(ctx, limit); !s.ok()) return s;
    RepositoryPolicy p;
    p.shared_limits = {limit.name};
    for (const std::string& m : members) {
      if (absl::Status s = d_.SetRepositoryPolicy(ctx, m, p); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

 private:
  Driver& d_;
};

}  // namespace

std::unique_ptr<Target> NewDriverTarget(Driver& driver) {
  return std::make_unique<DriverTarget>(driver);
}

Op Recorder::Invoke(const std::string& kind, const std::string& repo) {
  Op op;
  op.proc = proc_;
  op.id = ++next_id_;
  op.kind = kind;
  op.repo = repo;
  return op;
}

void Recorder::Write(Op& op, Phase phase) {
  op.phase = phase;
  // Both clocks read together: a step of the wall clock shows in the check.
  op.t_ns = MonotonicNanos();
  op.wall_us = absl::ToUnixMicros(absl::Now());
  out_.Append(op);
}

// A completion line carries only the answer (ToJsonLine leaves the
// arguments out), so it is the invocation's Op with the answer added.
void Recorder::Fail(Op op, const absl::Status& s) {
  op.error = absl::StatusCodeToString(s.code());
  if (IsRunRemoved(s)) op.removed = RunRemovedReason(s);
  Write(op, Phase::kFail);
}

absl::StatusOr<AcquireResult> Recorder::Acquire(const Context& ctx,
                                                const Repository& repo,
                                                const std::string& run,
                                                const AcquireOptions& o) {
  Op op = Invoke("acquire", repo.Key());
  op.run = run;
  op.limit = o.keep_recorded_limit ? -1 : EffectiveLimit(repo);
  op.enqueue = o.enqueue;
  op.adopt = o.adopt_running;
  if (o.creation_time.has_value()) {
    op.creation_us = absl::ToUnixMicros(*o.creation_time);
  }
  op.group = o.group;
  op.cancel = o.cancel_running;
  if (o.max_queue_time.has_value()) {
    op.max_queue_us = absl::ToInt64Microseconds(*o.max_queue_time);
  }
  Write(op, Phase::kInvoke);
  auto r = target_.Acquire(ctx, repo, run, o);
  if (!r.ok()) {
    Fail(op, r.status());
    return r;
  }
  op.acquired = r->acquired;
  if (r->acquired) op.lease = ToGrant(r->lease);
  op.position = r->position;
  op.admitted = ToGrants(r->admitted);
  Write(op, Phase::kOk);
  return r;
}

absl::StatusOr<ReleaseResult> Recorder::Release(const Context& ctx,
                                                const std::string& repo,
                                                const std::string& lease_id,
                                                const std::string& run) {
  Op op = Invoke("release", repo);
  op.lease_id = lease_id;
  op.run = lease_id.empty() ? run : "";
  Write(op, Phase::kInvoke);
  auto r = target_.Release(ctx, repo, lease_id, run);
  if (!r.ok()) {
    Fail(op, r.status());
    return r;
  }
  op.released = r->released;
  op.dequeued = r->dequeued;
  op.admitted = ToGrants(r->admitted);
  Write(op, Phase::kOk);
  return r;
}

absl::StatusOr<Lease> Recorder::Renew(const Context& ctx,
                                      const std::string& repo,
                                      const std::string& lease_id) {
  Op op = Invoke("renew", repo);
  op.lease_id = lease_id;
  Write(op, Phase::kInvoke);
  auto r = target_.Renew(ctx, repo, lease_id);
  if (!r.ok()) {
    Fail(op, r.status());
    return r;
  }
  op.lease = ToGrant(*r);
  op.cancel_requested = r->cancel_requested;
  Write(op, Phase::kOk);
  return r;
}

absl::StatusOr<std::vector<Lease>> Recorder::SetLimit(const Context& ctx,
                                                      const Repository& repo) {
  Op op = Invoke("set_limit", repo.Key());
  op.limit = EffectiveLimit(repo);
  Write(op, Phase::kInvoke);
  auto r = target_.SetLimit(ctx, repo);
  if (!r.ok()) {
    Fail(op, r.status());
    return r;
  }
  op.admitted = ToGrants(*r);
  Write(op, Phase::kOk);
  return r;
}

absl::Status Recorder::Share(const Context& ctx, const SharedLimit& limit,
                             const std::vector<std::string>& members) {
  Op op = Invoke("shared", "");
  op.note = limit.name;
  op.limit = limit.limit;
  op.members = members;
  Write(op, Phase::kInvoke);
  absl::Status s = target_.Share(ctx, limit, members);
  if (!s.ok()) {
    Fail(op, s);
  } else {
    Write(op, Phase::kOk);
  }
  return s;
}

absl::Status Recorder::Cleanup(const Context& ctx, const std::string& repo) {
  Op op = Invoke("cleanup", repo);
  Write(op, Phase::kInvoke);
  absl::Status s = target_.Cleanup(ctx, repo);
  if (!s.ok()) {
    Fail(op, s);
  } else {
    Write(op, Phase::kOk);
  }
  return s;
}

absl::StatusOr<RepositorySnapshot> Recorder::Snapshot(const Context& ctx,
                                                      const std::string& repo) {
  Op op = Invoke("snapshot", repo);
  Write(op, Phase::kInvoke);
  auto r = target_.Snapshot(ctx, repo);
  if (!r.ok()) {
    Fail(op, r.status());
    return r;
  }
  op.running = ToGrants(r->running);
  for (const QueueEntry& q : r->queued) op.queued.push_back(q.pipeline_run_key);
  Write(op, Phase::kOk);
  return r;
}

absl::StatusOr<ClearQueueResult> Recorder::Clear(const Context& ctx,
                                                 const std::string& repo) {
  Op op = Invoke("clear", repo);
  Write(op, Phase::kInvoke);
  auto r = target_.Clear(ctx, repo);
  if (!r.ok()) {
    Fail(op, r.status());
    return r;
  }
  op.queued = r->removed;
  Write(op, Phase::kOk);
  return r;
}

void Recorder::Mark(const std::string& kind, const std::string& note) {
  Op op = Invoke(kind, "");
  op.note = note;
  Write(op, Phase::kInvoke);
  Write(op, Phase::kOk);
}

Worker::Worker(Recorder& rec, const TortureRepos& repos, WorkerOptions o)
    : rec_(rec), repos_(repos), o_(o), rng_(o.seed) {}

Context Worker::Deadline() {
  // Mostly generous; now and then short enough to expire mid-call.
  std::uniform_int_distribution<int> ms(rng_() % 8 == 0 ? 5 : 500, 3000);
  return Context::WithTimeout(Context::Background(),
                              absl::Milliseconds(ms(rng_)));
}

Repository Worker::PickRepo() {
  const int r = static_cast<int>(rng_() % 100);
  if (r < 30) return repos_.fixed[0];
  if (r < 50) return repos_.fixed[1];
  if (r < 65) return repos_.fixed[2];
  if (r < 72) return repos_.fixed[3];
  if (r < 87) return repos_.flex;
  if (r < 97) return repos_.scratch;
  return repos_.adopt;
}

std::string Worker::NewRun() {
  return absl::StrCat(repos_.flex.ns, "/", o_.tag, "-", ++runs_);
}

void Worker::Run(const std::atomic<bool>& stop,
                 const std::atomic<bool>& abandon,
                 const std::atomic<int64_t>& pause_until_ns) {
  while (!stop.load()) {
    const int64_t pause = pause_until_ns.load();
    if (pause > MonotonicNanos()) {
      absl::SleepFor(absl::Nanoseconds(pause - MonotonicNanos()));
      continue;
    }
    Step();
    ++calls_;
    absl::SleepFor(absl::Milliseconds(1 + rng_() % 15));
  }
  if (abandon.load()) return;
  // Holders release as they finish; queued runs stay for the drain.
  for (const Held& h : held_) {
    if (h.neglected) continue;
    Context ctx = Context::WithTimeout(Context::Background(), absl::Seconds(5));
    (void)rec_.Release(ctx, h.repo.Key(), h.lease_id, h.run);
  }
  held_.clear();
}

void Worker::Step() {
  Renew();
  const int r = static_cast<int>(rng_() % 100);
  if (r < 30 && held_.size() + waiting_.size() < 4) {
    Submit();
  } else if (r < 60 && !waiting_.empty()) {
    Poll();
  } else if (r < 85 && !held_.empty()) {
    ReleaseOne();
  } else if (r < 88 && !waiting_.empty()) {
    Withdraw();
  } else if (r < 91) {
    Repository flex = repos_.flex;
    flex.concurrency_limit = 1 + static_cast<int32_t>(rng_() % 4);
    Context ctx = Deadline();
    (void)rec_.SetLimit(ctx, flex);
  } else if (r < 92) {
    Context ctx = Deadline();
    (void)rec_.Cleanup(ctx, repos_.scratch.Key());
    // What this worker held or queued there is gone.
    std::erase_if(held_, [&](const Held& h) {
      return h.repo.Key() == repos_.scratch.Key();
    });
    std::erase_if(waiting_, [&](const Waiting& w) {
      return w.repo.Key() == repos_.scratch.Key();
    });
  } else if (r < 94 && !held_.empty()) {
    // Stop renewing one lease: it expires while "held".
    held_[rng_() % held_.size()].neglected = true;
  } else if (r < 95 || (r < 96 && !o_.policies)) {
    Context ctx = Deadline();
    (void)rec_.Snapshot(ctx, PickRepo().Key());
  } else if (r < 96) {
    // An operator clears a queue (not scratch's, whose cleanups stand for
    // the removal of everything).
    Context ctx = Deadline();
    const Repository& repo = repos_.fixed[rng_() % 3];
    auto cleared = rec_.Clear(ctx, repo.Key());
    if (cleared.ok()) {
      std::erase_if(waiting_, [&](const Waiting& w) {
        return w.repo.Key() == repo.Key() &&
               std::find(cleared->removed.begin(), cleared->removed.end(),
                         w.run) != cleared->removed.end();
      });
    }
  } else if (held_.size() + waiting_.size() < 4) {
    Submit();
  }
}

void Worker::Submit() {
  Repository repo = PickRepo();
  AcquireOptions o;
  // Creation times from 20 seconds: runs tie on purpose.
  o.creation_time = absl::FromUnixMicros(o_.base_creation_us) +
                    absl::Seconds(static_cast<int64_t>(rng_() % 20));
  o.enqueue = rng_() % 5 != 0;
  if (repo.name == repos_.flex.name) o.keep_recorded_limit = true;
  if (repo.name == repos_.adopt.name && rng_() % 2 == 0) {
    o.adopt_running = true;
  }
  if (o_.policies && !o.adopt_running) {
    // Groups shared by every worker: their runs supersede each other
    // across processes, and half of their submits cancel the running ones.
    if (rng_() % 2 == 0) {
      o.group = absl::StrCat("g", rng_() % 3);
      o.cancel_running = rng_() % 2 == 0;
    }
    if (rng_() % 5 == 0) {
      o.max_queue_time = absl::Milliseconds(200 + rng_() % 2800);
    }
  }
  const std::string run = NewRun();
  Context ctx = Deadline();
  auto r = rec_.Acquire(ctx, repo, run, o);
  if (!r.ok()) return;  // unknown or refused: the drain settles it
  if (r->acquired) {
    held_.push_back(
        Held{repo, run, r->lease.lease_id, absl::Now() + o_.ttl / 3, false});
  } else if (r->position > 0) {
    AcquireOptions poll = o;
    poll.enqueue = false;
    poll.adopt_running = false;
    waiting_.push_back(Waiting{repo, run, poll});
  }
}

void Worker::Poll() {
  const size_t i = rng_() % waiting_.size();
  Waiting w = waiting_[i];
  Context ctx = Deadline();
  auto r = rec_.Acquire(ctx, w.repo, w.run, w.options);
  if (!r.ok()) {
    // Cleared, superseded or timed out: it will never be admitted.
    if (IsRunRemoved(r.status())) {
      waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    return;
  }
  if (r->acquired) {
    held_.push_back(Held{w.repo, w.run, r->lease.lease_id,
                         absl::Now() + o_.ttl / 3, false});
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
  } else if (r->position == 0) {
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void Worker::Renew() {
  for (size_t i = 0; i < held_.size();) {
    Held& h = held_[i];
    if (h.neglected || absl::Now() < h.renew_at) {
      ++i;
      continue;
    }
    Context ctx = Context::WithTimeout(Context::Background(), o_.ttl / 4);
    auto r = rec_.Renew(ctx, h.repo.Key(), h.lease_id);
    if (r.ok() && r->cancel_requested) {
      // Asked to stop by a newer run of its group: it stops and releases.
      const Held stopped = h;
      held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
      Context rctx = Deadline();
      (void)rec_.Release(rctx, stopped.repo.Key(), stopped.lease_id,
                         stopped.run);
      continue;
    } else if (r.ok()) {
      h.renew_at = absl::Now() + o_.ttl / 3;
    } else if (IsLeaseLost(r.status())) {
      held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    } else {
      h.renew_at = absl::Now() + absl::Milliseconds(100);
    }
    ++i;
  }
}

void Worker::ReleaseOne() {
  const size_t i = rng_() % held_.size();
  const Held h = held_[i];
  held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
  const bool by_key = rng_() % 10 < 3;
  const int times = rng_() % 10 == 0 ? 2 : 1;
  for (int k = 0; k < times; ++k) {
    Context ctx = Deadline();
    (void)rec_.Release(ctx, h.repo.Key(), by_key ? "" : h.lease_id, h.run);
  }
}

void Worker::Withdraw() {
  const size_t i = rng_() % waiting_.size();
  const Waiting w = waiting_[i];
  waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
  Context ctx = Deadline();
  (void)rec_.Release(ctx, w.repo.Key(), "", w.run);
}

}  // namespace pac::concurrency::torture
