#include "src/torture/http_target.h"

#include "absl/strings/str_cat.h"
#include "src/server/api.h"
#include "src/server/remote_api.h"

namespace pac::concurrency::torture {
namespace {

using server::Json;

// A document of the server that does not have the documented shape is a
// failure of the call (the checker then lets it have taken effect or not).
absl::StatusOr<Lease> LeaseFrom(const Json& j) {
  if (!j.is_object() || !j.contains("lease_id") ||
      !j.contains("fencing_token")) {
    return absl::InternalError(absl::StrCat("not a lease: ", j.dump()));
  }
  Lease l;
  l.lease_id = j.value("lease_id", "");
  l.repository_key = j.value("repository", "");
  l.pipeline_run_key = j.value("pipeline_run", "");
  l.fencing_token = j["fencing_token"].get<int64_t>();
  l.cancel_requested = j.value("cancel_requested", false);
  for (auto [field, at] : {std::pair{"acquired_at", &l.acquired_at},
                           std::pair{"expires_at", &l.expires_at}}) {
    auto t = server::ParseTimestamp(j.value(field, ""), field);
    if (!t.ok()) return t.status();
    *at = *t;
  }
  return l;
}

absl::StatusOr<std::vector<Lease>> LeasesFrom(const Json& j,
                                              const char* field) {
  std::vector<Lease> out;
  if (!j.contains(field)) return out;
  if (!j[field].is_array()) {
    return absl::InternalError(absl::StrCat(field, ": not a list"));
  }
  for (const Json& e : j[field]) {
    auto l = LeaseFrom(e);
    if (!l.ok()) return l.status();
    out.push_back(*std::move(l));
  }
  return out;
}

class HttpTarget final : public Target {
 public:
  explicit HttpTarget(const std::string& url) : api_(url, "") {}

  absl::StatusOr<AcquireResult> Acquire(const Context& ctx,
                                        const Repository& repo,
                                        const std::string& run,
                                        const AcquireOptions& o) override {
    Json body = {{"pipeline_run", run}, {"enqueue", o.enqueue}};
    if (o.creation_time.has_value()) {
      body["creation_time"] = server::FormatTimestamp(*o.creation_time);
    }
    if (!o.keep_recorded_limit) {
      body["concurrency_limit"] = EffectiveLimit(repo);
    }
    if (o.adopt_running) body["state"] = "started";
    if (!o.group.empty()) body["group"] = o.group;
    if (o.cancel_running) body["cancel_running"] = true;
    if (o.max_queue_time.has_value()) {
      body["max_queue_seconds"] = absl::ToDoubleSeconds(*o.max_queue_time);
    }
    auto j = api_.Submit(ctx, repo.Key(), body);
    if (!j.ok()) return j.status();
    AcquireResult r;
    r.acquired = j->value("acquired", false);
    r.position = j->value("position", int64_t{0});
    if (r.acquired) {
      auto l = LeaseFrom(j->value("lease", Json()));
      if (!l.ok()) return l.status();
      r.lease = *std::move(l);
    }
    auto admitted = LeasesFrom(*j, "admitted");
    if (!admitted.ok()) return admitted.status();
    r.admitted = *std::move(admitted);
    return r;
  }

  absl::StatusOr<ReleaseResult> Release(const Context& ctx,
                                        const std::string& repo,
                                        const std::string& lease_id,
                                        const std::string& run) override {
    auto j = api_.Release(ctx, repo, run, lease_id);
    if (!j.ok()) return j.status();
    ReleaseResult r;
    r.released = j->value("released", false);
    r.dequeued = j->value("dequeued", false);
    auto admitted = LeasesFrom(*j, "admitted");
    if (!admitted.ok()) return admitted.status();
    r.admitted = *std::move(admitted);
    return r;
  }

  absl::StatusOr<Lease> Renew(const Context& ctx, const std::string& repo,
                              const std::string& lease_id) override {
    (void)repo;
    auto j = api_.Renew(ctx, lease_id);
    if (!j.ok()) return j.status();
    return LeaseFrom(*j);
  }

  absl::StatusOr<std::vector<Lease>> SetLimit(const Context& ctx,
                                              const Repository& repo) override {
    auto j = api_.SetLimit(ctx, repo.Key(),
                           Json{{"concurrency_limit", EffectiveLimit(repo)}});
    if (!j.ok()) return j.status();
    return LeasesFrom(*j, "admitted");
  }

  absl::Status Cleanup(const Context& ctx, const std::string& repo) override {
    return api_.Cleanup(ctx, repo).status();
  }

  absl::StatusOr<RepositorySnapshot> Snapshot(
      const Context& ctx, const std::string& repo) override {
    auto j = api_.Status(ctx, repo);
    if (!j.ok()) return j.status();
    RepositorySnapshot r;
    if (j->contains("concurrency_limit") &&
        (*j)["concurrency_limit"].is_number()) {
      r.limit = (*j)["concurrency_limit"].get<int32_t>();
    }
    auto running = LeasesFrom(*j, "running");
    if (!running.ok()) return running.status();
    r.running = *std::move(running);
    if (j->contains("queued") && (*j)["queued"].is_array()) {
      for (const Json& q : (*j)["queued"]) {
        QueueEntry e;
        e.pipeline_run_key = q.value("pipeline_run", "");
        e.position = q.value("position", int64_t{0});
        r.queued.push_back(std::move(e));
      }
    }
    return r;
  }

  absl::StatusOr<ClearQueueResult> Clear(const Context& ctx,
                                         const std::string& repo) override {
    auto j = api_.ClearQueue(ctx, repo);
    if (!j.ok()) return j.status();
    ClearQueueResult r;
    for (const Json& run : j->value("removed", Json::array())) {
      if (run.is_string()) r.removed.push_back(run.get<std::string>());
    }
    return r;
  }

 private:
  server::RemoteApi api_;
};

}  // namespace

std::unique_ptr<Target> NewHttpTarget(const std::string& url) {
  return std::make_unique<HttpTarget>(url);
}

}  // namespace pac::concurrency::torture
