// Service: the Api run on a Driver in this process. The HTTP server wraps
// one; the CLI uses one directly when given a driver configuration.
//
// Leases handed out here are not renewed by the service: the caller renews
// them (Renew) or they expire after the driver's TTL, which is what frees
// the slot of a client that died.
//
// Thread-safe. The driver, clock and metrics must outlive the Service.
#ifndef PAC_SRC_SERVER_SERVICE_H_
#define PAC_SRC_SERVER_SERVICE_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "pac/concurrency/clock.h"
#include "pac/concurrency/driver.h"
#include "src/common/mutex.h"
#include "src/server/api.h"
#include "src/server/import_plan.h"
#include "src/server/metrics.h"

namespace pac::concurrency::server {

class Service final : public Api {
 public:
  // `metrics` may be null.
  Service(Driver* driver, Clock* clock, Metrics* metrics);

  absl::StatusOr<Json> SetLimit(const Context& ctx, std::string_view repo_key,
                                const Json& body) override;
  absl::StatusOr<Json> ApplyManifests(const Context& ctx,
                                      std::string_view yaml) override;
  absl::StatusOr<Json> Submit(const Context& ctx, std::string_view repo_key,
                              const Json& body) override;
  absl::StatusOr<Json> Release(const Context& ctx, std::string_view repo_key,
                               std::string_view run_key,
                               std::string_view lease_id) override;
  absl::StatusOr<Json> Renew(const Context& ctx,
                             std::string_view lease_id) override;
  absl::StatusOr<Json> Status(const Context& ctx,
                              std::string_view repo_key) override;
  absl::StatusOr<Json> ListRepositories(const Context& ctx,
                                        std::string_view namespace_name,
                                        const ListPage& page) override;
  absl::StatusOr<Json> Version(const Context& ctx) override;
  absl::StatusOr<Json> SetState(const Context& ctx, StateOf of,
                                std::string_view key,
                                const Json& body) override;
  absl::StatusOr<Json> GetState(const Context& ctx, StateOf of,
                                std::string_view key) override;
  absl::StatusOr<Json> ClearQueue(const Context& ctx,
                                  std::string_view repo_key) override;
  absl::StatusOr<Json> SetPolicy(const Context& ctx, std::string_view repo_key,
                                 const Json& body) override;
  absl::StatusOr<Json> GetPolicy(const Context& ctx,
                                 std::string_view repo_key) override;
  absl::StatusOr<Json> SetSharedLimit(const Context& ctx, std::string_view name,
                                      const Json& body) override;
  absl::StatusOr<Json> DeleteSharedLimit(const Context& ctx,
                                         std::string_view name) override;
  absl::StatusOr<Json> ListSharedLimits(const Context& ctx) override;
  absl::StatusOr<Json> Cleanup(const Context& ctx,
                               std::string_view repo_key) override;
  absl::StatusOr<Json> Import(const Context& ctx, const Json& body) override;
  absl::Status Watch(const Context& ctx, std::string_view repo_key,
                     const std::function<bool(const Json&)>& on_event,
                     const std::function<bool()>& on_ready) override;

  // Scrape-time gauges for every repository the backend holds (one
  // GetRepositoryCounts), and at zero for those this service has seen that
  // it no longer holds.
  std::vector<Metrics::Gauge> Gauges(const Context& ctx);
  // Whether the backend answers a read within kReadyTimeout.
  static constexpr absl::Duration kReadyTimeout = absl::Milliseconds(600);
  absl::Status Ready(const Context& ctx);

 private:
  void Seen(const std::string& repo_key);
  void NoteQueued(const std::string& repo, const std::string& run);
  // Counts each grant once (`how` unless the run waited in the queue here:
  // then "promoted", and its wait is observed).
  void NoteAdmitted(const std::vector<Lease>& leases, const char* how);
  // A run queued through this server left its queue without a slot.
  void NoteRemoved(const std::string& repo, const std::string& run,
                   std::string_view reason);
  absl::StatusOr<Json> SetLimitTo(const Context& ctx, const Repository& repo);
  // Applies import plans (service_import.cc), each with whether it records
  // its limit: as one ImportBatch (`as_one_step`) or one ImportRuns each.
  // Appends to the report's lists.
  using PlanToApply = std::pair<const RepositoryPlan*, bool>;
  absl::Status ApplyPlans(const Context& ctx,
                          const std::vector<PlanToApply>& plans,
                          bool as_one_step, Json& report);
  void CountError(const char* op, const absl::Status& s);
  // What holds the queued runs of a repository with a free slot of its
  // own: its first full shared limit, as a waiting_for object
  // (service_shared.cc); nullopt when none (or it has no shared limits).
  // `snap`: the repository's, read here when null. `limits`: the shared
  // limits as listed, read here (and kept there) when empty.
  // `members` (if given) gets the members of the limit that holds them.
  using SharedList = std::optional<std::vector<SharedLimitStatus>>;
  std::optional<Json> SharedHold(const Context& ctx, std::string_view repo_key,
                                 const RepositorySnapshot* snap,
                                 SharedList* limits = nullptr,
                                 std::vector<std::string>* members = nullptr);
  // What MarkSharedHold reads once per status or listing: the shared
  // limits, and when each member's queued runs were queued (sorted).
  struct SharedReads {
    SharedList limits;
    std::map<std::string, std::vector<absl::Time>> enqueued;
  };
  // Names the full shared limit in the waiting_for of each queued run of
  // `status` (StatusJson of `snap`), if one holds them, with how many of
  // its members' queued runs are ahead of each (ahead_in_shared_limit).
  void MarkSharedHold(const Context& ctx, std::string_view repo_key,
                      const RepositorySnapshot& snap, Json& status,
                      SharedReads* reads);

  Driver* const driver_;
  Clock* const clock_;
  Metrics* const metrics_;
  internal::Mutex mu_;
  std::set<std::string> repos_ PAC_GUARDED_BY(mu_);
  // Lease ids already counted in pac_admissions_total.
  std::set<std::string> counted_ PAC_GUARDED_BY(mu_);
  // When this service queued a run, for the wait-time histogram.
  std::map<std::pair<std::string, std::string>, absl::Time> queued_at_
      PAC_GUARDED_BY(mu_);
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_SERVICE_H_
