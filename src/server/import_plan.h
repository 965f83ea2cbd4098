// The import's reading of PipelineRuns and its plan: which runs a
// repository adopts as running, which it queues and in what order, and
// which are skipped and why, by Pipelines-as-Code's own rules (its
// watcher's InitQueues and the execution-order annotation it writes;
// docs/migration.md has the table). Pure functions: no backend, no I/O.
#ifndef PAC_SRC_SERVER_IMPORT_PLAN_H_
#define PAC_SRC_SERVER_IMPORT_PLAN_H_

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "src/server/pooled_text.h"

namespace pac::concurrency::server {

// Pipelines-as-Code's labels and annotations on a PipelineRun.
inline constexpr char kStateKey[] = "pipelinesascode.tekton.dev/state";
inline constexpr char kRepositoryKey[] =
    "pipelinesascode.tekton.dev/repository";
inline constexpr char kExecutionOrderKey[] =
    "pipelinesascode.tekton.dev/execution-order";
inline constexpr char kManagedByKey[] = "app.kubernetes.io/managed-by";
inline constexpr char kManagedByPaC[] = "pipelinesascode.tekton.dev";
inline constexpr char kPendingStatus[] = "PipelineRunPending";

// The labels an import reads a queued run's supersede group and priority
// from (`import --group-label`, `--priority-label`; docs/migration.md);
// empty: none.
struct ImportLabels {
  std::string group;
  std::string priority;
};

// The fields of a PipelineRun the import reads; nothing else is kept.
// Fields with few distinct values are PooledText (eight bytes each): an
// import holds every run of an export at once.
struct ExportedRun {
  PooledText ns;  // few distinct: kept once (pooled_text.h)
  std::string name;
  std::string created;  // metadata.creationTimestamp as written
  PooledText state_label, state_annotation;
  PooledText repository_label, repository_annotation;
  PooledText managed_by;        // label
  std::string execution_order;  // annotation
  PooledText spec_status;       // spec.status
  PooledText succeeded;         // status of the Succeeded condition, or ""
  // The values of the ImportLabels' labels, as written ("" when absent).
  std::string group_label_value, priority_label_value;
  std::string Key() const { return ns.str() + "/" + name; }
};

// Reads one PipelineRun object (a full one as kubectl prints it, or the
// trimmed form of TrimmedJson). InvalidArgument, naming `where`, when it is
// not an object, its kind is not PipelineRun, or a field the import reads
// has the wrong type; a missing field is read as empty.
[[nodiscard]] absl::StatusOr<ExportedRun> ReadPipelineRun(
    const nlohmann::json& obj, std::string_view where,
    const ImportLabels& labels = {});

// `run` as the smallest PipelineRun object ReadPipelineRun reads back the
// same (what the CLI sends instead of the whole object).
nlohmann::json TrimmedJson(const ExportedRun& run,
                           const ImportLabels& labels = {});

// Reads a `kubectl get pipelineruns -o json` List, or one PipelineRun.
// A List whose items are another kind is refused as a whole ("wrong
// kind"), naming the kind.
[[nodiscard]] absl::StatusOr<std::vector<ExportedRun>> ReadPipelineRuns(
    const nlohmann::json& doc, const ImportLabels& labels = {});

// The repository key a run belongs to ("" when it names none): the
// repository annotation (the Repository's name as written), else the
// label (a value Kubernetes may have shortened).
std::string RepositoryOf(const ExportedRun& run);

struct QueuedRun {
  std::string run;
  // The time its queue place is kept by: the creation time of the run that
  // brought its event into the queue (all runs of one event share it and
  // keep the event's execution order by enqueue order).
  absl::Time queue_time;
  // From the labels ImportLabels names (ImportRequest::Waiting).
  std::string group;
  int32_t priority = 0;
};

struct RepositoryPlan {
  std::string repository;
  int32_t limit = 0;
  std::vector<std::string> adopt;  // started runs, in order
  std::vector<QueuedRun> queue;    // queued runs, in admission order
};

struct SkippedRun {
  std::string run;
  std::string repository;  // may be empty
  std::string reason;
};

struct ImportPlan {
  std::vector<RepositoryPlan> repositories;  // in key order
  std::vector<SkippedRun> skipped;           // in export order
  // A label and its annotation that disagree (the label was used), and
  // the like: not errors, reported.
  std::vector<std::string> notes;
  size_t runs() const;  // adopted plus queued
};

// Plans an import of `runs` (export order) given each repository's limit
// (from its manifest, else as the backend records it; a repository absent
// from `limits`, or at 0, keeps no queue: its runs are skipped, as
// Pipelines-as-Code keeps none for it).
//
// Selection: the state and the repository from the labels Pipelines-as-Code
// selects by, the annotations where a label is missing; a run whose
// app.kubernetes.io/managed-by names another manager is skipped. "started"
// runs are adopted (above the limit too: see docs/migration.md), unless
// they have finished (Succeeded True or False). "queued" runs are queued
// only while spec.status is PipelineRunPending, unfinished, and with an
// execution-order annotation. Order, per repository: the runs by
// creationTimestamp (ties: export order); each brings, in its
// execution-order annotation's order, the runs of its event not placed
// yet.
ImportPlan PlanImport(std::span<const ExportedRun* const> runs,
                      const std::map<std::string, int32_t>& limits);
ImportPlan PlanImport(const std::vector<ExportedRun>& runs,
                      const std::map<std::string, int32_t>& limits);

// One repository's plan as an entry of an import batch (`POST /v1/import`
// {"batch": [...]}; docs/api.md). `set_limit`: the batch records the limit
// (it came from a manifest) before adopting.
nlohmann::json RepositoryPlanToJson(const RepositoryPlan& p, bool set_limit);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_IMPORT_PLAN_H_
