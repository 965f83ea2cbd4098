// Reading a `kubectl get pipelineruns` export as a stream, for `import`:
// JSON (a List or one object) or YAML (a List, or one object per
// document), from any std::istream (a file, or stdin for "-"). Only the
// fields the import reads are kept (ExportedRun); the rest of each
// object (managedFields, spec, status) is passed over without being held,
// so memory stays flat whatever the size of the export.
#ifndef PAC_SRC_SERVER_EXPORT_READER_H_
#define PAC_SRC_SERVER_EXPORT_READER_H_

#include <functional>
#include <istream>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "src/server/import_plan.h"

namespace pac::concurrency::server {

// Calls `on_run` with each PipelineRun in order, then returns OK; or
// InvalidArgument naming `what` (the flag) and the place: input that is
// neither JSON nor YAML, an item of another kind (a Repository List given
// as PipelineRuns), a PipelineRun without a name or namespace. An error
// `on_run` returns ends the reading and is returned. The values of
// `labels`' labels are kept too.
[[nodiscard]] absl::Status ReadPipelineRunExport(
    std::istream& in, std::string_view what,
    const std::function<absl::Status(ExportedRun)>& on_run,
    const ImportLabels& labels = {});

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_EXPORT_READER_H_
