// ElasticThreadPool: the HTTP server's workers. It keeps `core` threads and
// starts more, up to `max`, when a task comes and no thread is idle; a
// thread beyond `core` that stays idle for `idle_timeout` ends. The thread
// idle for the shortest time takes the next task, so under a light load
// the others stay idle and end.
//
// Why: the HTTP server gives each connection a thread for as long as the
// connection is open, and a client that keeps connections alive between
// requests (Go's http.Client, Python's requests.Session) holds a thread
// while it says nothing. With a fixed pool, as many idle connections as
// threads made every other request wait for one of them to time out.
//
// Thread-safe. Shutdown() runs the tasks already queued, then joins every
// thread; the destructor calls it. Tasks enqueued after Shutdown() are
// dropped.
#ifndef PAC_SRC_SERVER_THREAD_POOL_H_
#define PAC_SRC_SERVER_THREAD_POOL_H_

#include <deque>
#include <functional>
#include <list>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "src/common/mutex.h"

namespace pac::concurrency::server {

class ElasticThreadPool {
 public:
  struct Options {
    int core = 4;   // threads always there (at least 1)
    int max = 256;  // threads at most (at least core)
    absl::Duration idle_timeout = absl::Seconds(10);
  };
  explicit ElasticThreadPool(Options options);
  ~ElasticThreadPool();
  ElasticThreadPool(const ElasticThreadPool&) = delete;
  ElasticThreadPool& operator=(const ElasticThreadPool&) = delete;

  void Enqueue(std::function<void()> task) PAC_EXCLUDES(mu_);
  void Shutdown() PAC_EXCLUDES(mu_);

  // Threads now, and those of them running a task.
  [[nodiscard]] int threads() const PAC_EXCLUDES(mu_);
  [[nodiscard]] int busy() const PAC_EXCLUDES(mu_);
  [[nodiscard]] int max_threads() const { return options_.max; }

 private:
  using Handle = std::list<std::thread>::iterator;
  // An idle thread, woken on its own.
  struct Idle {
    internal::CondVar cv;
    bool woken = false;  // a task was handed to it (or the pool shuts down)
  };
  void StartThreadLocked() PAC_REQUIRES(mu_);
  void Work(Handle self) PAC_EXCLUDES(mu_);
  // Joins threads that have ended (outside mu_).
  void JoinEnded() PAC_EXCLUDES(mu_);

  const Options options_;
  mutable internal::Mutex mu_;
  std::deque<std::function<void()>> tasks_ PAC_GUARDED_BY(mu_);
  std::list<std::thread> threads_ PAC_GUARDED_BY(mu_);
  std::vector<std::thread> ended_ PAC_GUARDED_BY(mu_);
  std::vector<Idle*> idle_ PAC_GUARDED_BY(mu_);  // the last idle at the back
  // Threads started or woken that have not yet taken a task.
  int pending_ PAC_GUARDED_BY(mu_) = 0;
  bool shutdown_ PAC_GUARDED_BY(mu_) = false;
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_THREAD_POOL_H_
