// Api: the operations of the HTTP service, with JSON requests and answers.
//
// Two implementations share this interface, so the CLI behaves the same
// against a driver configuration and against a running server:
//   * Service (service.h) runs them on a Driver in this process;
//   * RemoteApi (remote_api.h) sends them to `pac-concurrency serve`.
// Request bodies and answers are the JSON documents of docs/api.md. Errors
// are absl::Status with the library's canonical codes; the HTTP layer maps
// them to status codes and back (ErrorToJson / StatusFromErrorJson).
//
// Thread-safe.
#ifndef PAC_SRC_SERVER_API_H_
#define PAC_SRC_SERVER_API_H_

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "pac/concurrency/context.h"
#include "pac/concurrency/driver.h"

namespace pac::concurrency::server {

using Json = nlohmann::json;

// A page of a listing (Api::ListRepositories).
struct ListPage {
  static constexpr size_t kMaxLimit = 10000;
  size_t limit = 0;   // at most this many repositories; 0: all
  std::string after;  // keys after this one (empty: from the first)
  // Only repositories of these namespaces (a token's; empty: every one).
  std::vector<std::string> namespaces;
};

class Api {
 public:
  virtual ~Api() = default;

  // Sets a repository's limit: body {"concurrency_limit": N}. Answers the
  // runs admitted by a raise.
  [[nodiscard]] virtual absl::StatusOr<Json> SetLimit(const Context& ctx,
                                                      std::string_view repo_key,
                                                      const Json& body) = 0;
  // Applies Pipelines-as-Code Repository manifests (YAML, several documents
  // allowed): each one's spec.concurrency_limit becomes its limit.
  [[nodiscard]] virtual absl::StatusOr<Json> ApplyManifests(
      const Context& ctx, std::string_view yaml) = 0;
  // Submits a run: body {"pipeline_run", "creation_time"?, "enqueue"?,
  // "concurrency_limit"?}. Answers {"acquired", "lease"?, "position"}.
  [[nodiscard]] virtual absl::StatusOr<Json> Submit(const Context& ctx,
                                                    std::string_view repo_key,
                                                    const Json& body) = 0;
  // Releases a run (or removes it from the queue); `lease_id` may be empty.
  [[nodiscard]] virtual absl::StatusOr<Json> Release(
      const Context& ctx, std::string_view repo_key, std::string_view run_key,
      std::string_view lease_id) = 0;
  [[nodiscard]] virtual absl::StatusOr<Json> Renew(
      const Context& ctx, std::string_view lease_id) = 0;
  // Running and queued runs, in order, with positions and wait times.
  [[nodiscard]] virtual absl::StatusOr<Json> Status(
      const Context& ctx, std::string_view repo_key) = 0;
  // Status of every repository the backend holds a record of (a limit, a
  // running or a queued run), in key order; only those of `namespace_name`
  // when it is not empty, and one page of them: {"repositories": [...],
  // "next": key} (`next` when more follow: the `after` of the next page).
  [[nodiscard]] virtual absl::StatusOr<Json> ListRepositories(
      const Context& ctx, std::string_view namespace_name,
      const ListPage& page) = 0;
  // {"version": "0.1.0", "driver": "memory"}: this build and the backend it
  // uses (through a server: the server's).
  [[nodiscard]] virtual absl::StatusOr<Json> Version(const Context& ctx) = 0;
  // Removes every queued run of the repository (Driver::ClearQueue);
  // running runs keep their slots. Answers {"repository", "removed":
  // [runs, in admission order]}.
  [[nodiscard]] virtual absl::StatusOr<Json> ClearQueue(
      const Context& ctx, std::string_view repo_key) = 0;
  // A repository's policy (Driver::SetRepositoryPolicy): SetPolicy's body
  // is {"max_queue_seconds": N, "queue_mode": "priority", "shared_limits":
  // ["team-a"]}; a field left out keeps its recorded value, null sets the
  // default (no queue time limit, oldest-first, no shared limits). Both
  // answer {"repository", "max_queue_seconds": N or null, "queue_mode",
  // "shared_limits": [names, sorted]}.
  [[nodiscard]] virtual absl::StatusOr<Json> SetPolicy(
      const Context& ctx, std::string_view repo_key, const Json& body) = 0;
  [[nodiscard]] virtual absl::StatusOr<Json> GetPolicy(
      const Context& ctx, std::string_view repo_key) = 0;
  // Shared limits (Driver::SetSharedLimit, docs/policies.md "Shared
  // limits"): SetSharedLimit's body is {"limit": N} (0: no limit) and it
  // answers {"name", "limit"}; DeleteSharedLimit answers {"name",
  // "deleted": true}; ListSharedLimits answers {"shared_limits": [{"name",
  // "limit" (null: named by members, never set), "running", "queued",
  // "members": [repository keys]}]}.
  [[nodiscard]] virtual absl::StatusOr<Json> SetSharedLimit(
      const Context& ctx, std::string_view name, const Json& body) = 0;
  [[nodiscard]] virtual absl::StatusOr<Json> DeleteSharedLimit(
      const Context& ctx, std::string_view name) = 0;
  [[nodiscard]] virtual absl::StatusOr<Json> ListSharedLimits(
      const Context& ctx) = 0;
  // Removes every lease, queue entry and state of the repository.
  [[nodiscard]] virtual absl::StatusOr<Json> Cleanup(
      const Context& ctx, std::string_view repo_key) = 0;
  // The specification's free-form states (Driver::SetRepositoryState,
  // SetPipelineRunState, and their Get): of a repository or of a pipeline
  // run, by key. SetState's body is {"state": "..."} (ValidateState);
  // both answer {"repository" or "pipeline_run": key, "state": ...}.
  // GetState of a state never set is NotFound.
  enum class StateOf { kRepository, kPipelineRun };
  [[nodiscard]] virtual absl::StatusOr<Json> SetState(const Context& ctx,
                                                      StateOf of,
                                                      std::string_view key,
                                                      const Json& body) = 0;
  [[nodiscard]] virtual absl::StatusOr<Json> GetState(const Context& ctx,
                                                      StateOf of,
                                                      std::string_view key) = 0;
  // Rebuilds queues and running sets: body {"pipelineruns": <kubectl get
  // pipelineruns -o json>, "repositories": "<Repository manifests YAML>"}.
  [[nodiscard]] virtual absl::StatusOr<Json> Import(const Context& ctx,
                                                    const Json& body) = 0;
  // Calls `on_event` with each event of the repository ({"type",
  // "repository", "pipeline_run"}) until `ctx` ends (then returns its error)
  // or `on_event` returns false (then OK). When nothing happens for a while
  // `on_event` gets a null Json (a heartbeat, to notice a reader that left).
  // `on_ready` (optional) runs once the watch is established; returning
  // false from it ends the watch at once (OK).
  [[nodiscard]] virtual absl::Status Watch(
      const Context& ctx, std::string_view repo_key,
      const std::function<bool(const Json&)>& on_event,
      const std::function<bool()>& on_ready = nullptr) = 0;
};

// --- JSON codecs shared by the service, the HTTP layer and the CLI. ---

// Rejects members of `body` outside `allowed` (a typo must not be ignored);
// InvalidArgument when `body` is not an object.
absl::Status CheckFields(const Json& body,
                         std::initializer_list<std::string_view> allowed);

std::string FormatTimestamp(absl::Time t);
// A queue time limit in seconds (a JSON number, `field` naming it in the
// error): nullopt for null; InvalidArgument outside what
// AcquireOptions::max_queue_time allows.
// A policy's "shared_limits": an array of shared limit names (any order;
// answered sorted) or null (none). InvalidArgument naming the field else.
absl::StatusOr<std::vector<std::string>> ParseSharedLimitNames(
    const Json& value);
absl::StatusOr<std::optional<absl::Duration>> ParseQueueSeconds(
    const Json& value, std::string_view field);
// A run's priority (a JSON integer of 32 bits, `field` naming it in the
// error).
absl::StatusOr<int32_t> ParsePriority(const Json& value,
                                      std::string_view field);
// A policy as {"repository", "max_queue_seconds"}.
Json PolicyToJson(std::string_view repo_key, const RepositoryPolicy& policy);
absl::StatusOr<absl::Time> ParseTimestamp(std::string_view text,
                                          std::string_view field);
Json LeaseToJson(const Lease& lease);
// The field a state's key is named by: "repository" or "pipeline_run".
const char* StateKeyField(Api::StateOf of);
Json LeasesToJson(const std::vector<Lease>& leases);
std::string_view WatchEventTypeName(WatchEventType type);

// JSON nested deeper than this is refused before it is parsed: the
// serializer and the code that walks a document recurse, and a kubectl
// export nests about 20 deep.
inline constexpr int kMaxJsonDepth = 128;
// Parses `text` as JSON; InvalidArgument naming `what` when it is not JSON
// (invalid UTF-8 included) or nests deeper than kMaxJsonDepth.
absl::StatusOr<Json> ParseJson(std::string_view text, std::string_view what);
// `doc` as text; InvalidArgument naming `what` when a string in it is not
// valid UTF-8 (for a request about to be sent).
absl::StatusOr<std::string> DumpStrict(const Json& doc, std::string_view what);
// `doc` as text, an invalid UTF-8 byte shown as U+FFFD (for output).
std::string DumpSafe(const Json& doc, int indent = -1);

// The canonical code name ("INVALID_ARGUMENT"); "LEASE_LOST" for a lost
// lease, "RUN_REMOVED" for a run removed from its queue.
std::string ErrorCodeName(const absl::Status& status);
// {"error": {"code": ..., "message": ...}}
Json ErrorToJson(const absl::Status& status);
// The HTTP status for an error.
int HttpStatusFor(const absl::Status& status);
// The inverse of ErrorToJson (for clients); `http_status` is used when the
// body is not an error document.
absl::Status StatusFromErrorJson(int http_status, std::string_view body);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_API_H_
