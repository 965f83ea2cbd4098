// A torture worker: a random mix of calls on one driver over a few
// repositories, each call recorded in the history before it is sent and
// when it answers (Recorder). Used by pac-torture, in a process of its own
// (PostgreSQL, etcd) or as a thread beside others on one driver (memory).
#ifndef PAC_SRC_TORTURE_WORKER_H_
#define PAC_SRC_TORTURE_WORKER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "pac/concurrency/driver.h"
#include "src/torture/history.h"

namespace pac::concurrency::torture {

// The repositories every worker of one run uses, under namespace `ns`.
struct TortureRepos {
  explicit TortureRepos(const std::string& ns);
  std::vector<Repository> fixed;  // limits 1, 2, 3 and 200
  Repository flex;                // its limit is changed up and down
  Repository scratch;             // cleaned up now and then
  Repository adopt;               // runs adopted above the limit
  std::vector<Repository> All() const;
};

// What a worker calls: a driver in its own process (NewDriverTarget), or a
// `pac-concurrency serve` over HTTP (NewHttpTarget, http_target.h).
class Target {
 public:
  virtual ~Target() = default;
  virtual absl::StatusOr<AcquireResult> Acquire(const Context& ctx,
                                                const Repository& repo,
                                                const std::string& run,
                                                const AcquireOptions& o) = 0;
  // By `lease_id` when it is set (`run` is then the run it was granted
  // to), else the run `run`.
  virtual absl::StatusOr<ReleaseResult> Release(const Context& ctx,
                                                const std::string& repo,
                                                const std::string& lease_id,
                                                const std::string& run) = 0;
  virtual absl::StatusOr<Lease> Renew(const Context& ctx,
                                      const std::string& repo,
                                      const std::string& lease_id) = 0;
  virtual absl::StatusOr<std::vector<Lease>> SetLimit(
      const Context& ctx, const Repository& repo) = 0;
  virtual absl::Status Cleanup(const Context& ctx, const std::string& repo) = 0;
  virtual absl::StatusOr<RepositorySnapshot> Snapshot(
      const Context& ctx, const std::string& repo) = 0;
  virtual absl::StatusOr<ClearQueueResult> Clear(const Context& ctx,
                                                 const std::string& repo) = 0;
  // Sets shared limit `limit` and makes `members` draw from it (the
  // coordinator's, before the workers start).
  virtual absl::Status Share(const Context& ctx, const SharedLimit& limit,
                             const std::vector<std::string>& members) {
    (void)ctx;
    (void)limit;
    (void)members;
    return absl::UnimplementedError("this target cannot set shared limits");
  }
};

// Calls `driver` (not owned; it outlives the target).
std::unique_ptr<Target> NewDriverTarget(Driver& driver);

// Makes calls of a Target and records each: invocation, then answer.
class Recorder {
 public:
  Recorder(Target& target, HistoryWriter& out, std::string proc)
      : target_(target), out_(out), proc_(std::move(proc)) {}

  absl::StatusOr<AcquireResult> Acquire(const Context& ctx,
                                        const Repository& repo,
                                        const std::string& run,
                                        const AcquireOptions& o);
  absl::StatusOr<ReleaseResult> Release(const Context& ctx,
                                        const std::string& repo,
                                        const std::string& lease_id,
                                        const std::string& run);
  absl::StatusOr<Lease> Renew(const Context& ctx, const std::string& repo,
                              const std::string& lease_id);
  absl::StatusOr<std::vector<Lease>> SetLimit(const Context& ctx,
                                              const Repository& repo);
  absl::Status Cleanup(const Context& ctx, const std::string& repo);
  absl::StatusOr<RepositorySnapshot> Snapshot(const Context& ctx,
                                              const std::string& repo);
  absl::StatusOr<ClearQueueResult> Clear(const Context& ctx,
                                         const std::string& repo);
  absl::Status Share(const Context& ctx, const SharedLimit& limit,
                     const std::vector<std::string>& members);
  // A call of its own kind with no driver behind it ("fault", "drain").
  void Mark(const std::string& kind, const std::string& note);

 private:
  Op Invoke(const std::string& kind, const std::string& repo);
  // Stamps `op` with both clocks and appends it as `phase`.
  void Write(Op& op, Phase phase);
  void Fail(Op op, const absl::Status& s);

  Target& target_;
  HistoryWriter& out_;
  const std::string proc_;
  int64_t next_id_ = 0;
};

struct WorkerOptions {
  std::string tag;  // in every run name: <ns>/<tag>-<n>
  absl::Duration ttl = absl::Seconds(3);
  int64_t base_creation_us = 0;  // creation times are this + 0..19 s
  uint64_t seed = 1;
  // Queue policies on (--policies): supersede groups shared by every
  // worker, some with cancel_running, queue time limits, clears.
  bool policies = false;
};

class Worker {
 public:
  Worker(Recorder& rec, const TortureRepos& repos, WorkerOptions o);
  // Calls until `stop` is set, then releases what it holds (unless
  // `abandon` is set: then it leaves everything as a killed process
  // would). `pause_until_ns`, when in the future, makes it sleep there
  // without renewing (a paused process).
  void Run(const std::atomic<bool>& stop, const std::atomic<bool>& abandon,
           const std::atomic<int64_t>& pause_until_ns);
  int64_t calls() const { return calls_; }

 private:
  struct Held {
    Repository repo;
    std::string run, lease_id;
    absl::Time renew_at;
    bool neglected = false;  // left to expire on purpose
  };
  struct Waiting {
    Repository repo;
    std::string run;
    AcquireOptions options;
  };
  void Step();
  void Submit();
  void Poll();
  void Renew();
  void ReleaseOne();
  void Withdraw();
  Context Deadline();
  Repository PickRepo();
  std::string NewRun();

  Recorder& rec_;
  const TortureRepos& repos_;
  const WorkerOptions o_;
  std::mt19937_64 rng_;
  std::vector<Held> held_;
  std::vector<Waiting> waiting_;
  int64_t runs_ = 0;
  int64_t calls_ = 0;
};

}  // namespace pac::concurrency::torture

#endif  // PAC_SRC_TORTURE_WORKER_H_
