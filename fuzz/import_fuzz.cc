// The kubectl import: `kubectl get pipelineruns -o json` documents into
// ReadPipelineRuns and PlanImport, and the same bytes into the CLI's
// streaming reader. Every run the plan keeps has valid keys and appears
// once; each queue's times never go back; every run read is either planned
// or skipped; a trimmed run reads back the same; the streaming reader
// never crashes, and on a List both readers accept it finds the same runs.
#include <set>
#include <sstream>
#include <string>

#include "fuzz/fuzz_util.h"
#include "src/server/api.h"
#include "src/server/export_reader.h"
#include "src/server/import_plan.h"

using namespace pac::concurrency;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::istringstream in(text);
  std::vector<server::ExportedRun> streamed;
  const absl::Status read =
      server::ReadPipelineRunExport(in, "input", [&](server::ExportedRun r) {
        streamed.push_back(std::move(r));
        return absl::OkStatus();
      });
  auto doc = server::ParseJson(text, "input");
  if (!doc.ok()) return 0;
  auto runs = server::ReadPipelineRuns(*doc);
  if (!runs.ok()) return 0;
  if (read.ok() && doc->is_object() && doc->contains("items")) {
    fuzz::Check(streamed.size() == runs->size(), "both readers see every run");
    for (size_t i = 0; i < streamed.size(); ++i) {
      fuzz::Check(
          server::TrimmedJson(streamed[i]) == server::TrimmedJson((*runs)[i]),
          "both readers read a run alike");
    }
  }
  std::map<std::string, int32_t> limits;
  for (const server::ExportedRun& r : *runs) {
    const std::string repo = server::RepositoryOf(r);
    if (!repo.empty()) limits[repo] = static_cast<int32_t>(repo.size() % 3);
    auto again = server::ReadPipelineRun(server::TrimmedJson(r), "trimmed");
    fuzz::Check(
        again.ok() && server::TrimmedJson(*again) == server::TrimmedJson(r),
        "a trimmed run reads back the same");
  }
  const server::ImportPlan plan = server::PlanImport(*runs, limits);
  std::set<std::string> planned;
  for (const server::RepositoryPlan& p : plan.repositories) {
    fuzz::Check(ValidateKey(p.repository, "repository").ok(),
                "a valid repository key");
    fuzz::Check(p.limit > 0, "only limited repositories are planned");
    for (const std::string& r : p.adopt) {
      fuzz::Check(ValidateKey(r, "run").ok(), "a valid run key");
      fuzz::Check(planned.insert(r).second, "a run planned once");
    }
    for (size_t i = 0; i < p.queue.size(); ++i) {
      fuzz::Check(ValidateKey(p.queue[i].run, "run").ok(), "a valid run key");
      fuzz::Check(planned.insert(p.queue[i].run).second, "a run planned once");
      fuzz::Check(i == 0 || p.queue[i - 1].queue_time <= p.queue[i].queue_time,
                  "queue times never go back");
    }
  }
  fuzz::Check(planned.size() + plan.skipped.size() == runs->size(),
              "every run is planned or skipped");
  return 0;
}
