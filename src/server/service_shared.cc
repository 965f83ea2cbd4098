// The service's shared limits (docs/policies.md, "Shared limits"): set,
// delete and list them over the driver, and say which one holds a
// repository's queue (waiting_for).
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/server/service.h"

namespace pac::concurrency::server {

using internal::Cat;

absl::StatusOr<Json> Service::SetSharedLimit(const Context& ctx,
                                             std::string_view name,
                                             const Json& body) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckFields(body, {"limit"}); !s.ok()) return s;
  auto it = body.find("limit");
  if (it == body.end() || !it->is_number_integer() || it->get<int64_t>() < 0 ||
      it->get<int64_t>() > INT32_MAX) {
    return absl::InvalidArgumentError(
        "limit: required, an integer from 0 (no limit) up");
  }
  SharedLimit limit{std::string(name),
                    static_cast<int32_t>(it->get<int64_t>())};
  if (absl::Status s = driver_->SetSharedLimit(ctx, limit); !s.ok()) {
    CountError("set_shared_limit", s);
    return s;
  }
  return Json{{"name", limit.name}, {"limit", limit.limit}};
}

absl::StatusOr<Json> Service::DeleteSharedLimit(const Context& ctx,
                                                std::string_view name) {
  if (absl::Status s = ValidateSharedLimitName(name, "name"); !s.ok()) {
    return s;
  }
  if (absl::Status s = driver_->DeleteSharedLimit(ctx, name); !s.ok()) {
    CountError("delete_shared_limit", s);
    return s;
  }
  return Json{{"name", std::string(name)}, {"deleted", true}};
}

namespace {
Json SharedLimitToJson(const SharedLimitStatus& st) {
  Json j{{"name", st.name},
         {"limit", nullptr},
         {"running", st.running},
         {"queued", st.queued},
         {"members", st.members}};
  if (st.limit.has_value()) j["limit"] = *st.limit;
  return j;
}
}  // namespace

absl::StatusOr<Json> Service::ListSharedLimits(const Context& ctx) {
  auto list = driver_->ListSharedLimits(ctx);
  if (!list.ok()) {
    CountError("list_shared_limits", list.status());
    return list.status();
  }
  Json out = Json::array();
  for (const SharedLimitStatus& st : *list)
    out.push_back(SharedLimitToJson(st));
  return Json{{"shared_limits", std::move(out)}};
}

std::optional<Json> Service::SharedHold(const Context& ctx,
                                        std::string_view repo_key,
                                        const RepositorySnapshot* snap,
                                        SharedList* limits,
                                        std::vector<std::string>* members) {
  // Given a snapshot, a repository held by its own limit needs no read.
  if (snap != nullptr && snap->limit.value_or(0) > 0 &&
      static_cast<int64_t>(snap->running.size()) >= *snap->limit) {
    return std::nullopt;
  }
  auto policy = driver_->GetRepositoryPolicy(ctx, repo_key);
  if (!policy.ok() || policy->shared_limits.empty()) return std::nullopt;
  RepositorySnapshot read;
  if (snap == nullptr) {
    auto s = driver_->GetRepositorySnapshot(ctx, repo_key);
    if (!s.ok()) return std::nullopt;
    read = *std::move(s);
    snap = &read;
  }
  // Held by its own limit: the repository_limit answer stands.
  const int32_t own = snap->limit.value_or(0);
  if (own > 0 && static_cast<int64_t>(snap->running.size()) >= own) {
    return std::nullopt;
  }
  SharedList own_list;
  if (limits == nullptr) limits = &own_list;
  if (!limits->has_value()) {
    auto list = driver_->ListSharedLimits(ctx);
    if (!list.ok()) return std::nullopt;
    *limits = *std::move(list);
  }
  for (const SharedLimitStatus& st : **limits) {
    if (!std::binary_search(policy->shared_limits.begin(),
                            policy->shared_limits.end(), st.name)) {
      continue;
    }
    if (st.limit.value_or(0) > 0 && st.running >= *st.limit) {
      if (members != nullptr) *members = st.members;
      return Json{{"reason", "shared_limit"},
                  {"shared_limit", st.name},
                  {"limit", *st.limit},
                  {"in_use", st.running},
                  {"queued", st.queued}};
    }
  }
  return std::nullopt;
}

void Service::MarkSharedHold(const Context& ctx, std::string_view repo_key,
                             const RepositorySnapshot& snap, Json& status,
                             SharedReads* reads) {
  if (snap.queued.empty()) return;
  SharedReads own;
  if (reads == nullptr) reads = &own;
  std::vector<std::string> members;
  std::optional<Json> hold =
      SharedHold(ctx, repo_key, &snap, &reads->limits, &members);
  if (!hold.has_value()) return;
  // The other members' queued runs that were queued first: the limit
  // admits the earliest queued head that fits (rule 22), so they go
  // before this repository's runs, as do the runs ahead in its own queue.
  std::vector<absl::Time> others;
  for (const std::string& m : members) {
    if (m == repo_key) continue;
    auto it = reads->enqueued.find(m);
    if (it == reads->enqueued.end()) {
      std::vector<absl::Time> times;
      if (auto s = driver_->GetRepositorySnapshot(ctx, m); s.ok()) {
        for (const QueueEntry& q : s->queued) times.push_back(q.enqueued_at);
      }
      std::sort(times.begin(), times.end());
      it = reads->enqueued.emplace(m, std::move(times)).first;
    }
    others.insert(others.end(), it->second.begin(), it->second.end());
  }
  std::sort(others.begin(), others.end());
  Json& queued = status["queued"];
  for (size_t i = 0; i < queued.size() && i < snap.queued.size(); ++i) {
    Json why = *hold;
    const int64_t ahead = queued[i]["waiting_for"]["ahead"].get<int64_t>();
    why["ahead"] = ahead;
    why["ahead_in_shared_limit"] =
        ahead + (std::lower_bound(others.begin(), others.end(),
                                  snap.queued[i].enqueued_at) -
                 others.begin());
    queued[i]["waiting_for"] = std::move(why);
  }
}

}  // namespace pac::concurrency::server
