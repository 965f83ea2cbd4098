#include "pac/concurrency/manager.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "pac/concurrency/status.h"
#include "src/common/logging.h"
#include "src/common/mutex.h"
#include "src/common/strings.h"

namespace pac::concurrency {

using internal::CondVar;
using internal::Mutex;
using internal::MutexLock;

struct Manager::Impl {
  Impl(std::unique_ptr<Driver> d, std::shared_ptr<spdlog::logger> l,
       ManagerOptions o)
      : driver(std::move(d)),
        logger(internal::OrNullLogger(std::move(l))),
        options(std::move(o)),
        clock(options.clock != nullptr ? options.clock : Clock::Real()),
        queue_manager(driver.get(), logger, Observer()) {}

  LeaseObserver Observer() {
    LeaseObserver obs;
    obs.on_granted = [this](const Lease& l) { Track(l); };
    // The QueueManager's calls hand the runs they admit to their caller
    // (RemoveAndTakeItemFromQueue returns them to be started): its own.
    obs.on_admitted = [this](const Lease& l) { Track(l); };
    obs.on_released = [this](std::string_view repo, std::string_view run) {
      UntrackByKey(repo, run);
    };
    return obs;
  }

  void Track(const Lease& lease) {
    {
      MutexLock lock(&mu);
      if (closed) return;
      tracked[lease.lease_id] = lease;
    }
    cv.NotifyAll();
  }

  // An admitted run's lease belongs to its own holder, who renews it: here
  // only if a WaitForSlot of this Manager waits for that run (it will
  // return the lease). Anybody else's expires after one TTL unless its
  // holder picks it up, so a waiter that died or gave up holds no slot
  // for longer.
  void TrackIfAwaited(const Lease& lease) {
    {
      MutexLock lock(&mu);
      if (awaited.count({lease.repository_key, lease.pipeline_run_key}) == 0) {
        return;
      }
    }
    Track(lease);
  }

  void Untrack(std::string_view lease_id) {
    MutexLock lock(&mu);
    tracked.erase(std::string(lease_id));
  }

  void UntrackByKey(std::string_view repo, std::string_view run) {
    MutexLock lock(&mu);
    for (auto it = tracked.begin(); it != tracked.end();) {
      if (it->second.repository_key == repo &&
          (run.empty() || it->second.pipeline_run_key == run)) {
        it = tracked.erase(it);
      } else {
        ++it;
      }
    }
  }

  absl::Duration RenewThreshold() const {
    return driver->LeaseTTL() * options.renew_when_remaining;
  }

  void RenewLoop() {
    while (true) {
      std::vector<Lease> due;
      {
        MutexLock lock(&mu);
        if (closed) return;
        absl::Time now = clock->Now();
        absl::Time next = absl::InfiniteFuture();
        for (const auto& [id, lease] : tracked) {
          absl::Time renew_at = lease.expires_at - RenewThreshold();
          if (renew_at <= now) {
            due.push_back(lease);
          } else {
            next = std::min(next, renew_at);
          }
        }
        if (due.empty()) {
          absl::Time deadline = absl::InfiniteFuture();
          if (next != absl::InfiniteFuture()) {
            deadline = absl::Now() + (next - now);
          }
          if (!kicked) cv.WaitUntil(&mu, deadline);
          kicked = false;
          continue;
        }
      }
      bool backoff = false;
      for (const Lease& lease : due) {
        Context ctx = Context::WithTimeout(
            Context::Background(),
            std::max(RenewThreshold() / 2, absl::Seconds(1)));
        absl::StatusOr<Lease> renewed = driver->RenewLease(ctx, lease.lease_id);
        if (renewed.ok()) {
          MutexLock lock(&mu);
          auto it = tracked.find(lease.lease_id);
          if (it != tracked.end()) it->second.expires_at = renewed->expires_at;
          continue;
        }
        if (IsLeaseLost(renewed.status())) {
          logger->error("lease of {} in {} was lost: {}",
                        lease.pipeline_run_key, lease.repository_key,
                        renewed.status().message());
          Untrack(lease.lease_id);
          if (options.on_lease_lost)
            options.on_lease_lost(lease, renewed.status());
          continue;
        }
        logger->warn("renewing the lease of {} in {} failed, will retry: {}",
                     lease.pipeline_run_key, lease.repository_key,
                     renewed.status().ToString());
        backoff = true;
      }
      // A failing backend: wait a second before trying again.
      if (backoff) {
        MutexLock lock(&mu);
        if (!closed) cv.WaitUntil(&mu, absl::Now() + absl::Seconds(1));
      }
    }
  }

