#include "src/server/export_reader.h"

#include <cctype>
#include <vector>

#include "nlohmann/json.hpp"
#include "src/common/escape.h"
#include "src/common/strings.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace pac::concurrency::server {
namespace {

using internal::Cat;

// Turns the events of a JSON or YAML parser (containers opening and
// closing, member keys, scalars) into ExportedRuns. The items are the
// objects of a top-level "items" array, or the top-level object itself
// when it has none. Only the scalars at the paths the import reads are
// kept.
class RunCollector {
 public:
  // A PipelineRun is a few levels deep; deeper input is refused (it
  // crashed the whole-document parser once: docs/api.md).
  static constexpr size_t kMaxDepth = 128;

  RunCollector(std::string_view what,
               const std::function<absl::Status(ExportedRun)>& on_run,
               const ImportLabels& labels)
      : what_(what), on_run_(on_run), labels_(labels) {}

  const absl::Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }
  // Items handed on so far; whether a List was read (it may be empty).
  size_t items() const { return items_; }
  bool saw_list() const { return saw_list_; }

  void StartContainer(bool object) {
    if (!ok()) return;
    const size_t depth = stack_.size();
    if (depth >= kMaxDepth) {
      Fail(absl::InvalidArgumentError(Cat(what_, ": nested deeper than ",
                                          kMaxDepth,
                                          " levels (not a kubectl export)")));
      return;
    }
    if (object && depth == 0) {
      // The root: a List, or the run itself (decided at its end).
      Begin(1);
    } else if (!object && depth == 1 && stack_[0].object &&
               stack_[0].key == "items") {
      if (saw_list_) {
        Fail(absl::InvalidArgumentError(Cat(what_, ": items given twice")));
        return;
      }
      // A List: its items are the runs, not the root.
      in_list_ = saw_list_ = true;
      item_depth_ = 0;
    } else if (object && depth == 2 && in_list_ && stack_[0].key == "items" &&
               !stack_[1].object) {
      Begin(3);
    }
    stack_.push_back({object, "", 0});
  }

  void EndContainer() {
    if (!ok() || stack_.empty()) return;
    const size_t depth = stack_.size();
    // The end of a status.conditions[i] object of the item.
    if (item_depth_ > 0 && depth == item_depth_ + 3 && Rel(0) == "status" &&
        Rel(1) == "conditions" && cond_type_ == "Succeeded") {
      run_.succeeded = cond_status_;
    }
    if (item_depth_ > 0 && depth == item_depth_ + 3) {
      cond_type_.clear();
      cond_status_.clear();
    }
    stack_.pop_back();
    if (depth == item_depth_) Finish();
    if (depth == 2 && in_list_) in_list_ = false;
    if (!stack_.empty() && !stack_.back().object) ++stack_.back().index;
  }

  void Key(std::string key) {
    if (!ok() || stack_.empty()) return;
    stack_.back().key = std::move(key);
  }

  // A string, or another scalar (a JSON number, true, null: never a value
  // the import reads).
  void Scalar(const std::string& value, bool is_string) {
    if (!ok()) return;
    if (item_depth_ > 0 && is_string) Keep(value);
    if (!stack_.empty() && !stack_.back().object) ++stack_.back().index;
  }

  // The end of the input (of one YAML document).
  void EndDocument() {
    stack_.clear();
    item_depth_ = 0;
    in_list_ = false;
  }

  void Fail(absl::Status s) {
    if (ok()) status_ = std::move(s);
  }

 private:
  struct Frame {
    bool object;
    std::string key;  // the member being read (objects)
    size_t index;     // the element being read (arrays)
  };

  void Begin(size_t depth) {
    item_depth_ = depth;
    run_ = ExportedRun();
    kind_.clear();
    cond_type_.clear();
    cond_status_.clear();
  }

  // The key at level `i` below the item (its member, then deeper).
  const std::string& Rel(size_t i) const {
    static const std::string kNone;
    const size_t at = item_depth_ - 1 + i;
    return at < stack_.size() && stack_[at].object ? stack_[at].key : kNone;
  }

