// pac-torture: runs workers against one backend while injecting faults,
// records every call (history.h), drains the queues, and checks the
// history offline (checker.h). docs/testing.md says what it injects and
// checks.
//
//   pac-torture --backend memory|postgresql|etcd [--workers 4]
//               [--seconds 20] [--seed S] [--ttl 3s] [--out DIR]
//               [--mixed] [--etcd-members 3]
//               [--expect-calls N] [--expect-faults N]
//   pac-torture --check --out DIR   # check a recorded history again
//
// PostgreSQL: the server of scripts/pg-test-server.sh (PAC_TEST_PG_*; its
// restart, kill and start-again commands are the backend faults). etcd: a
// cluster of the torture's own (--etcd-members, 3 by default;
// tests/conformance/etcd_process.h) whose members, leader or all are
// killed and started again, and which is compacted. Workers are processes
// of this binary (--worker), each reaching every backend endpoint through
// TCP forwarders of its own that the torture cuts or stalls; on the memory
// driver they are threads beside one driver, and a "kill" abandons a
// worker's leases. --mixed: every second worker calls a `pac-concurrency
// serve` of its own over HTTP, which reaches the backend through the
// forwarders and is itself killed and paused. Faults may overlap (at most one
// per worker and one on the backend at a time). Exit 0: no violation; 1:
// violations (each printed with its window of history); 2: the run itself
// failed.
#include <cstdio>
#include <filesystem>
#include <random>

#include "CLI/CLI.hpp"
#include "pac/concurrency/concurrency.h"
#include "src/torture/torture.h"

int main(int argc, char** argv) {
  using pac::concurrency::torture::Flags;
  Flags f;
  CLI::App app{"pac-torture: random calls and faults, then a history check"};
  app.add_option("--backend", f.backend, "memory, postgresql or etcd")
      ->capture_default_str();
  app.add_option("--workers", f.workers, "Worker processes (threads on memory)")
      ->capture_default_str();
  app.add_option("--seconds", f.seconds, "How long faults are injected")
      ->capture_default_str();
  app.add_option("--expect-calls", f.expect_calls,
                 "Fail (exit 2) if the history has fewer calls");
  app.add_option("--expect-faults", f.expect_faults,
                 "Fail (exit 2) if fewer faults of any kind were injected");
  app.add_flag("--mixed", f.mixed,
               "PostgreSQL and etcd: every second worker calls a `serve` "
               "process of its own over HTTP instead of a driver");
  app.add_option("--serve-binary", f.serve_binary,
                 "The pac-concurrency binary for --mixed (default: the one "
                 "beside this program)");
  app.add_option("--etcd-members", f.etcd_members,
                 "Members of the etcd cluster the torture starts")
      ->capture_default_str()
      ->check(CLI::Range(1, 7));
  app.add_flag("--policies", f.policies,
               "Queue policies on: supersede groups shared by the workers "
               "(half with cancel_running), queue time limits and clears");
  app.add_option("--seed", f.seed, "Random seed (0: a random one, printed)");
  app.add_option("--ttl", f.ttl_text, "Lease TTL")->capture_default_str();
  app.add_option("--out", f.out,
                 "Directory for the history (default: a new "
                 "one under /tmp)");
  bool check_only = false;
  app.add_flag("--check", check_only,
               "Only check the history already in --out (same --ttl)");
  app.add_flag("--worker", f.worker)->group("");
  app.add_option("--tag", f.tag)->group("");
  app.add_option("--endpoint", f.endpoint)->group("");
  app.add_option("--ns", f.ns)->group("");
  app.add_option("--server", f.server)->group("");
  app.add_option("--base-creation", f.base_creation_us)->group("");
  CLI11_PARSE(app, argc, argv);
  auto ttl = pac::concurrency::ParseDuration(f.ttl_text);
  if (!ttl.ok() || *ttl < absl::Seconds(1)) {
    std::fprintf(stderr, "--ttl: a duration of at least 1s, such as 3s\n");
    return 2;
  }
  f.ttl = *ttl;
  if (f.worker) return pac::concurrency::torture::RunWorkerProcess(f);
  if (f.mixed && f.backend == "memory") {
    std::fprintf(stderr,
                 "--mixed: PostgreSQL or etcd (a server on the memory driver "
                 "would hold state of its own)\n");
    return 2;
  }
  if (f.serve_binary.empty()) {
    std::error_code ec;
    f.serve_binary =
        (std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() /
         "pac-concurrency")
            .string();
  }
  if (check_only) {
    if (f.out.empty()) {
      std::fprintf(stderr, "--check needs --out DIR\n");
      return 2;
    }
    return pac::concurrency::torture::Torture(f).CheckOnly();
  }
  if (f.seed == 0) f.seed = std::random_device{}() % 1000000 + 1;
  if (f.workers < 1) {
    std::fprintf(stderr, "--workers: at least 1\n");
    return 2;
  }
  if (f.out.empty()) {
    char tmpl[] = "/tmp/pac-torture.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return 2;
    f.out = tmpl;
  }
  return pac::concurrency::torture::Torture(f).Run();
}
