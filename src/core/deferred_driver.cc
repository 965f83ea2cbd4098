// The driver that connects in the background (deferred_driver.h).
#include "src/core/deferred_driver.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "src/common/mutex.h"
#include "src/common/strings.h"

namespace pac::concurrency::internal {
namespace {

class DeferredDriver final : public Driver {
 public:
  DeferredDriver(std::string type, absl::Duration lease_ttl,
                 absl::Status first_error, DriverConnector connect)
      : type_(std::move(type)),
        lease_ttl_(lease_ttl),
        connect_(std::move(connect)),
        last_error_(std::move(first_error)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~DeferredDriver() override { (void)Close(); }

  std::string_view Type() const override { return type_; }
  absl::Duration LeaseTTL() const override { return lease_ttl_; }

  absl::StatusOr<AcquireResult> AcquireSlot(
      const Context& ctx, const Repository& repo, std::string_view run,
      const AcquireOptions& options) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->AcquireSlot(ctx, repo, run, options);
  }
  using Driver::AcquireSlot;
  absl::StatusOr<ReleaseResult> ReleaseSlot(const Context& ctx,
                                            std::string_view lease_id,
                                            std::string_view run,
                                            std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->ReleaseSlot(ctx, lease_id, run, repo);
  }
  absl::StatusOr<Lease> RenewLease(const Context& ctx,
                                   std::string_view lease_id) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->RenewLease(ctx, lease_id);
  }
  absl::StatusOr<std::vector<Lease>> SetRepositoryLimit(
      const Context& ctx, const Repository& repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->SetRepositoryLimit(ctx, repo);
  }
  absl::StatusOr<ImportResult> ImportRuns(
      const Context& ctx, const Repository& repo,
      const ImportRequest& request) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->ImportRuns(ctx, repo, request);
  }
  absl::StatusOr<std::vector<ImportResult>> ImportBatch(
      const Context& ctx, const std::vector<RepositoryImport>& parts) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->ImportBatch(ctx, parts);
  }
  // Not connected yet: the least any driver takes (an import then fails
  // as Unavailable in any case).
  ImportCapacity GetImportCapacity() override {
    auto d = Get();
    if (!d.ok()) return ImportCapacity{64, 1};
    return (*d)->GetImportCapacity();
  }
  absl::StatusOr<std::vector<RepositoryCounts>> GetRepositoryCounts(
      const Context& ctx) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetRepositoryCounts(ctx);
  }
  absl::StatusOr<std::vector<RepositoryListing>> ListRepositorySnapshots(
      const Context& ctx, std::string_view ns, std::string_view after,
      size_t limit) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->ListRepositorySnapshots(ctx, ns, after, limit);
  }
  absl::StatusOr<std::optional<int32_t>> GetRepositoryLimit(
      const Context& ctx, std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetRepositoryLimit(ctx, repo);
  }
  absl::StatusOr<std::vector<std::string>> ListRepositories(
      const Context& ctx, std::string_view ns) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->ListRepositories(ctx, ns);
  }
  absl::StatusOr<int> GetCurrentSlots(const Context& ctx,
                                      std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetCurrentSlots(ctx, repo);
  }
  absl::StatusOr<std::vector<Lease>> GetRunningPipelineRuns(
      const Context& ctx, std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetRunningPipelineRuns(ctx, repo);
  }
  absl::StatusOr<std::vector<QueueEntry>> GetQueuedPipelineRuns(
      const Context& ctx, std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetQueuedPipelineRuns(ctx, repo);
  }
  absl::StatusOr<RepositorySnapshot> GetRepositorySnapshot(
      const Context& ctx, std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetRepositorySnapshot(ctx, repo);
  }
  absl::StatusOr<std::unique_ptr<WatchHandle>> WatchSlotAvailability(
      const Context& ctx, std::string_view repo,
      WatchCallback callback) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->WatchSlotAvailability(ctx, repo, std::move(callback));
  }
  absl::Status SetRepositoryState(const Context& ctx, const Repository& repo,
                                  std::string_view state) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->SetRepositoryState(ctx, repo, state);
  }
  absl::StatusOr<std::string> GetRepositoryState(
      const Context& ctx, std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetRepositoryState(ctx, repo);
  }
  absl::Status SetPipelineRunState(const Context& ctx, std::string_view run,
                                   std::string_view state) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->SetPipelineRunState(ctx, run, state);
  }
  absl::StatusOr<std::string> GetPipelineRunState(
      const Context& ctx, std::string_view run) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetPipelineRunState(ctx, run);
  }
  absl::StatusOr<ClearQueueResult> ClearQueue(const Context& ctx,
                                              std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->ClearQueue(ctx, repo);
  }
  absl::Status SetRepositoryPolicy(const Context& ctx, std::string_view repo,
                                   const RepositoryPolicy& policy) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->SetRepositoryPolicy(ctx, repo, policy);
  }
  absl::StatusOr<RepositoryPolicy> GetRepositoryPolicy(
      const Context& ctx, std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->GetRepositoryPolicy(ctx, repo);
  }
  absl::Status CleanupRepository(const Context& ctx,
                                 std::string_view repo) override {
    auto d = Get();
    if (!d.ok()) return d.status();
    return (*d)->CleanupRepository(ctx, repo);
  }

  absl::Status Close() override {
    std::shared_ptr<Driver> d;
    {
      MutexLock lock(&mu_);
      if (closed_) return absl::OkStatus();
      closed_ = true;
      d = driver_;
      cv_.NotifyAll();
    }
    if (thread_.joinable()) thread_.join();
    return d != nullptr ? d->Close() : absl::OkStatus();
  }

 private:
  absl::StatusOr<std::shared_ptr<Driver>> Get() {
    MutexLock lock(&mu_);
    if (closed_) return absl::FailedPreconditionError("driver is closed");
    if (driver_ != nullptr) return driver_;
    return absl::UnavailableError(Cat("the ", type_,
                                      " backend is not connected yet (last "
                                      "attempt: ",
                                      last_error_.message(), ")"));
  }

  void Loop() {
    absl::Duration pause = absl::Milliseconds(250);
    while (true) {
      {
        MutexLock lock(&mu_);
        const absl::Time until = absl::Now() + pause;
        while (!closed_ && absl::Now() < until) cv_.WaitUntil(&mu_, until);
        if (closed_) return;
      }
      auto d = connect_();
      MutexLock lock(&mu_);
      if (d.ok()) {
        if (closed_) {
          (void)(*d)->Close();
          return;
        }
        driver_ = std::move(*d);
        return;
      }
      last_error_ = d.status();
      pause = std::min(pause * 2, absl::Seconds(5));
    }
  }

  const std::string type_;
  const absl::Duration lease_ttl_;
  const DriverConnector connect_;
  Mutex mu_;
  CondVar cv_;
  bool closed_ PAC_GUARDED_BY(mu_) = false;
  std::shared_ptr<Driver> driver_ PAC_GUARDED_BY(mu_);
  absl::Status last_error_ PAC_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace

std::unique_ptr<Driver> NewDeferredDriver(std::string type,
                                          absl::Duration lease_ttl,
                                          absl::Status first_error,
                                          DriverConnector connect) {
  return std::make_unique<DeferredDriver>(
      std::move(type), lease_ttl, std::move(first_error), std::move(connect));
}

}  // namespace pac::concurrency::internal