  void Keep(const std::string& v) {
    const size_t rel = stack_.size() - (item_depth_ - 1);
    const std::string& k0 = Rel(0);
    if (rel == 1) {
      if (k0 == "kind") kind_ = v;
      return;
    }
    const std::string& k1 = Rel(1);
    if (rel == 2) {
      if (k0 == "metadata") {
        if (k1 == "name") run_.name = v;
        if (k1 == "namespace") run_.ns = v;
        if (k1 == "creationTimestamp") run_.created = v;
      } else if (k0 == "spec" && k1 == "status") {
        run_.spec_status = v;
      }
      return;
    }
    const std::string& k2 = Rel(2);
    if (rel == 3 && k0 == "metadata" && k1 == "labels") {
      if (k2 == kStateKey) run_.state_label = v;
      if (k2 == kRepositoryKey) run_.repository_label = v;
      if (k2 == kManagedByKey) run_.managed_by = v;
      if (!labels_.group.empty() && k2 == labels_.group) {
        run_.group_label_value = v;
      }
      if (!labels_.priority.empty() && k2 == labels_.priority) {
        run_.priority_label_value = v;
      }
    } else if (rel == 3 && k0 == "metadata" && k1 == "annotations") {
      if (k2 == kStateKey) run_.state_annotation = v;
      if (k2 == kRepositoryKey) run_.repository_annotation = v;
      if (k2 == kExecutionOrderKey) run_.execution_order = v;
    } else if (rel == 4 && k0 == "status" && k1 == "conditions") {
      const std::string& k3 = Rel(3);
      if (k3 == "type") cond_type_ = v;
      if (k3 == "status") cond_status_ = v;
    }
  }

  void Finish() {
    const size_t n = items_++;
    item_depth_ = 0;
    const std::string where = in_list_ ? Cat(what_, ": items[", n, "]")
                                       : Cat(what_, ": object ", n + 1);
    if (!kind_.empty() && kind_ != "PipelineRun") {
      Fail(absl::InvalidArgumentError(Cat(
          where, ": wrong kind ", internal::EscapeBytes(kind_.substr(0, 64)),
          " (expected PipelineRun",
          kind_ == "Repository" ? "; Repository manifests go to "
                                  "--repositories"
                                : "",
          ")")));
      return;
    }
    if (run_.name.empty() || run_.ns.empty()) {
      Fail(absl::InvalidArgumentError(
          Cat(where, run_.name.empty() ? "" : Cat(" (", run_.name, ")"),
              ": no metadata.", run_.name.empty() ? "name" : "namespace",
              " (export with kubectl get pipelineruns -A)")));
      return;
    }
    Fail(on_run_(std::move(run_)));
  }

  const std::string what_;
  const std::function<absl::Status(ExportedRun)>& on_run_;
  const ImportLabels labels_;
  absl::Status status_;
  std::vector<Frame> stack_;
  size_t item_depth_ = 0;  // stack depth of the item object; 0: none
  bool in_list_ = false, saw_list_ = false;
  size_t items_ = 0;
  ExportedRun run_;
  std::string kind_, cond_type_, cond_status_;
};

// nlohmann's SAX interface onto a RunCollector.
class JsonSax {
 public:
  explicit JsonSax(RunCollector& c) : c_(c) {}
  bool null() { return Scalar("", false); }
  bool boolean(bool) { return Scalar("", false); }
  bool number_integer(int64_t) { return Scalar("", false); }
  bool number_unsigned(uint64_t) { return Scalar("", false); }
  bool number_float(double, const std::string&) { return Scalar("", false); }
  bool string(std::string& s) { return Scalar(s, true); }
  bool binary(std::vector<uint8_t>&) { return Scalar("", false); }
  bool start_object(size_t) {
    c_.StartContainer(true);
    return c_.ok();
  }
  bool end_object() {
    c_.EndContainer();
    return c_.ok();
  }
  bool start_array(size_t) {
    c_.StartContainer(false);
    return c_.ok();
  }
  bool end_array() {
    c_.EndContainer();
    return c_.ok();
  }
  bool key(std::string& k) {
    c_.Key(std::move(k));
    return c_.ok();
  }
  bool parse_error(size_t position, const std::string&,
                   const nlohmann::detail::exception& e) {
    std::string why = e.what();
    if (size_t at = why.find("syntax error"); at != std::string::npos) {
      why = why.substr(at);
    }
    error = Cat("not valid JSON at byte ", position, ": ",
                internal::EscapeBytes(why.substr(0, 200)));
    return false;
  }
  std::string error;

