// etcd 3.4 nodes (Debian's /usr/bin/etcd, or $ETCD) that a test owns: a
// single node (EtcdProcess) or a cluster (EtcdCluster), started on free
// 127.0.0.1 ports in data directories of their own, so the test can kill a
// node with SIGKILL and start it again on the same directory and ports (a
// node restart) without disturbing the shared test servers.
#ifndef PAC_TESTS_CONFORMANCE_ETCD_PROCESS_H_
#define PAC_TESTS_CONFORMANCE_ETCD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pac::concurrency::conformance {

// A 127.0.0.1 TCP port nothing listens on (just bound and closed), or -1.
int FreePort();
// True once something accepts TCP connections on 127.0.0.1:`port`.
bool Listening(int port);

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

// A cluster of `n` members (names m0..m<n-1>) in one temporary directory.
// Not thread-safe: one thread drives it.
class EtcdCluster {
 public:
  // Starts every member and waits until each answers (at most `timeout`).
  static absl::StatusOr<std::unique_ptr<EtcdCluster>> Start(
      int members, absl::Duration timeout = absl::Seconds(30));
  // Kills every member and removes the directory.
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  int size() const { return static_cast<int>(members_.size()); }
  // "127.0.0.1:<client port>" of every member, in member order.
  std::vector<std::string> endpoints() const;
  bool running(int i) const { return members_[i].pid > 0; }
  // SIGKILL to member i, then waits for the process to be gone.
  void Kill(int i);
  // Starts member i again on its directory and ports; returns once it
  // answers a request (which needs a quorum of the others), or an error
  // after `timeout`.
  absl::Status Restart(int i, absl::Duration timeout = absl::Seconds(20));
  // Kills every member / starts every stopped member again and waits until
  // each answers.
  void KillAll();
  absl::Status RestartAll(absl::Duration timeout = absl::Seconds(30));
  // The member that is the raft leader now (from each running member's
  // etcd_server_is_leader metric), or -1 if none says so within `timeout`.
  int Leader(absl::Duration timeout = absl::Seconds(5)) const;

 private:
  struct Member {
    std::string name, dir;
    int client_port = -1, peer_port = -1;
    pid_t pid = -1;
  };
  explicit EtcdCluster(std::string dir) : dir_(std::move(dir)) {}
  absl::Status Spawn(Member& m);
  absl::Status WaitAnswers(Member& m, absl::Time give_up);

  const std::string dir_;
  std::string initial_cluster_;
  std::vector<Member> members_;
};

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_ETCD_PROCESS_H_
