#include "src/cli/cli.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "pac/concurrency/status.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "src/common/escape.h"
#include "src/common/keys.h"
#include "src/common/strings.h"
#include "src/server/remote_api.h"

namespace pac::concurrency::cli {

using internal::Cat;
using internal::SV;

ApiHandle::~ApiHandle() {
  service.reset();
  if (driver != nullptr) (void)driver->Close();
}

absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     std::string_view what) {
  if (path == "-") {
    // Standard input, once: a second "-" would read nothing.
    static bool stdin_read = false;
    if (stdin_read) {
      return absl::InvalidArgumentError(Cat(
          what, ": standard input (-) is already read by another argument"));
    }
    stdin_read = true;
    return std::string((std::istreambuf_iterator<char>(std::cin)),
                       std::istreambuf_iterator<char>());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        Cat(what, ": cannot read file \"", path, "\""));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path,
                                           std::string_view what) {
  auto s = ReadFile(path, what);
  if (!s.ok()) return s.status();
  std::string v = *std::move(s);
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.pop_back();
  if (v.empty())
    return absl::InvalidArgumentError(Cat(what, ": file is empty"));
  return v;
}

absl::StatusOr<DriverConfig> LoadDriverConfig(
    const std::string& path, std::map<std::string, std::string>* flat) {
  std::map<std::string, std::string> base;
  if (!path.empty()) {
    auto text = ReadFile(path, "config");
    if (!text.ok()) return text.status();
    auto f = FlattenYaml(*text);
    if (!f.ok()) return f.status();
    base = *std::move(f);
  }
  if (flat != nullptr) *flat = base;
  return ApplyEnvironment(base, [](const std::string& name) {
    const char* v = std::getenv(name.c_str());
    return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
  });
}

absl::StatusOr<std::unique_ptr<ApiHandle>> OpenApi(const GlobalOptions& g,
                                                   const Context& ctx) {
  auto h = std::make_unique<ApiHandle>();
  if (!g.config.empty()) {
    auto config = LoadDriverConfig(g.config, nullptr);
    if (!config.ok()) return config.status();
    // Connecting counts against the command's time: the backend's own
    // connect timeouts are cut to what is left of it.
    const absl::Time deadline = ctx.deadline();
    const absl::Duration left = deadline - absl::Now();
    if (deadline != absl::InfiniteFuture()) {
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError("--timeout reached");
      }
      if (config->etcd.has_value()) {
        config->etcd->dial_timeout = std::min(config->etcd->dial_timeout, left);
      }
      if (config->postgresql.has_value()) {
        config->postgresql->connection_timeout =
            std::min(config->postgresql->connection_timeout, left);
      }
    }
    auto logger = spdlog::stderr_color_mt("pac-cli");
    logger->set_level(spdlog::level::from_str(
        g.log_level.empty() ? std::string("warn") : g.log_level));
    auto driver = NewDriver(*config, DriverOptions{nullptr, logger, true});
    spdlog::drop("pac-cli");
    if (!driver.ok() && absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          Cat("--timeout reached while connecting to the ", config->driver,
              " backend (", SV(driver.status().message()), ")"));
    }
    if (!driver.ok()) return driver.status();
    h->driver = *std::move(driver);
    h->service =
        std::make_unique<server::Service>(h->driver.get(), nullptr, nullptr);
    h->api = h->service.get();
    return h;
  }
  std::string token;
  if (!g.token_file.empty()) {
    auto t = ReadSecretFile(g.token_file, "token-file");
    if (!t.ok()) return t.status();
    token = *t;
  } else if (const char* t = std::getenv("PAC_TOKEN"); t != nullptr) {
    token = t;
  }
  server::ClientTls tls{g.ca_file, g.cert_file, g.key_file};
  if (absl::Status s = tls.Validate(g.server); !s.ok()) return s;
  h->remote = std::make_unique<server::RemoteApi>(g.server, token, tls);
  h->api = h->remote.get();
  return h;
}

absl::StatusOr<Context> CommandContext(const GlobalOptions& g,
                                       absl::Duration fallback) {
  if (g.timeout.empty()) {
    if (fallback == absl::ZeroDuration()) return Context::Background();
    return Context::WithTimeout(Context::Background(), fallback);
  }
  if (g.timeout == "0" || g.timeout == "none") return Context::Background();
  auto d = ParseDuration(g.timeout);
  if (!d.ok() || *d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        Cat("--timeout: must be a positive duration such as 30s or 5m (got \"",
            g.timeout, "\")"));
  }
  return Context::WithTimeout(Context::Background(), *d);
}

int ExitCodeFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
      return kExitUsage;
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    case absl::StatusCode::kUnauthenticated:
      return kExitAuth;
    case absl::StatusCode::kDeadlineExceeded:
      return kExitTimeout;
    default:
      return kExitError;
  }
}