 private:
  bool Scalar(const std::string& v, bool is_string) {
    c_.Scalar(v, is_string);
    return c_.ok();
  }
  RunCollector& c_;
};

// yaml-cpp's events onto a RunCollector: in a map, scalars alternate
// between key and value.
class YamlEvents final : public YAML::EventHandler {
 public:
  explicit YamlEvents(RunCollector& c) : c_(c) {}
  void OnDocumentStart(const YAML::Mark&) override { events_ = 0; }
  void OnDocumentEnd() override { c_.EndDocument(); }
  void OnNull(const YAML::Mark&, YAML::anchor_t) override { Value(""); }
  // (A null value reads as "", which the import treats as absent.)
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override { Value(""); }
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string& value) override {
    Value(value);
  }
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Open(false);
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Open(true);
  }
  void OnMapEnd() override { Close(); }
  size_t events() const { return events_; }

 private:
  void Value(const std::string& v) {
    ++events_;
    if (!maps_.empty() && maps_.back() && expect_key_.back()) {
      c_.Key(v);
      expect_key_.back() = false;
      return;
    }
    c_.Scalar(v, /*is_string=*/true);
    if (!maps_.empty() && maps_.back()) expect_key_.back() = true;
  }
  void Open(bool map) {
    ++events_;
    // A container as a key (never in kubectl output) reads as no key.
    if (!maps_.empty() && maps_.back() && expect_key_.back()) c_.Key("");
    c_.StartContainer(map);
    maps_.push_back(map);
    expect_key_.push_back(true);
  }
  void Close() {
    ++events_;
    c_.EndContainer();
    maps_.pop_back();
    expect_key_.pop_back();
    if (!maps_.empty() && maps_.back()) expect_key_.back() = true;
  }
  RunCollector& c_;
  std::vector<bool> maps_, expect_key_;
  size_t events_ = 0;
};

absl::Status ReadYaml(std::istream& in, std::string_view what,
                      RunCollector& collector) {
  try {
    YAML::Parser parser(in);
    YamlEvents events(collector);
    // yaml-cpp returns empty documents forever on some malformed input (a
    // stray ',' at the top level; found by fuzz/manifest_fuzz): no real
    // export has a thousand empty documents in a row.
    int empty_in_a_row = 0;
    while (parser.HandleNextDocument(events)) {
      if (!collector.ok()) return collector.status();
      empty_in_a_row = events.events() <= 1 ? empty_in_a_row + 1 : 0;
      if (empty_in_a_row > 1000) {
        return absl::InvalidArgumentError(
            Cat(what,
                ": not valid YAML (a thousand empty documents in a row; "
                "a stray ',' at the top level?)"));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        Cat(what, ": neither JSON nor valid YAML (line ", e.mark.line + 1,
            ", column ", e.mark.column + 1, ": ", e.msg,
            "; give kubectl get pipelineruns -A -o json or -o yaml)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ReadPipelineRunExport(
    std::istream& in, std::string_view what,
    const std::function<absl::Status(ExportedRun)>& on_run,
    const ImportLabels& labels) {
  RunCollector collector(what, on_run, labels);
  // JSON starts with '{' or '['; anything else is read as YAML.
  int c = in.peek();
  while (c != EOF && std::isspace(c)) {
    in.get();
    c = in.peek();
  }
  if (c == EOF) {
    return absl::InvalidArgumentError(Cat(what, ": empty input"));
  }
  if (c == '{' || c == '[') {
    JsonSax sax(collector);
    const bool parsed = nlohmann::json::sax_parse(
        in, &sax, nlohmann::json::input_format_t::json, /*strict=*/true);
    if (!collector.ok()) return collector.status();
    if (!parsed) {
      return absl::InvalidArgumentError(
          Cat(what, ": ", sax.error.empty() ? "not valid JSON" : sax.error,
              " (give kubectl get pipelineruns -A -o json or -o yaml)"));
    }
  } else {
    if (absl::Status s = ReadYaml(in, what, collector); !s.ok()) return s;
  }
  if (!collector.ok()) return collector.status();
  if (collector.items() == 0 && !collector.saw_list()) {
    return absl::InvalidArgumentError(
        Cat(what,
            ": neither a JSON nor a YAML List or object of PipelineRuns (give "
            "kubectl get pipelineruns -A -o json or -o yaml)"));
  }
  return absl::OkStatus();
}
}  // namespace pac::concurrency::server
