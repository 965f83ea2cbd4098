// A Driver that forwards every call to another, shared one, and can be
// closed on its own: the conformance suite's "other process" on the memory
// driver (one instance holds the state), and a base for tests that step in
// between a caller and its driver (override a method, call store()).
#ifndef PAC_TESTS_CONFORMANCE_FORWARDING_DRIVER_H_
#define PAC_TESTS_CONFORMANCE_FORWARDING_DRIVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pac/concurrency/driver.h"

namespace pac::concurrency::conformance {

class ForwardingDriver : public Driver {
 public:
  explicit ForwardingDriver(std::shared_ptr<Driver> store)
      : store_(std::move(store)) {}
  std::string_view Type() const override { return store_->Type(); }
  absl::StatusOr<AcquireResult> AcquireSlot(const Context& ctx,
                                            const Repository& repo,
                                            std::string_view run,
                                            const AcquireOptions& o) override {
    if (closed_) return Closed();
    return store_->AcquireSlot(ctx, repo, run, o);
  }
  using Driver::AcquireSlot;
  absl::StatusOr<ReleaseResult> ReleaseSlot(const Context& ctx,
                                            std::string_view id,
                                            std::string_view run,
                                            std::string_view repo) override {
    if (closed_) return Closed();
    return store_->ReleaseSlot(ctx, id, run, repo);
  }
  absl::StatusOr<Lease> RenewLease(const Context& ctx,
                                   std::string_view id) override {
    if (closed_) return Closed();
    return store_->RenewLease(ctx, id);
  }
  absl::StatusOr<std::vector<Lease>> SetRepositoryLimit(
      const Context& ctx, const Repository& repo) override {
    if (closed_) return Closed();
    return store_->SetRepositoryLimit(ctx, repo);
  }
  absl::StatusOr<std::optional<int32_t>> GetRepositoryLimit(
      const Context& ctx, std::string_view repo) override {
    if (closed_) return Closed();
    return store_->GetRepositoryLimit(ctx, repo);
  }
  absl::StatusOr<std::vector<std::string>> ListRepositories(
      const Context& ctx, std::string_view ns) override {
    if (closed_) return Closed();
    return store_->ListRepositories(ctx, ns);
  }
  absl::StatusOr<int> GetCurrentSlots(const Context& ctx,
                                      std::string_view repo) override {
    if (closed_) return Closed();
    return store_->GetCurrentSlots(ctx, repo);
  }
  absl::StatusOr<std::vector<Lease>> GetRunningPipelineRuns(
      const Context& ctx, std::string_view repo) override {
    if (closed_) return Closed();
    return store_->GetRunningPipelineRuns(ctx, repo);
  }
  absl::StatusOr<std::vector<QueueEntry>> GetQueuedPipelineRuns(
      const Context& ctx, std::string_view repo) override {
    if (closed_) return Closed();
    return store_->GetQueuedPipelineRuns(ctx, repo);
  }
  absl::StatusOr<ImportResult> ImportRuns(
      const Context& ctx, const Repository& repo,
      const ImportRequest& request) override {
    if (closed_) return Closed();
    return store_->ImportRuns(ctx, repo, request);
  }
  absl::StatusOr<std::vector<ImportResult>> ImportBatch(
      const Context& ctx, const std::vector<RepositoryImport>& parts) override {
    if (closed_) return Closed();
    return store_->ImportBatch(ctx, parts);
  }
  absl::StatusOr<std::vector<RepositoryCounts>> GetRepositoryCounts(
      const Context& ctx) override {
    if (closed_) return Closed();
    return store_->GetRepositoryCounts(ctx);
  }
  ImportCapacity GetImportCapacity() override {
    return store_->GetImportCapacity();
  }
  absl::StatusOr<RepositorySnapshot> GetRepositorySnapshot(
      const Context& ctx, std::string_view repo) override {
    return store_->GetRepositorySnapshot(ctx, repo);
  }
  absl::StatusOr<std::unique_ptr<WatchHandle>> WatchSlotAvailability(
      const Context& ctx, std::string_view repo, WatchCallback cb) override {
    if (closed_) return Closed();
    return store_->WatchSlotAvailability(ctx, repo, std::move(cb));
  }
  absl::Status SetRepositoryState(const Context& ctx, const Repository& repo,
                                  std::string_view state) override {
    if (closed_) return Closed();
    return store_->SetRepositoryState(ctx, repo, state);
  }
  absl::StatusOr<std::string> GetRepositoryState(
      const Context& ctx, std::string_view repo) override {
    if (closed_) return Closed();
    return store_->GetRepositoryState(ctx, repo);
  }
  absl::Status SetPipelineRunState(const Context& ctx, std::string_view run,
                                   std::string_view state) override {
    if (closed_) return Closed();
    return store_->SetPipelineRunState(ctx, run, state);
  }
  absl::StatusOr<std::string> GetPipelineRunState(
      const Context& ctx, std::string_view run) override {
    if (closed_) return Closed();
    return store_->GetPipelineRunState(ctx, run);
  }
  absl::StatusOr<ClearQueueResult> ClearQueue(const Context& ctx,
                                              std::string_view repo) override {
    if (closed_) return Closed();
    return store_->ClearQueue(ctx, repo);
  }
  absl::Status SetRepositoryPolicy(const Context& ctx, std::string_view repo,
                                   const RepositoryPolicy& policy) override {
    if (closed_) return Closed();
    return store_->SetRepositoryPolicy(ctx, repo, policy);
  }
  absl::StatusOr<RepositoryPolicy> GetRepositoryPolicy(
      const Context& ctx, std::string_view repo) override {
    if (closed_) return Closed();
    return store_->GetRepositoryPolicy(ctx, repo);
  }
  absl::Status SetSharedLimit(const Context& ctx,
                              const SharedLimit& limit) override {
    if (closed_) return Closed();
    return store_->SetSharedLimit(ctx, limit);
  }
  absl::Status DeleteSharedLimit(const Context& ctx,
                                 std::string_view name) override {
    if (closed_) return Closed();
    return store_->DeleteSharedLimit(ctx, name);
  }
  absl::StatusOr<std::vector<SharedLimitStatus>> ListSharedLimits(
      const Context& ctx) override {
    if (closed_) return Closed();
    return store_->ListSharedLimits(ctx);
  }
  absl::Status CleanupRepository(const Context& ctx,
                                 std::string_view repo) override {
    if (closed_) return Closed();
    return store_->CleanupRepository(ctx, repo);
  }
  absl::Duration LeaseTTL() const override { return store_->LeaseTTL(); }
  absl::Status Close() override {
    closed_ = true;
    return absl::OkStatus();
  }

 protected:
  Driver& store() { return *store_; }

 private:
  static absl::Status Closed() {
    return absl::FailedPreconditionError("driver handle is closed");
  }
  std::shared_ptr<Driver> store_;
  std::atomic<bool> closed_{false};
};

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_FORWARDING_DRIVER_H_