int Fail(const absl::Status& status) {
  std::string message(SV(status.message()));
  // The service's advice names its HTTP route; a CLI user is told the
  // command and flag instead.
  static constexpr std::string_view kLimitAdvice =
      "pass concurrency_limit (0 = unlimited) or set it first (PUT "
      "/v1/repositories/";
  if (size_t at = message.find(kLimitAdvice); at != std::string::npos) {
    const size_t key_at = at + kLimitAdvice.size();
    const std::string repo =
        message.substr(key_at, message.find(')', key_at) - key_at);
    message = Cat(message.substr(0, at),
                  "pass --limit N (0 = unlimited) or set it first with "
                  "`pac-concurrency limit --repo ",
                  repo, " N`");
  }
  std::fprintf(stderr, "error: %s: %s\n", server::ErrorCodeName(status).c_str(),
               message.c_str());
  return ExitCodeFor(status);
}

void Print(const GlobalOptions& g, const Json& doc,
           const std::function<void(const Json&)>& table) {
  if (g.output == "json" || !table) {
    std::cout << server::DumpSafe(doc, 2) << std::endl;
  } else {
    table(doc);
    std::cout.flush();
  }
}

absl::StatusOr<Json> QueueTimeFlag(std::string_view text) {
  if (text == "none") return Json(nullptr);
  absl::Duration d;
  if (!absl::ParseDuration(internal::AV(text), &d)) {
    return absl::InvalidArgumentError(
        Cat("--max-queue-time: a duration such as 90s, 30m or 1h30m, or "
            "none (got \"",
            text, "\")"));
  }
  if (absl::Status s = internal::ValidateQueueTimeLimit(d, "--max-queue-time");
      !s.ok()) {
    return s;
  }
  return Json(absl::ToDoubleSeconds(d));
}

void AddSubmitFlags(CLI::App* cmd, SubmitFlags* f, const char* limit_help) {
  cmd->add_option("--repo", f->repo, "Repository ns/name")->required();
  cmd->add_option("--run", f->run, "PipelineRun ns/name")->required();
  cmd->add_option("--limit", f->limit, limit_help);
  cmd->add_option("--creation-time", f->creation_time,
                  "The run's creation time (RFC 3339), which orders the queue");
  cmd->add_option("--group", f->group,
                  "Supersede group (a pull request, a branch): submitting "
                  "removes the group's older queued runs");
  cmd->add_option("--priority", f->priority,
                  "The run's priority: higher runs are admitted first when "
                  "the repository's queue mode is priority");
  cmd->add_option("--max-queue-time", f->max_queue_time,
                  "Leave the queue (reason timed-out) after waiting this "
                  "long, e.g. 30m (default: the repository's limit)");
  cmd->add_flag("--supersede", f->supersede,
                "With --group: also ask the group's running runs to stop "
                "(they keep their slots until they release)")
      ->needs("--group");
}

absl::StatusOr<Json> SubmitBody(const SubmitFlags& f) {
  Json body{{"pipeline_run", f.run}};
  if (f.limit >= 0) body["concurrency_limit"] = f.limit;
  if (!f.creation_time.empty()) body["creation_time"] = f.creation_time;
  if (!f.group.empty()) body["group"] = f.group;
  if (f.priority != 0) body["priority"] = f.priority;
  if (f.supersede) body["cancel_running"] = true;
  if (!f.max_queue_time.empty()) {
    auto q = QueueTimeFlag(f.max_queue_time);
    if (!q.ok()) return q.status();
    body["max_queue_seconds"] = *q;
  }
  return body;
}

