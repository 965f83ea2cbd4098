// A single etcd 3.4 node (Debian's /usr/bin/etcd, or $ETCD) that a test owns:
// started on free 127.0.0.1 ports in a data directory of its own, so the
// test can kill it with SIGKILL and start it again on the same directory
// and ports (a node restart) without disturbing the shared test servers.
#ifndef PAC_TESTS_CONFORMANCE_ETCD_PROCESS_H_
#define PAC_TESTS_CONFORMANCE_ETCD_PROCESS_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pac::concurrency::conformance {

// A 127.0.0.1 TCP port nothing listens on (just bound and closed), or -1.
int FreePort();

class EtcdProcess {
 public:
  // Picks free ports and a temporary data directory, starts the node and
  // waits until it answers (at most `timeout`).
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> Start(
      absl::Duration timeout = absl::Seconds(20));
  // Kills the node (if running) and removes its directory.
  ~EtcdProcess();
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // "127.0.0.1:<client port>".
  std::string endpoint() const;
  // SIGKILL, then waits for the process to be gone.
  void Kill();
  // Starts the node again on the same directory and ports; returns once a
  // plain TCP connection to the client port succeeds and one request has
  // been answered (the moment it is "healthy"), or an error after
  // `timeout`.
  absl::Status Restart(absl::Duration timeout = absl::Seconds(20));

 private:
  EtcdProcess(std::string dir, int client_port, int peer_port);
  absl::Status Launch(absl::Duration timeout);

  const std::string dir_;
  const int client_port_;
  const int peer_port_;
  pid_t pid_ = -1;
};

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_ETCD_PROCESS_H_
