// pac-torture's faults: which kinds, on which target, when, and how each
// heals (Torture::Chaos and its helpers; docs/testing.md lists them).
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "src/etcd/etcd_rpc.pb.h"
#include "src/etcd/grpc_etcd.h"
#include "src/torture/torture.h"
#include "tests/conformance/pg_test_env.h"

namespace pac::concurrency::torture {

absl::Duration Torture::Between(absl::Duration lo, absl::Duration hi) {
  std::uniform_int_distribution<int64_t> d(absl::ToInt64Milliseconds(lo),
                                           absl::ToInt64Milliseconds(hi));
  return absl::Milliseconds(d(rng_));
}

void Torture::Fault(const std::string& what) {
  ++faults_[what.substr(0, what.find(' '))];
  rec_->Mark("fault", what);
}

bool Torture::Busy(const std::string& target) const {
  for (const Active& a : active_) {
    if (a.target == target) return true;
  }
  return false;
}

void Torture::HealLater(const std::string& target, absl::Duration d,
                        std::function<void()> heal) {
  active_.push_back({absl::Now() + d, target, std::move(heal)});
}

void Torture::Chaos() {
  std::vector<std::string> kinds = {"kill", "stop"};
  if (processes()) {
    kinds.insert(kinds.end(),
                 {"cut", "stall", "backend-restart", "backend-kill"});
    if (f_.backend == "etcd") {
      kinds.insert(kinds.end(), {"member-kill", "leader-kill", "compact"});
    }
  }
  const absl::Time end = absl::Now() + absl::Seconds(f_.seconds);
  absl::Time next =
      absl::Now() + Between(absl::Milliseconds(300), absl::Milliseconds(1500));
  bool overlap = false;
  while (true) {
    absl::Time now = absl::Now();
    bool healed = false;
    for (size_t i = 0; i < active_.size();) {
      if (active_[i].heal_at <= now) {
        std::function<void()> heal = std::move(active_[i].heal);
        active_.erase(active_.begin() + static_cast<ptrdiff_t>(i));
        heal();
        healed = true;
      } else {
        ++i;
      }
    }
    if (healed && active_.empty()) rec_->Mark("heal", "");
    now = absl::Now();
    if (now >= end && active_.empty()) break;
    if (now < end && now >= next && (active_.empty() || overlap)) {
      Inject(kinds);
      if (active_.empty()) rec_->Mark("heal", "");
      next = absl::Now() +
             Between(absl::Milliseconds(200), absl::Milliseconds(1200));
      overlap = rng_() % 3 == 0;
      continue;
    }
    absl::Time wake = now < end ? next : absl::InfiniteFuture();
    for (const Active& a : active_) wake = std::min(wake, a.heal_at);
    absl::SleepFor(
        std::clamp(wake - now, absl::Milliseconds(1), absl::Milliseconds(100)));
  }
}

void Torture::Inject(const std::vector<std::string>& kinds) {
  int least = INT32_MAX;
  for (const std::string& k : kinds) least = std::min(least, faults_[k]);
  std::vector<std::string> pick;
  for (const std::string& k : kinds) {
    if (faults_[k] <= least + 1) pick.push_back(k);
  }
  std::shuffle(pick.begin(), pick.end(), rng_);
  for (const std::string& kind : pick) {
    const bool backend = absl::StartsWith(kind, "backend") ||
                         kind == "member-kill" || kind == "leader-kill" ||
                         kind == "compact";
    if (backend) {
      if (Busy("backend")) continue;
      BackendFault(kind);
      return;
    }
    std::vector<size_t> free;
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (!Busy(absl::StrCat("w", i))) free.push_back(i);
    }
    if (free.empty()) continue;
    WorkerFault(kind, free[rng_() % free.size()]);
    return;
  }
}

void Torture::WorkerFault(const std::string& kind, size_t i) {
  Slot& s = slots_[i];
  const std::string target = absl::StrCat("w", i);
  if (s.served && (kind == "kill" || kind == "stop") && rng_() % 2 == 0) {
    ServerFault(kind, i);
    return;
  }
  if (kind == "kill") {
    Fault(absl::StrCat("kill w", i, "g", s.generation));
    if (processes()) {
      kill(s.pid, SIGKILL);
      waitpid(s.pid, nullptr, 0);
      s.pid = -1;
    } else {
      *s.abandon = true;
      *s.stop = true;
      s.thread.join();
    }
    HealLater(target, Between(absl::Milliseconds(50), absl::Milliseconds(500)),
              [this, i] {
                if (absl::Status st = Spawn(i); !st.ok()) {
                  Broken(st.ToString());
                }
              });
  } else if (kind == "stop") {
    // Paused past its TTL or not: a holder that wakes up may have lost
    // its slot and must learn it on its next renewal.
    const absl::Duration d = Between(f_.ttl / 4, f_.ttl * 3 / 2);
    Fault(absl::StrCat("stop w", i, "g", s.generation, " for ",
                       absl::FormatDuration(d)));
    if (processes()) {
      kill(s.pid, SIGSTOP);
      HealLater(target, d, [&s] { kill(s.pid, SIGCONT); });
    } else {
      *s.pause = MonotonicNanos() + absl::ToInt64Nanoseconds(d);
      HealLater(target, d, [] {});
    }
  } else if (kind == "cut" || kind == "stall") {
    const absl::Duration d = Between(absl::Milliseconds(300), f_.ttl);
    Fault(absl::StrCat(kind, " w", i, "g", s.generation, " for ",
                       absl::FormatDuration(d)));
    for (const auto& fwd : s.fwds) {
      if (kind == "cut") {
        fwd->SetDown(true);
      } else {
        fwd->BlackHole(true);
      }
    }
    HealLater(target, d, [&s] {
      for (const auto& fwd : s.fwds) {
        fwd->SetDown(false);
        fwd->BlackHole(false);
      }
    });
  }
}

