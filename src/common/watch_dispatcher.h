// Runs watch callbacks on one thread per driver, outside every driver lock,
// so a callback may call back into the driver and a slow callback never
// delays a release. Shared by all drivers.
#ifndef PAC_SRC_COMMON_WATCH_DISPATCHER_H_
#define PAC_SRC_COMMON_WATCH_DISPATCHER_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "pac/concurrency/driver.h"
#include "src/common/mutex.h"

namespace pac::concurrency::internal {

// One registered watch.
struct WatcherEntry {
  WatcherEntry(std::string repo, WatchCallback cb)
      : repository_key(std::move(repo)), callback(std::move(cb)) {}
  const std::string repository_key;
  const WatchCallback callback;
  std::atomic<bool> stopped{false};
  std::mutex call_mu;  // held while the callback runs
  std::atomic<std::thread::id> calling{};
  int64_t context_callback_id = 0;

  // Marks the entry stopped and waits for a running callback to return,
  // unless called from inside that callback.
  void StopAndWait();
};

using PendingEvents =
    std::vector<std::pair<std::shared_ptr<WatcherEntry>, WatchEvent>>;

class WatchDispatcher {
 public:
  WatchDispatcher();
  ~WatchDispatcher();
  WatchDispatcher(const WatchDispatcher&) = delete;
  WatchDispatcher& operator=(const WatchDispatcher&) = delete;

  // Queues callbacks; returns at once.
  void Post(PendingEvents events);
  // Drops queued events and joins the thread. Idempotent.
  void Shutdown();

 private:
  void Loop();

  Mutex mu_;
  CondVar cv_;
  std::deque<std::pair<std::shared_ptr<WatcherEntry>, WatchEvent>> queue_
      PAC_GUARDED_BY(mu_);
  bool shutdown_ PAC_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// A WatchHandle that stops a WatcherEntry and runs `on_stop` (which
// unregisters it from its driver) once.
class EntryWatchHandle final : public WatchHandle {
 public:
  EntryWatchHandle(std::shared_ptr<WatcherEntry> entry, Context ctx,
                   std::function<void()> on_stop)
      : entry_(std::move(entry)),
        ctx_(std::move(ctx)),
        on_stop_(std::move(on_stop)) {}
  ~EntryWatchHandle() override { Stop(); }
  void Stop() override;

 private:
  std::shared_ptr<WatcherEntry> entry_;
  Context ctx_;
  std::function<void()> on_stop_;
  std::once_flag once_;
};

// Ties `entry` to `ctx` (cancelling the context stops the entry) and returns
// the handle that stops it and runs `unregister` once.
std::unique_ptr<WatchHandle> MakeWatchHandle(
    const Context& ctx, std::shared_ptr<WatcherEntry> entry,
    std::function<void()> unregister);

// Watchers by repository behind one mutex: the registry of the drivers whose
// events arrive from a backend (PostgreSQL, etcd). The memory driver keeps
// its watchers in its shards instead, under the lock it already holds.
// Thread-safe; handles must be destroyed before the registry.
class WatcherRegistry {
 public:
  std::unique_ptr<WatchHandle> Add(const Context& ctx, std::string repo_key,
                                   WatchCallback callback);
  // Appends `type` for every watcher of `repo_key` to `out` (`reason`:
  // kRemoved's).
  void Collect(const std::string& repo_key, WatchEventType type,
               const std::string& run_key, PendingEvents* out,
               std::string_view reason = "");
  // Appends `type` (with each watcher's repository) for every watcher.
  void CollectAll(WatchEventType type, PendingEvents* out);
  // Stops and forgets every watcher (driver Close).
  void StopAll();

 private:
  Mutex mu_;
  std::map<std::string, std::vector<std::shared_ptr<WatcherEntry>>> watchers_
      PAC_GUARDED_BY(mu_);
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_COMMON_WATCH_DISPATCHER_H_
