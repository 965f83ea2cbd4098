#include "src/server/manifests.h"

#include <algorithm>
#include <tuple>

#include "src/common/strings.h"
#include "src/server/api.h"
#include "yaml-cpp/yaml.h"

namespace pac::concurrency::server {

using internal::Cat;

namespace {

absl::Status AddRepository(const YAML::Node& doc, int index,
                           std::vector<Repository>* out) {
  const std::string where = Cat("document ", index + 1);
  if (!doc.IsMap())
    return absl::InvalidArgumentError(Cat(where, ": not a map"));
  if (doc["kind"] && doc["kind"].IsScalar() &&
      doc["kind"].as<std::string>() == "List") {
    const YAML::Node items = doc["items"];
    if (!items || !items.IsSequence()) {
      return absl::InvalidArgumentError(Cat(where, ": List without items"));
    }
    for (const YAML::Node& item : items) {
      if (absl::Status s = AddRepository(item, index, out); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (!doc["kind"] || !doc["kind"].IsScalar() ||
      doc["kind"].as<std::string>() != "Repository") {
    return absl::InvalidArgumentError(
        Cat(where, ": kind must be Repository (pipelinesascode.tekton.dev)"));
  }
  const YAML::Node meta = doc["metadata"];
  if (!meta || !meta.IsMap() || !meta["name"] || !meta["namespace"] ||
      !meta["name"].IsScalar() || !meta["namespace"].IsScalar()) {
    return absl::InvalidArgumentError(
        Cat(where, ": metadata.name and metadata.namespace are required"));
  }
  Repository repo;
  repo.ns = meta["namespace"].as<std::string>();
  repo.name = meta["name"].as<std::string>();
  const YAML::Node spec = doc["spec"];
  if (spec && spec.IsMap() && spec["concurrency_limit"]) {
    const YAML::Node l = spec["concurrency_limit"];
    int64_t v = -1;
    if (!l.IsScalar() || !YAML::convert<int64_t>::decode(l, v) || v < 0 ||
        v > INT32_MAX) {
      return absl::InvalidArgumentError(
          Cat(where, " (", repo.Key(),
              "): spec.concurrency_limit must be a non-negative integer"));
    }
    repo.concurrency_limit = static_cast<int32_t>(v);
  } else {
    repo.concurrency_limit = 0;
  }
  if (absl::Status s = ValidateRepository(repo); !s.ok()) {
    return absl::InvalidArgumentError(
        Cat(where, " (", repo.Key(), "): ", std::string(s.message())));
  }
  out->push_back(std::move(repo));
  return absl::OkStatus();
}

const nlohmann::json* Member(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

std::string StringMember(const nlohmann::json& obj, const char* key) {
  const nlohmann::json* v = Member(obj, key);
  return v != nullptr && v->is_string() ? v->get<std::string>() : "";
}

// The documents of a YAML stream, split at "---" lines (a line that is
// "---" alone or followed by a space keeps what follows on it), with the
// line each starts on. yaml-cpp's LoadAll is not used: on a stray flow
// entry at the top level (a line starting with ',') it loops forever,
// allocating (found by fuzz/manifest_fuzz: 181 bytes took 10 GB).
std::vector<std::pair<std::string_view, int>> SplitDocuments(
    std::string_view text) {
  std::vector<std::pair<std::string_view, int>> docs;
  size_t start = 0;
  int start_line = 1;
  int line = 1;
  size_t at = 0;
  while (at <= text.size()) {
    size_t nl = text.find('\n', at);
    const size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view l = text.substr(at, end - at);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    const bool marker = l.substr(0, 3) == "---" &&
                        (l.size() == 3 || l[3] == ' ' || l[3] == '\t');
    const bool doc_end = l == "...";
    if (marker || doc_end) {
      docs.emplace_back(text.substr(start, at - start), start_line);
      start = marker && l.size() > 3 ? at + 4 : end + 1;
      start_line = marker && l.size() > 3 ? line : line + 1;
      if (start > text.size()) start = text.size();
    }
    if (nl == std::string_view::npos) break;
    at = nl + 1;
    ++line;
  }
  docs.emplace_back(text.substr(std::min(start, text.size())), start_line);
  return docs;
}

}  // namespace

absl::StatusOr<std::vector<Repository>> ParseRepositoryManifests(
    std::string_view yaml) {
  std::vector<YAML::Node> docs;
  for (const auto& [text, first_line] : SplitDocuments(yaml)) {
    try {
      docs.push_back(YAML::Load(std::string(text)));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          Cat("Repository manifest: not valid YAML (line ",
              first_line + e.mark.line, "): ", e.msg));
    }
  }
  std::vector<Repository> out;
  int index = 0;
  for (const YAML::Node& doc : docs) {
    if (!doc || doc.IsNull()) {
      ++index;
      continue;
    }
    try {
      if (absl::Status s = AddRepository(doc, index, &out); !s.ok()) return s;
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(
          Cat("Repository manifest document ", index + 1, ": ", e.msg));
    }
    ++index;
  }
  if (out.empty()) {
    return absl::InvalidArgumentError("Repository manifest: no Repository");
  }
  return out;
}

absl::StatusOr<PipelineRunScan> ParsePipelineRuns(const nlohmann::json& doc) {
  std::vector<const nlohmann::json*> items;
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("pipelineruns: must be a JSON object");
  }
  if (const nlohmann::json* list = Member(doc, "items"); list != nullptr) {
    if (!list->is_array()) {
      return absl::InvalidArgumentError("pipelineruns.items: must be an array");
    }
    for (const auto& item : *list) items.push_back(&item);
  } else {
    items.push_back(&doc);
  }
  PipelineRunScan scan;
  std::vector<ImportedRun> queued;
  for (size_t i = 0; i < items.size(); ++i) {
    const nlohmann::json& pr = *items[i];
    const nlohmann::json* meta = Member(pr, "metadata");
    const std::string ns = meta ? StringMember(*meta, "namespace") : "";
    const std::string name = meta ? StringMember(*meta, "name") : "";
    const std::string run_key = Cat(ns, "/", name);
    const nlohmann::json* ann = meta ? Member(*meta, "annotations") : nullptr;
    const std::string state = ann ? StringMember(*ann, kStateAnnotation) : "";
    const std::string repo =
        ann ? StringMember(*ann, kRepositoryAnnotation) : "";
    if (repo.empty()) {
      scan.skipped.emplace_back(run_key, "no repository annotation");
      continue;
    }
    if (state != "started" && state != "queued") {
      scan.skipped.emplace_back(run_key, state.empty() ? "no state annotation"
                                                       : Cat("state ", state));
      continue;
    }
    ImportedRun run;
    run.run_key = run_key;
    run.repository_key = Cat(ns, "/", repo);
    run.running = state == "started";
    if (absl::Status s = ValidateKey(run.run_key, "pipeline_run"); !s.ok()) {
      scan.skipped.emplace_back(run_key, std::string(s.message()));
      continue;
    }
    if (absl::Status s = ValidateKey(run.repository_key, "repository");
        !s.ok()) {
      scan.skipped.emplace_back(run_key, std::string(s.message()));
      continue;
    }
    auto created = ParseTimestamp(StringMember(*meta, "creationTimestamp"),
                                  Cat(run_key, ": metadata.creationTimestamp"));
    if (!created.ok()) {
      scan.skipped.emplace_back(run_key,
                                std::string(created.status().message()));
      continue;
    }
    run.creation_time = *created;
    const std::string order =
        ann ? StringMember(*ann, kExecutionOrderAnnotation) : "";
    int pos = 0;
    size_t start = 0;
    while (start <= order.size() && !order.empty()) {
      size_t comma = order.find(',', start);
      std::string part =
          order.substr(start, comma == std::string::npos ? std::string::npos
                                                         : comma - start);
      if (part == run_key || part == name) {
        run.order = pos;
        break;
      }
      ++pos;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (run.running) {
      scan.runs.push_back(std::move(run));
    } else {
      queued.push_back(std::move(run));
    }
  }
  auto key = [](const ImportedRun& r) {
    return std::tie(r.creation_time, r.order, r.run_key);
  };
  std::stable_sort(scan.runs.begin(), scan.runs.end(),
                   [&](const ImportedRun& a, const ImportedRun& b) {
                     return key(a) < key(b);
                   });
  std::stable_sort(queued.begin(), queued.end(),
                   [&](const ImportedRun& a, const ImportedRun& b) {
                     return key(a) < key(b);
                   });
  for (auto& q : queued) scan.runs.push_back(std::move(q));
  return scan;
}

}  // namespace pac::concurrency::server
