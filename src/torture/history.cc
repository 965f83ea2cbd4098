#include "src/torture/history.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pac::concurrency::torture {

using Json = nlohmann::json;

namespace {

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kInvoke:
      return "invoke";
    case Phase::kOk:
      return "ok";
    case Phase::kFail:
      return "fail";
  }
  return "?";
}

Json GrantJson(const Grant& g) {
  return Json{{"run", g.run}, {"lease", g.lease_id}, {"token", g.token}};
}

Grant GrantFrom(const Json& j) {
  return Grant{j.value("run", ""), j.value("lease", ""),
               j.value("token", int64_t{0})};
}

Json GrantsJson(const std::vector<Grant>& gs) {
  Json a = Json::array();
  for (const Grant& g : gs) a.push_back(GrantJson(g));
  return a;
}

}  // namespace

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string ToJsonLine(const Op& op) {
  Json j{{"t", op.t_ns},
         {"p", op.proc},
         {"id", op.id},
         {"ph", PhaseName(op.phase)},
         {"k", op.kind}};
  if (op.wall_us != 0) j["w"] = op.wall_us;
  if (!op.repo.empty()) j["repo"] = op.repo;
  if (op.phase == Phase::kInvoke) {
    if (!op.run.empty()) j["run"] = op.run;
    if (!op.lease_id.empty()) j["lease"] = op.lease_id;
    if (op.limit >= 0) j["limit"] = op.limit;
    if (!op.enqueue) j["enqueue"] = false;
    if (op.adopt) j["adopt"] = true;
    if (op.creation_us != 0) j["created"] = op.creation_us;
    if (!op.group.empty()) j["group"] = op.group;
    if (op.cancel) j["cancel"] = true;
    if (op.max_queue_us != 0) j["max_queue"] = op.max_queue_us;
    if (!op.note.empty()) j["note"] = op.note;
    if (!op.members.empty()) j["members"] = op.members;
  } else if (op.phase == Phase::kOk) {
    if (op.acquired) j["acquired"] = true;
    if (!op.lease.lease_id.empty()) j["grant"] = GrantJson(op.lease);
    if (op.position != 0) j["position"] = op.position;
    if (op.released) j["released"] = true;
    if (op.dequeued) j["dequeued"] = true;
    if (!op.admitted.empty()) j["admitted"] = GrantsJson(op.admitted);
    if (op.kind == "snapshot") {
      j["running"] = GrantsJson(op.running);
      j["queued"] = op.queued;
    }
    if (op.kind == "clear") j["queued"] = op.queued;
    if (op.cancel_requested) j["cancel_requested"] = true;
  } else {
    j["error"] = op.error;
    if (!op.removed.empty()) j["removed"] = op.removed;
  }
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

absl::StatusOr<Op> FromJsonLine(std::string_view line) {
  Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("history: a line is not a JSON object");
  }
  try {
    Op op;
    op.t_ns = j.at("t").get<int64_t>();
    op.proc = j.at("p").get<std::string>();
    op.id = j.at("id").get<int64_t>();
    const std::string ph = j.at("ph").get<std::string>();
    if (ph == "invoke") {
      op.phase = Phase::kInvoke;
    } else if (ph == "ok") {
      op.phase = Phase::kOk;
    } else if (ph == "fail") {
      op.phase = Phase::kFail;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("history: unknown phase \"", ph, "\""));
    }
    op.kind = j.at("k").get<std::string>();
    op.wall_us = j.value("w", int64_t{0});
    op.repo = j.value("repo", "");
    op.run = j.value("run", "");
    op.lease_id = j.value("lease", "");
    op.limit = j.value("limit", int64_t{-1});
    op.enqueue = j.value("enqueue", true);
    op.adopt = j.value("adopt", false);
    op.creation_us = j.value("created", int64_t{0});
    op.group = j.value("group", "");
    op.cancel = j.value("cancel", false);
    op.max_queue_us = j.value("max_queue", int64_t{0});
    op.note = j.value("note", "");
    op.members = j.value("members", std::vector<std::string>{});
    op.acquired = j.value("acquired", false);
    if (j.contains("grant")) op.lease = GrantFrom(j["grant"]);
    op.position = j.value("position", int64_t{0});
    op.released = j.value("released", false);
    op.dequeued = j.value("dequeued", false);
    if (j.contains("admitted")) {
      for (const Json& g : j["admitted"]) op.admitted.push_back(GrantFrom(g));
    }
    if (j.contains("running")) {
      for (const Json& g : j["running"]) op.running.push_back(GrantFrom(g));
    }
    if (j.contains("queued")) {
      op.queued = j["queued"].get<std::vector<std::string>>();
    }
    op.error = j.value("error", "");
    op.removed = j.value("removed", "");
    op.cancel_requested = j.value("cancel_requested", false);
    return op;
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "history: a line has a missing or wrong field: ", e.what()));
  }
}

absl::StatusOr<std::vector<Op>> ReadHistory(
    const std::vector<std::string>& paths) {
  std::vector<Op> all;
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(absl::StrCat("history: cannot read ", path));
    }
    std::string line;
    int number = 0;
    while (std::getline(in, line)) {
      ++number;
      if (line.empty()) continue;
      auto op = FromJsonLine(line);
      if (!op.ok()) {
        // The last line of a killed process may be cut off.
        if (in.peek() == EOF) break;
        return absl::InvalidArgumentError(
            absl::StrCat(path, ":", number, ": ", op.status().message()));
      }
      all.push_back(*std::move(op));
    }
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const Op& a, const Op& b) { return a.t_ns < b.t_ns; });
  return all;
}

absl::StatusOr<std::unique_ptr<HistoryWriter>> HistoryWriter::Open(
    const std::string& path) {
  int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("history: cannot open ", path, " for writing"));
  }
  return std::unique_ptr<HistoryWriter>(new HistoryWriter(fd));
}

HistoryWriter::~HistoryWriter() { ::close(fd_); }

void HistoryWriter::Append(const Op& op) {
  std::string line = ToJsonLine(op);
  line += '\n';
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace pac::concurrency::torture
