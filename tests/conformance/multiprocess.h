// A multi-process hammer with an independent checker, for drivers whose
// backend is shared between processes (PostgreSQL, etcd).
//
// The parent forks `processes` workers. Each creates its own driver and, for
// each of its runs, queues it (creation time = now), waits until it holds a
// slot (polling AcquireSlot), holds it briefly and releases it by lease id.
// Every worker logs what it observed with CLOCK_MONOTONIC times to a file;
// the parent then checks, without asking the driver:
//
//  * limit: the intervals [grant observed, release started] of all runs,
//    which lie inside the true holding intervals, never overlap more than
//    `limit` deep;
//  * FIFO: when a release admitted run B, every run X that was already
//    queued before that release began (its enqueue had returned) and was
//    created before B, had been admitted before B (a smaller fencing token);
//  * completeness: every run was granted exactly once.
//
// With `clear_every` set, one more process clears the queue
// (Driver::ClearQueue) at that pace while the workers run, and logs the
// runs it removed; a worker whose run is refused as removed moves on to its
// next run. Then also:
//
//  * a cleared run is never granted, and never admitted by a release;
//  * every run was granted or removed, exactly once; a run refused as
//    removed was cleared; FIFO is checked among the runs never cleared.
//
// With `groups`, run j of every worker is of supersede group "g<j % 4>"
// (AcquireOptions::group): runs of a group queued at once, by any worker,
// supersede each other.
// With `max_queue`, every run has that queue time limit
// (AcquireOptions::max_queue_time): runs that wait longer time out, and no
// release admits a run after its deadline (checked with the release's
// start and the enqueue's return, which bracket the true times).
// With `priorities`, FIFO is checked in the priority order: a run admitted
// while one of a higher priority, or of the same priority and older, was
// already queued breaks it.
// A run refused as removed (superseded, timed out, or cleared) is never
// granted nor admitted by a release, and FIFO is checked among the runs
// never removed.
#ifndef PAC_TESTS_CONFORMANCE_MULTIPROCESS_H_
#define PAC_TESTS_CONFORMANCE_MULTIPROCESS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/driver.h"

namespace pac::concurrency::conformance {

struct HammerReport {
  int processes_ok = 0;
  int grants = 0;
  int queued = 0;
  int promotions = 0;
  int max_overlap = 0;
  int fifo_checks = 0;
  int fifo_violations = 0;
  int duplicate_grants = 0;
  int cleared = 0;           // runs the clearer removed
  int cleared_admitted = 0;  // removed runs granted or admitted anyway
  int removed = 0;           // runs refused as removed (cleared, superseded)
  int unaccounted = 0;       // runs neither granted nor removed once
  std::string first_problem;
};

using DriverMaker = std::function<absl::StatusOr<std::unique_ptr<Driver>>()>;

// What the hammer turns on (the file comment says what each checks).
struct HammerOptions {
  absl::Duration clear_every = absl::ZeroDuration();  // a clearer process
  bool groups = false;                                // supersede groups
  absl::Duration max_queue = absl::ZeroDuration();    // queue time limits
  // The repository's queue mode is priority (set by every worker before
  // they start), and run j of a worker has priority j % 3.
  bool priorities = false;
};

// Must be called while the process has no other threads (it forks).
HammerReport RunMultiProcessHammer(const DriverMaker& make,
                                   const std::string& repo_ns, int processes,
                                   int runs_per_process, int limit,
                                   const HammerOptions& options = {});

// For a hammer with removals (clear_every, groups or max_queue) of `runs` runs
// in all under `limit`: what it got wrong, or "" when every process finished,
// no removed run was granted or admitted, each run was granted or removed
// exactly once, more than `min_removed` were removed (`cleared` ones when
// `cleared`, else refused ones), the limit held and FIFO among the rest.
std::string RemovalProblem(const HammerReport& report, int processes, int runs,
                           int limit, int min_removed, bool cleared);

// For a hammer without removals of `runs` runs in all under `limit`: what
// it got wrong, or "" when every process finished, each run was granted
// once, the limit held, more than `min_queued` runs queued (contention
// enough to test the order), the order was checked and never broken.
std::string OrderProblem(const HammerReport& report, int processes, int runs,
                         int limit, int min_queued);

// Prints the report's counts on one line ("hammer: ..."), for the log.
void PrintHammerReport(const HammerReport& report);

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_MULTIPROCESS_H_
