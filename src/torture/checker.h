// The torture test's history checker: reads what the workers recorded
// (history.h) and reports every certain violation of the contract. It never
// asks a driver, and it claims a violation only when the history proves it,
// whatever the unknown outcomes (timed-out calls, killed processes) were:
//
//   over_limit     more holders at once than any limit that could have been
//                  in force since the earliest of them was submitted;
//   over_shared_limit  more holders at once, over the repositories of a
//                  shared limit (set before the workers start), than it;
//   double_grant   one run holding two different leases at once;
//   token_reused   two leases of one repository with one fencing token;
//   token_order    a grant that certainly came after another carrying a
//                  lower token;
//   fifo           a run admitted while a run ahead of it in the queue
//                  (older creation time; equal times: queued first) was
//                  in the queue before and still there after;
//   lost_queued    a queued run gone from the queue though it was never
//                  admitted (its polls left no gap an admission could have
//                  hidden in), withdrawn or cleaned up;
//   removed_admitted  a run reported holding a slot by a call sent after
//                  it was certainly removed from its queue (refused as
//                  RUN_REMOVED, or named by a clear), with nothing that
//                  ends its record (a release by key, a cleanup, an
//                  adoption) that may have acted in between;
//   not_drained    after the drain began, a queue still not empty when the
//                  drain ended, or emptied later than the bound;
//   stalled        a worker that called within `recovery_bound` of a fault
//                  healing (a "heal" call; no other fault began meanwhile)
//                  and after it, with no call answered in between.
//
// A holder certainly holds from the first answer that reported its lease
// until the earliest of: the invocation of a release or cleanup that could
// have ended it, and the earliest moment its lease can have expired (its
// run's first submission or last renewal sent, plus the TTL, less a
// margin). Leases taken with adopt_running count for nothing (adoption may
// exceed the limit).
#ifndef PAC_SRC_TORTURE_CHECKER_H_
#define PAC_SRC_TORTURE_CHECKER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "src/torture/history.h"

namespace pac::concurrency::torture {

struct CheckOptions {
  absl::Duration ttl = absl::Seconds(2);
  // Taken off every expiry bound: clock reads and the backend's own timer.
  absl::Duration margin = absl::Milliseconds(100);
  // How long the drain may take from its start until every queue is empty.
  absl::Duration drain_bound = absl::Seconds(30);
  // How soon after a fault heals every worker must get answers again.
  absl::Duration recovery_bound = absl::Seconds(5);
};

struct Violation {
  std::string kind;  // as listed above
  std::string repo;
  std::string what;  // which runs and leases, with times
  int64_t t_ns = 0;  // where in the history
};

struct Report {
  int64_t calls = 0;
  int64_t unknown = 0;  // calls with no completion
  int64_t failed = 0;
  int64_t grants = 0;  // distinct leases reported
  int64_t faults = 0;  // "fault" calls
  // The largest step of the wall clock against CLOCK_MONOTONIC between two
  // lines of one process (lines that carry the wall time), and when: a
  // backend that times leases by the wall clock expires them early or
  // late by that much.
  int64_t clock_step_us = 0;
  int64_t clock_step_at_ns = 0;
  std::vector<Violation> violations;
};

[[nodiscard]] Report Check(const std::vector<Op>& history,
                           const CheckOptions& options);

// The lines of `history` about `repo` (and every fault) within `before` of
// `t_ns` and a little after, at most `max_lines` of them nearest to it: the
// window to read around a violation.
[[nodiscard]] std::string Window(const std::vector<Op>& history,
                                 const std::string& repo, int64_t t_ns,
                                 absl::Duration before, size_t max_lines);

}  // namespace pac::concurrency::torture

#endif  // PAC_SRC_TORTURE_CHECKER_H_
