#include "src/server/manifests.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "pac/concurrency/driver.h"
#include "src/common/strings.h"
#include "src/server/api.h"
#include "yaml-cpp/yaml.h"

namespace pac::concurrency::server {

using internal::Cat;

namespace {

// The annotation naming the shared limits a Repository draws from
// (docs/policies.md, "Shared limits"): comma-separated names.
constexpr char kSharedLimitsAnnotation[] = "pac-concurrency.dev/shared-limits";

absl::Status AddRepository(const YAML::Node& doc, int index,
                           std::vector<Repository>* out,
                           std::vector<SharedLimitsNote>* shared) {
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
      if (absl::Status s = AddRepository(item, index, out, shared); !s.ok()) {
        return s;
      }
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
  }
  if (absl::Status s = ValidateRepository(repo); !s.ok()) {
    return absl::InvalidArgumentError(
        Cat(where, " (", repo.Key(), "): ", std::string(s.message())));
  }
  const YAML::Node notes = meta["annotations"];
  if (shared != nullptr && notes && notes.IsMap() &&
      notes[kSharedLimitsAnnotation]) {
    const YAML::Node v = notes[kSharedLimitsAnnotation];
    const std::string field =
        Cat(where, " (", repo.Key(), "): metadata.annotations[",
            kSharedLimitsAnnotation, "]");
    if (!v.IsScalar()) {
      return absl::InvalidArgumentError(
          Cat(field, ": comma-separated shared limit names"));
    }
    std::vector<std::string> names;
    for (absl::string_view part :
         absl::StrSplit(v.as<std::string>(), ',', absl::SkipWhitespace())) {
      std::string name(absl::StripAsciiWhitespace(part));
      if (absl::Status s = ValidateSharedLimitName(name, field); !s.ok()) {
        return s;
      }
      names.push_back(std::move(name));
    }
    std::sort(names.begin(), names.end());
    if (std::adjacent_find(names.begin(), names.end()) != names.end()) {
      return absl::InvalidArgumentError(Cat(field, ": a name given twice"));
    }
    shared->push_back(SharedLimitsNote{repo.Key(), std::move(names)});
  }
  out->push_back(std::move(repo));
  return absl::OkStatus();
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
    std::string_view yaml, std::vector<SharedLimitsNote>* shared) {
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
      if (absl::Status s = AddRepository(doc, index, &out, shared); !s.ok()) {
        return s;
      }
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

absl::StatusOr<std::vector<std::string>> MergeGlobalRepository(
    std::vector<Repository>& repos, std::string_view global) {
  std::vector<std::string> notes;
  if (global == "none") return notes;
  const Repository* from = nullptr;
  if (!global.empty()) {
    if (absl::Status s = ValidateKey(global, "global repository"); !s.ok()) {
      return s;
    }
    for (const Repository& r : repos) {
      if (r.Key() == global) from = &r;
    }
    if (from == nullptr) {
      return absl::InvalidArgumentError(
          Cat("global repository ", global,
              ": not among the Repository manifests given"));
    }
  } else {
    std::vector<const Repository*> found;
    for (const Repository& r : repos) {
      if (r.name == kDefaultGlobalRepositoryName) found.push_back(&r);
    }
    if (found.size() > 1) {
      std::string keys;
      for (const Repository* r : found) {
        keys += (keys.empty() ? "" : ", ") + r->Key();
      }
      notes.push_back(Cat("several Repositories are named ",
                          kDefaultGlobalRepositoryName, " (", keys,
                          "): none used as the global Repository; name it with "
                          "--global-repository"));
      return notes;
    }
    if (found.empty()) return notes;
    from = found[0];
  }
  const std::string key = from->Key();
  const std::optional<int32_t> limit = from->concurrency_limit;
  if (!limit.has_value()) {
    notes.push_back(
        Cat("global Repository ", key, " sets no concurrency_limit"));
    return notes;
  }
  size_t merged = 0;
  for (Repository& r : repos) {
    if (!r.concurrency_limit.has_value() && r.Key() != key) {
      r.concurrency_limit = limit;
      ++merged;
    }
  }
  notes.push_back(Cat("global Repository ", key, ": its concurrency_limit ",
                      *limit, " given to ", merged,
                      " Repositories that set none"));
  return notes;
}

}  // namespace pac::concurrency::server
