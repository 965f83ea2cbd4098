// A TCP forwarder on 127.0.0.1 in front of a real server, for tests that
// need an endpoint to go away while the server stays: Close() stops
// listening and cuts every connection, as if that endpoint's machine died.
#ifndef PAC_TESTS_CONFORMANCE_TCP_FORWARDER_H_
#define PAC_TESTS_CONFORMANCE_TCP_FORWARDER_H_

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pac::concurrency::conformance {

class TcpForwarder {
 public:
  // Listens on a free port of 127.0.0.1 and forwards every connection to
  // `target` ("host:port", an IPv4 address).
  static absl::StatusOr<std::unique_ptr<TcpForwarder>> Start(
      const std::string& target);
  ~TcpForwarder();
  TcpForwarder(const TcpForwarder&) = delete;
  TcpForwarder& operator=(const TcpForwarder&) = delete;

  // "127.0.0.1:<port>".
  std::string endpoint() const;
  // Stops accepting and cuts every connection; joins the threads.
  void Close();
  // While set, bytes are read and dropped both ways and the connections
  // stay open: a path that went dead without either end being told (a
  // half-open connection, a network partition).
  void BlackHole(bool on) { black_hole_.store(on); }
  // The next bytes the server sends on any connection are not forwarded:
  // that connection is cut instead (an answer lost after the server did
  // the work, as when a connection drops after a commit).
  void CutOnNextReply() { cut_next_reply_.store(true); }
  // Every chunk read is held this long before it is passed on (a slow or
  // distant link); zero: none.
  void SetDelay(absl::Duration d) {
    delay_us_.store(absl::ToInt64Microseconds(d));
  }
  // Down: cuts every connection and refuses new ones (accepted, then
  // closed), as a server that went away; up again: forwards as before.
  void SetDown(bool down);

 private:
  TcpForwarder(int listen_fd, int port, std::string target_host,
               int target_port);
  void AcceptLoop();
  void Pump(int a, int b);

  const int listen_fd_;
  const int port_;
  const std::string target_host_;
  const int target_port_;
  std::atomic<bool> black_hole_{false};
  std::atomic<bool> cut_next_reply_{false};
  std::atomic<bool> down_{false};
  std::atomic<int64_t> delay_us_{0};
  std::mutex mu_;
  bool closed_ = false;             // guarded by mu_
  std::vector<int> fds_;            // guarded by mu_
  std::vector<std::thread> pumps_;  // guarded by mu_
  std::thread accept_thread_;
};

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_TCP_FORWARDER_H_