std::string HumanSeconds(double seconds) {
  int64_t s = static_cast<int64_t>(seconds);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

std::vector<std::string> HolderLines(const Json& status, absl::Time now,
                                     size_t max_lines) {
  std::vector<std::string> out;
  if (!status.is_object() || !status.contains("running")) return out;
  const Json& running = status["running"];
  const Json& limit = status["concurrency_limit"];
  out.push_back(Cat(status.value("repository", ""), ": ", running.size(),
                    " of ",
                    limit.is_number() ? std::to_string(limit.get<int64_t>())
                                      : std::string("unlimited"),
                    " slots in use"));
  for (size_t i = 0; i < running.size(); ++i) {
    if (i == max_lines) {
      out.push_back(Cat("... and ", running.size() - i, " more"));
      break;
    }
    const Json& l = running[i];
    std::string line = Cat(l.value("pipeline_run", "?"), " holds a slot");
    const std::string expires = l.value("expires_at", "");
    if (auto t = server::ParseTimestamp(expires, "expires_at"); t.ok()) {
      absl::Duration left = absl::Trunc(*t - now, absl::Seconds(1));
      line += Cat(
          " (lease ", l.value("lease_id", "?"), " expires ", TableTime(expires),
          left > absl::ZeroDuration() ? Cat(", in ", absl::FormatDuration(left))
                                      : std::string(", overdue"),
          ")");
    }
    out.push_back(std::move(line));
  }
  return out;
}

absl::StatusOr<Json> WaitForSlot(
    server::Api& api, const Context& ctx, const std::string& repo,
    const Json& submit_body,
    const std::function<void(int64_t, const std::vector<std::string>&)>&
        on_position) {
  int64_t last_position = -1;
  std::optional<Json> lease;
  absl::Status failure;
  // Submitting again is idempotent: a queued run keeps its place, an
  // admitted one gets its lease back. Each submit runs to its answer, not
  // to the wait's deadline: one abandoned in flight could reach the
  // server after the release below that leaves the queue, and queue the
  // run again with nobody waiting for it.
  auto check = [&]() -> bool {
    const Context submit =
        Context::WithTimeout(Context::Background(), absl::Seconds(10));
    auto r = api.Submit(submit, repo, submit_body);
    if (!r.ok()) {
      failure = r.status();
      return false;
    }
    if ((*r)["acquired"].get<bool>()) {
      lease = (*r)["lease"];
      return false;
    }
    int64_t pos = (*r)["position"].get<int64_t>();
    if (pos == 0) {
      failure = absl::FailedPreconditionError(
          Cat("run ", submit_body.value("pipeline_run", ""),
              " was neither admitted nor queued"));
      return false;
    }
    if (pos != last_position) {
      std::vector<std::string> holders;
      if (last_position == -1) {
        // Best effort: the wait goes on if the status cannot be read.
        if (auto st = api.Status(ctx, repo); st.ok()) {
          holders = HolderLines(*st, absl::Now());
        }
      }
      last_position = pos;
      if (on_position) on_position(pos, holders);
    }
    return true;
  };
  if (!check()) {
    if (lease.has_value()) return *lease;
    return failure;
  }
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    absl::Status w = api.Watch(
        ctx, repo,
        [&](const Json& ev) {
          if (!ev.is_null() && ev.value("type", "") == "cleaned") {
            failure = absl::AbortedError(
                Cat("repository ", repo, " was cleaned up while waiting"));
            return false;
          }
          return check();
        },
        check);
    if (lease.has_value()) return *lease;
    if (!failure.ok() && !IsRetryable(failure)) {
      if (ctx.Done()) break;
      return failure;
    }
    if (ctx.Done()) break;
    // A server whose watches are all taken (429, --max-watches) is polled
    // with the backoff below instead: the run keeps its place.
    if (!w.ok() && !IsRetryable(w) &&
        w.code() != absl::StatusCode::kResourceExhausted) {
      return w;
    }
    // The watch broke (server restart, network) or was refused: wait a
    // little, re-check.
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
    failure = absl::OkStatus();
    if (!check()) {
      if (lease.has_value()) return *lease;
      if (!IsRetryable(failure)) return failure;
    }
  }
  // Cancelled or out of time: leave the queue.
  absl::Status why = ctx.Err();
  Context cleanup =
      Context::WithTimeout(Context::Background(), absl::Seconds(10));
  (void)api.Release(cleanup, repo, submit_body.value("pipeline_run", ""), "");
  return why;
}

namespace {

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min(
          {row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string UnknownCommand(const CLI::App& app, int argc,
                           const char* const* argv) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands({})) {
    names.push_back(sub->get_name());
    for (const std::string& a : sub->get_aliases()) names.push_back(a);
  }
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return "";
    if (arg.size() > 1 && arg[0] == '-') {
      if (arg.find('=') != std::string::npos) continue;
      // A global flag that takes a value: skip the value too.
      for (const CLI::Option* o : app.get_options()) {
        if (o->check_name(arg) && o->get_type_size() != 0) {
          ++i;
          break;
        }
      }
      continue;
    }
    if (std::find(names.begin(), names.end(), arg) != names.end()) return "";
    // A command this word begins, else the nearest within two edits.
    std::string best;
    size_t best_distance = 3;
    for (const std::string& n : names) {
      if (arg.size() >= 2 && n.rfind(arg, 0) == 0) {
        best = n;
        break;
      }
      if (size_t d = EditDistance(arg, n); d < best_distance) {
        best_distance = d;
        best = n;
      }
    }
    std::string out =
        Cat("unknown command \"", internal::EscapeBytes(arg), "\"");
    if (!best.empty()) out += Cat(" (did you mean \"", best, "\"?)");
    return out;
  }
  return "";
}

void PrintTable(const std::vector<std::vector<std::string>>& rows,
                std::string_view indent) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string line(indent);
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) {
        line += std::string(width[i] - row[i].size() + 2, ' ');
      }
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string TableTime(const std::string& rfc3339) {
  auto t = server::ParseTimestamp(rfc3339, "time");
  if (!t.ok()) return rfc3339;
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", *t, absl::UTCTimeZone());
}

void DescribeGlobalFlags(CLI::App& app) {
  std::vector<std::pair<std::string, std::string>> rows;
  size_t width = 0;
  for (const CLI::Option* o : app.get_options()) {
    if (o->get_lnames().empty() || o->get_lnames()[0] == "help" ||
        o->get_lnames()[0] == "version") {
      continue;
    }
    std::string name = o->get_name(false, true);
    if (o->get_type_size() != 0) name += " " + o->get_type_name();
    width = std::max(width, name.size());
    rows.emplace_back(std::move(name), o->get_description());
  }
  std::string text = "Global flags (before or after the command):";
  for (const auto& [name, description] : rows) {
    text +=
        "\n  " + name + std::string(width + 2 - name.size(), ' ') + description;
  }
  for (CLI::App* sub : app.get_subcommands({})) sub->footer(text);
}

}  // namespace pac::concurrency::cli