  std::unique_ptr<Driver> driver;
  std::shared_ptr<spdlog::logger> logger;
  ManagerOptions options;
  Clock* clock;
  QueueManager queue_manager;

  Mutex mu;
  CondVar cv;
  std::map<std::string, Lease> tracked PAC_GUARDED_BY(mu);
  // (repository, run) of every WaitForSlot in progress.
  std::multiset<std::pair<std::string, std::string>> awaited PAC_GUARDED_BY(mu);
  bool closed PAC_GUARDED_BY(mu) = false;
  bool kicked PAC_GUARDED_BY(mu) = false;
  int clock_listener = 0;
  std::thread renew_thread;
};

Manager::Manager(std::unique_ptr<Driver> driver,
                 std::shared_ptr<spdlog::logger> logger, ManagerOptions options)
    : impl_(std::make_unique<Impl>(std::move(driver), std::move(logger),
                                   std::move(options))) {
  Impl* impl = impl_.get();
  impl->clock_listener = impl->clock->AddAdvanceListener([impl] {
    {
      MutexLock lock(&impl->mu);
      impl->kicked = true;
    }
    impl->cv.NotifyAll();
  });
  impl->renew_thread = std::thread([impl] { impl->RenewLoop(); });
}

absl::StatusOr<std::unique_ptr<Manager>> Manager::NewManager(
    const DriverConfig& config, std::shared_ptr<spdlog::logger> logger,
    ManagerOptions options) {
  DriverOptions driver_options;
  driver_options.clock = options.clock;
  driver_options.logger = logger;
  driver_options.background_cleanup = options.background_cleanup;
  auto driver = NewDriver(config, driver_options);
  if (!driver.ok()) {
    internal::OrNullLogger(logger)->error("cannot create the {} driver: {}",
                                          config.driver,
                                          driver.status().message());
    return driver.status();
  }
  return FromDriver(std::move(*driver), std::move(logger), std::move(options));
}

std::unique_ptr<Manager> Manager::FromDriver(
    std::unique_ptr<Driver> driver, std::shared_ptr<spdlog::logger> logger,
    ManagerOptions options) {
  return std::unique_ptr<Manager>(
      new Manager(std::move(driver), std::move(logger), std::move(options)));
}

Manager::~Manager() { (void)Close(); }

absl::Status Manager::Close() {
  {
    MutexLock lock(&impl_->mu);
    if (impl_->closed) return absl::OkStatus();
    impl_->closed = true;
    impl_->tracked.clear();
  }
  impl_->cv.NotifyAll();
  impl_->clock->RemoveAdvanceListener(impl_->clock_listener);
  if (impl_->renew_thread.joinable()) impl_->renew_thread.join();
  return impl_->driver->Close();
}

absl::StatusOr<AcquireResult> Manager::AcquireSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key,
    const AcquireOptions& options) {
  auto result = impl_->driver->AcquireSlot(ctx, repo, run_key, options);
  if (!result.ok()) {
    if (result.status().code() != absl::StatusCode::kInvalidArgument) {
      impl_->logger->error("acquiring a slot for {} in {} failed: {}", run_key,
                           repo.Key(), result.status().ToString());
    }
    return result;
  }
  if (result->acquired) impl_->Track(result->lease);
  for (const Lease& l : result->admitted) impl_->TrackIfAwaited(l);
  return result;
}

