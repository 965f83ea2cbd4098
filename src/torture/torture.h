// pac-torture's parts (torture_main.cc has main): the flags, the run
// (torture.cc: backend, workers and servers started and stopped, drain,
// check) and the faults (faults.cc). docs/testing.md says what it injects
// and checks.
#ifndef PAC_SRC_TORTURE_TORTURE_H_
#define PAC_SRC_TORTURE_TORTURE_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/concurrency.h"
#include "src/torture/history.h"
#include "src/torture/worker.h"
#include "tests/conformance/etcd_process.h"
#include "tests/conformance/tcp_forwarder.h"

namespace pac::concurrency::torture {

struct Flags {
  std::string backend = "memory";
  int workers = 4;
  int seconds = 20;
  int etcd_members = 3;
  // The run fails (exit 2) with fewer calls, or fewer faults of a kind.
  int64_t expect_calls = 0;
  int expect_faults = 0;
  uint64_t seed = 0;
  std::string ttl_text = "3s";
  absl::Duration ttl = absl::Seconds(3);
  std::string out;
  // A worker process (set by the torture when it starts one).
  bool worker = false;
  std::string tag, endpoint, ns;
  // Mixed mode: odd workers go through a `serve` process of their own.
  bool mixed = false;
  // Queue policies on (WorkerOptions::policies).
  bool policies = false;
  std::string serve_binary;  // default: pac-concurrency beside this binary
  std::string server;        // a worker's server URL (mixed mode)
  int64_t base_creation_us = 0;
};

// "pac-torture: <text>" on stdout.
void Say(const std::string& text);

// The driver configuration of `f.backend` reaching it at `endpoint`
// (etcd: several, comma-separated).
absl::StatusOr<DriverConfig> BackendConfig(const Flags& f,
                                           const std::string& endpoint);

// --worker: one worker process until SIGTERM.
int RunWorkerProcess(const Flags& f);

// A worker process the torture started.
struct Slot {
  pid_t pid = -1;
  int generation = 0;
  // Mixed mode, odd slots: the worker calls a `serve` process of its own,
  // which reaches the backend through the forwarders.
  bool served = false;
  pid_t serve_pid = -1;
  int serve_port = -1;
  int serve_generation = 0;
  // Process mode: one forwarder per backend endpoint.
  std::vector<std::unique_ptr<conformance::TcpForwarder>> fwds;
  // Memory mode: a thread and its controls.
  std::thread thread;
  std::unique_ptr<std::atomic<bool>> stop, abandon;
  std::unique_ptr<std::atomic<int64_t>> pause;
  std::unique_ptr<HistoryWriter> out;
  std::unique_ptr<Recorder> rec;
  std::unique_ptr<Worker> worker;
};

// One run: Run() starts the backend and the workers, injects faults
// (Chaos), stops the workers, drains the queues and checks the history.
class Torture {
 public:
  explicit Torture(Flags f) : f_(std::move(f)), rng_(f_.seed) {}

  // --check: the history already in --out, checked again.
  int CheckOnly() { return CheckHistory(); }

  int Run();

 private:
  bool processes() const { return f_.backend != "memory"; }

  absl::Status StartBackend();

  absl::Status Spawn(size_t i);

  // The forwarders' endpoints of slot `s`, comma-separated.
  static std::string Via(const Slot& s);

  // Starts `args` (args[0] is the program) with stdout and stderr
  // appended to `log`.
  static absl::StatusOr<pid_t> SpawnProcess(std::vector<std::string> args,
                                            const std::string& log);

  // Mixed mode: `pac-concurrency serve` for slot i, on its port (the same
  // across restarts), with a configuration reaching the backend through
  // the slot's forwarders; returns once it accepts connections.
  absl::Status StartServe(size_t i);

  absl::Duration Between(absl::Duration lo, absl::Duration hi);

  void Fault(const std::string& what);

  bool Busy(const std::string& target) const;

  void HealLater(const std::string& target, absl::Duration d,
                 std::function<void()> heal);

  // Faults until the time is up, then waits for the last to heal. A fault
  // starts every 0.2-1.2 s; one time in three it may start while others
  // are in effect (on another worker or the backend), else it waits for
  // them to heal. Kinds are drawn among the least injected so far, so a
  // long run has each about equally often. "heal" is marked whenever no
  // fault is in effect any more (the checker's stalled rule starts there).
  void Chaos();

  // One fault of a kind injected least so far whose target is free.
  void Inject(const std::vector<std::string>& kinds);

  void WorkerFault(const std::string& kind, size_t i);

  // The `serve` process of slot i killed (its client's calls fail until it
  // is back; the leases it granted stay with the client) or paused.
  void ServerFault(const std::string& kind, size_t i);

  void BackendFault(const std::string& kind);

  void Compact();

  void StopAll();

  // Holders are gone: release whatever runs until every queue is empty.
  void Drain();

  // The run itself went wrong (a fault could not be injected or healed):
  // its result says nothing, and it ends with status 2.
  void Broken(const std::string& why);

  int CheckHistory();

  Flags f_;
  std::mt19937_64 rng_;
  std::string target_;
  std::unique_ptr<conformance::EtcdCluster> etcd_;
  // Faults in effect: each heals at its time (Chaos).
  struct Active {
    absl::Time heal_at;
    std::string target;  // "w<i>" or "backend"
    std::function<void()> heal;
  };
  std::vector<Active> active_;
  std::unique_ptr<HistoryWriter> out_;
  std::unique_ptr<Driver> driver_;
  std::unique_ptr<Target> target_driver_;
  std::unique_ptr<Recorder> rec_;
  std::unique_ptr<TortureRepos> repos_;
  std::vector<Slot> slots_;
  std::map<std::string, int> faults_;
  bool broken_ = false;
};

}  // namespace pac::concurrency::torture

#endif  // PAC_SRC_TORTURE_TORTURE_H_
