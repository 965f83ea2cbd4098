// The torture test's history: every call a worker makes, recorded twice,
// when it is invoked and when it completes, one JSON object per line
// (pac-torture writes it; the checker reads it and never asks a driver).
// A call with no completion line has an unknown outcome: it timed out, or
// its process was killed. Times are CLOCK_MONOTONIC nanoseconds, shared by
// every process on the machine.
#ifndef PAC_SRC_TORTURE_HISTORY_H_
#define PAC_SRC_TORTURE_HISTORY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pac::concurrency::torture {

enum class Phase { kInvoke, kOk, kFail };

// A lease as a call reported it.
struct Grant {
  std::string run;
  std::string lease_id;
  int64_t token = 0;
};

// One line of the history. Invocation lines carry the arguments,
// completion lines (same proc and id) the answer.
struct Op {
  int64_t t_ns = 0;
  // The wall clock read with t_ns (µs since the epoch; 0: not recorded):
  // a step of it against t_ns shows in the check's report.
  int64_t wall_us = 0;
  std::string proc;  // the worker: "w3", "drain", "faults"
  int64_t id = 0;    // the call's number within its proc
  Phase phase = Phase::kInvoke;
  // acquire, release, renew, set_limit, cleanup, snapshot, clear, fault,
  // drain, shared
  std::string kind;
  std::string repo;
  // Arguments.
  std::string run;          // acquire; release by key
  std::string lease_id;     // release by id, renew
  int64_t limit = -1;       // acquire, set_limit: the limit sent (0: none)
  bool enqueue = true;      // acquire
  bool adopt = false;       // acquire with adopt_running
  int64_t creation_us = 0;  // acquire: the run's creation time (µs)
  // acquire with queue policies (docs/policies.md): its supersede group,
  // cancel_running, and its own queue time limit (µs; 0: none).
  std::string group;
  bool cancel = false;
  int64_t max_queue_us = 0;
  std::string note;  // fault: what was done; shared: the limit's name
  // shared (a shared limit set with `limit`, before any worker starts):
  // the repositories that draw from it.
  std::vector<std::string> members;
  // Answer (kOk).
  bool acquired = false;
  Grant lease;           // acquire (acquired), renew
  int64_t position = 0;  // acquire, not acquired: 0 = not queued
  bool released = false;
  bool dequeued = false;
  std::vector<Grant> admitted;      // acquire, release, set_limit
  std::vector<Grant> running;       // snapshot
  std::vector<std::string> queued;  // snapshot, in queue order; clear: the
                                    // runs it removed
  bool cancel_requested = false;    // renew: the run was asked to stop
  std::string error;                // kFail: the status code's name
  std::string removed;  // kFail of a removed run (RUN_REMOVED): the reason
};

[[nodiscard]] std::string ToJsonLine(const Op& op);
[[nodiscard]] absl::StatusOr<Op> FromJsonLine(std::string_view line);

// Reads and merges history files, sorted by time. A torn last line (a
// process killed while writing) is skipped; any other bad line is an error
// naming the file and line.
[[nodiscard]] absl::StatusOr<std::vector<Op>> ReadHistory(
    const std::vector<std::string>& paths);

// Appends lines to a file with one write(2) each, so that a process
// killed with SIGKILL leaves every line it finished.
class HistoryWriter {
 public:
  static absl::StatusOr<std::unique_ptr<HistoryWriter>> Open(
      const std::string& path);
  ~HistoryWriter();
  HistoryWriter(const HistoryWriter&) = delete;
  HistoryWriter& operator=(const HistoryWriter&) = delete;
  void Append(const Op& op);

 private:
  explicit HistoryWriter(int fd) : fd_(fd) {}
  int fd_;
};

// CLOCK_MONOTONIC now, in nanoseconds.
[[nodiscard]] int64_t MonotonicNanos();

}  // namespace pac::concurrency::torture

#endif  // PAC_SRC_TORTURE_HISTORY_H_