absl::StatusOr<Lease> Manager::WaitForSlot(
    const Context& ctx, const Repository& repo, std::string_view run_key,
    const AcquireOptions& options,
    const std::function<void(int64_t)>& on_position) {
  struct Signal {
    Mutex mu;
    CondVar cv;
    bool fired PAC_GUARDED_BY(mu) = false;
    void Fire() {
      {
        MutexLock lock(&mu);
        fired = true;
      }
      cv.NotifyAll();
    }
  };
  auto signal = std::make_shared<Signal>();
  std::unique_ptr<WatchHandle> watch;
  int64_t cancel_id = ctx.AddCancelCallback([signal] { signal->Fire(); });
  const std::string repo_key = repo.Key();
  // While it waits, a release by this Manager that admits the run keeps
  // its lease alive until this call returns it (TrackIfAwaited).
  const std::pair<std::string, std::string> key{repo_key, std::string(run_key)};
  {
    MutexLock lock(&impl_->mu);
    impl_->awaited.insert(key);
  }
  absl::Cleanup not_awaited = [&] {
    MutexLock lock(&impl_->mu);
    impl_->awaited.erase(impl_->awaited.find(key));
  };

  auto give_up = [&](absl::Status why) -> absl::Status {
    ctx.RemoveCancelCallback(cancel_id);
    watch.reset();
    // Leave nothing behind (rule 14): drop the queue entry, or the slot if
    // it was granted in the meantime.
    Context cleanup =
        Context::WithTimeout(Context::Background(), absl::Seconds(10));
    auto released = impl_->driver->ReleaseSlot(cleanup, "", run_key, repo_key);
    impl_->UntrackByKey(repo_key, run_key);
    if (released.ok()) {
      for (const Lease& l : released->admitted) impl_->TrackIfAwaited(l);
    } else {
      impl_->logger->warn("could not withdraw {} from {}: {}", run_key,
                          repo_key, released.status().ToString());
    }
    return why;
  };

  AcquireOptions opts = options;
  opts.enqueue = true;
  const absl::Duration recheck = std::clamp(
      impl_->driver->LeaseTTL() / 4, absl::Milliseconds(100), absl::Seconds(5));
  while (true) {
    if (absl::Status s = ctx.Err(); !s.ok()) return give_up(s);
    auto result = AcquireSlot(ctx, repo, run_key, opts);
    if (!result.ok()) {
      // Whatever the error, the entry is withdrawn (best effort): a waiter
      // that is gone must not be admitted later.
      return give_up(result.status());
    }
    if (result->acquired) {
      ctx.RemoveCancelCallback(cancel_id);
      return result->lease;
    }
    if (on_position) on_position(result->position);
    if (watch == nullptr) {
      auto w = impl_->driver->WatchSlotAvailability(
          ctx, repo_key, [signal](const WatchEvent&) { signal->Fire(); });
      if (!w.ok()) return give_up(w.status());
      watch = std::move(*w);
      continue;  // re-read: the slot may have freed before the watch began
    }
    MutexLock lock(&signal->mu);
    if (!signal->fired) {
      signal->cv.WaitUntil(&signal->mu,
                           std::min(ctx.deadline(), absl::Now() + recheck));
    }
    signal->fired = false;
  }
}

absl::StatusOr<ReleaseResult> Manager::ReleaseSlot(const Context& ctx,
                                                   std::string_view lease_id,
                                                   std::string_view run_key,
                                                   std::string_view repo_key) {
  auto result = impl_->driver->ReleaseSlot(ctx, lease_id, run_key, repo_key);
  if (!result.ok()) {
    impl_->logger->error("releasing {} in {} failed: {}", run_key, repo_key,
                         result.status().ToString());
    return result;
  }
  if (!lease_id.empty()) {
    impl_->Untrack(lease_id);
  } else {
    impl_->UntrackByKey(repo_key, run_key);
  }
  for (const Lease& l : result->admitted) impl_->TrackIfAwaited(l);
  return result;
}

void Manager::TrackLease(const Lease& lease) { impl_->Track(lease); }
void Manager::UntrackLease(std::string_view lease_id) {
  impl_->Untrack(lease_id);
}
size_t Manager::TrackedLeaseCount() const {
  MutexLock lock(&impl_->mu);
  return impl_->tracked.size();
}

QueueManager& Manager::GetQueueManager() { return impl_->queue_manager; }
Driver& Manager::GetDriver() { return *impl_->driver; }
std::string_view Manager::GetDriverType() const {
  return impl_->driver->Type();
}

}  // namespace pac::concurrency