void Torture::ServerFault(const std::string& kind, size_t i) {
  Slot& s = slots_[i];
  const std::string target = absl::StrCat("w", i);
  if (kind == "kill") {
    Fault(absl::StrCat("kill s", i, "g", s.serve_generation, " (serve)"));
    kill(s.serve_pid, SIGKILL);
    waitpid(s.serve_pid, nullptr, 0);
    s.serve_pid = -1;
    HealLater(target, Between(absl::Milliseconds(50), absl::Milliseconds(500)),
              [this, i] {
                if (absl::Status st = StartServe(i); !st.ok()) {
                  Broken(st.ToString());
                }
              });
    return;
  }
  const absl::Duration d = Between(f_.ttl / 4, f_.ttl * 3 / 2);
  Fault(absl::StrCat("stop s", i, "g", s.serve_generation, " (serve) for ",
                     absl::FormatDuration(d)));
  kill(s.serve_pid, SIGSTOP);
  HealLater(target, d, [&s] { kill(s.serve_pid, SIGCONT); });
}

void Torture::BackendFault(const std::string& kind) {
  if (kind == "compact") {
    Compact();
    return;
  }
  const absl::Duration d = Between(absl::Milliseconds(200), f_.ttl / 2);
  if (f_.backend == "postgresql") {
    if (kind == "backend-restart") {
      const std::string cmd = conformance::EnvOr("PAC_TEST_PG_CTL");
      Fault("backend-restart postgresql (fast)");
      if (cmd.empty() || std::system(cmd.c_str()) != 0) {
        Broken("PostgreSQL restart failed");
      }
      return;
    }
    const std::string kill_cmd = conformance::EnvOr("PAC_TEST_PG_KILL");
    Fault(
        absl::StrCat("backend-kill postgresql for ", absl::FormatDuration(d)));
    if (kill_cmd.empty() || std::system(kill_cmd.c_str()) != 0) {
      Broken("PostgreSQL kill failed");
    }
    HealLater("backend", d, [this] {
      const std::string start = conformance::EnvOr("PAC_TEST_PG_START");
      if (start.empty() || std::system(start.c_str()) != 0) {
        Broken("PostgreSQL start failed");
      }
    });
    return;
  }
  if (kind == "backend-restart" || kind == "backend-kill") {
    // Every member at once: the whole cluster is down.
    const absl::Duration down =
        kind == "backend-restart" ? absl::ZeroDuration() : d;
    Fault(absl::StrCat(kind, " etcd (all ", etcd_->size(), " members) for ",
                       absl::FormatDuration(down)));
    etcd_->KillAll();
    HealLater("backend", down, [this] {
      if (absl::Status s = etcd_->RestartAll(); !s.ok()) {
        Broken(s.ToString());
      }
    });
    return;
  }
  // One member: the leader, or one that is not (a follower's loss
  // must cost nothing but the connections to it).
  const int leader = etcd_->Leader();
  if (leader < 0) {
    Broken("the etcd cluster has no leader");
    return;
  }
  int m = leader;
  if (kind == "member-kill") {
    if (etcd_->size() < 2) return;
    m = (leader + 1 + static_cast<int>(rng_() % (etcd_->size() - 1))) %
        etcd_->size();
  }
  Fault(absl::StrCat(kind, " etcd m", m, leader == m ? " (leader)" : "",
                     " for ", absl::FormatDuration(d)));
  etcd_->Kill(m);
  HealLater("backend", d, [this, m] {
    if (absl::Status s = etcd_->Restart(m); !s.ok()) Broken(s.ToString());
  });
}

void Torture::Compact() {
  EtcdConfig c;
  c.mode = "etcd";
  c.endpoints = etcd_->endpoints();
  auto kv = internal::NewGrpcEtcd(c, nullptr);
  if (!kv.ok()) return;
  Context ctx = Context::WithTimeout(Context::Background(), absl::Seconds(2));
  internal::etcdpb::PutRequest put;
  put.set_key("/torture-compact");
  put.set_value("x");
  auto r = (*kv)->Put(ctx, put);
  if (!r.ok()) return;
  Fault(absl::StrCat("compact etcd at ", r->header().revision()));
  (void)(*kv)->Compact(ctx, r->header().revision());
}

}  // namespace pac::concurrency::torture
