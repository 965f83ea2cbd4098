// Shared parts of the `pac-concurrency` command: global options, how a
// subcommand reaches the Api (a running server, or a driver configuration
// in this process), output and exit codes. Each subcommand lives in its own
// file and registers itself with a Register*Command function.
#ifndef PAC_SRC_CLI_CLI_H_
#define PAC_SRC_CLI_CLI_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pac/concurrency/config.h"
#include "pac/concurrency/driver.h"
#include "src/server/api.h"
#include "src/server/service.h"

namespace pac::concurrency::cli {

using server::Json;

// Exit codes (documented in docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;         // InvalidArgument, a bad flag
inline constexpr int kExitQueued = 3;        // `acquire` without --wait: queued
inline constexpr int kExitUnavailable = 69;  // backend or server unreachable
inline constexpr int kExitAuth = 77;         // Unauthenticated
inline constexpr int kExitTimeout = 124;     // DeadlineExceeded

struct GlobalOptions {
  std::string server = "http://127.0.0.1:8080";  // --server / PAC_SERVER
  std::string config;                            // --config: no server
  std::string token_file;                        // --token-file
  // HTTPS to the server: the CA that signed its certificate (else the
  // system's), and a client certificate and key for mutual TLS.
  std::string ca_file;           // --ca-file / PAC_CA_FILE
  std::string cert_file;         // --cert / PAC_CERT_FILE
  std::string key_file;          // --key / PAC_KEY_FILE
  std::string output = "table";  // --output table|json
  std::string timeout;           // --timeout; empty: the command's default
  std::string log_level;         // --log-level; empty: the command's default
};

// The Api a subcommand talks to, and what keeps it alive.
struct ApiHandle {
  std::unique_ptr<Driver> driver;  // set when using --config
  std::unique_ptr<server::Service> service;
  std::unique_ptr<server::Api> remote;
  server::Api* api = nullptr;
  ~ApiHandle();
};

// Builds the Api from the global options (a server unless --config is
// given). With --config, connecting to the backend ends at `ctx`'s
// deadline (then DeadlineExceeded).
[[nodiscard]] absl::StatusOr<std::unique_ptr<ApiHandle>> OpenApi(
    const GlobalOptions& g, const Context& ctx);

// Loads a driver configuration: the YAML file (if any), then PAC_*
// environment variables.
[[nodiscard]] absl::StatusOr<DriverConfig> LoadDriverConfig(
    const std::string& path, std::map<std::string, std::string>* flat);

// Reads a secret file, trimming one trailing newline.
[[nodiscard]] absl::StatusOr<std::string> ReadSecretFile(
    const std::string& path, std::string_view what);
// Reads a file whole; "-" is standard input (for one argument of a
// command: a second "-" is InvalidArgument).
[[nodiscard]] absl::StatusOr<std::string> ReadFile(const std::string& path,
                                                   std::string_view what);

// The context for one command: --timeout (else `fallback`; infinite
// when that is zero) from now.
[[nodiscard]] absl::StatusOr<Context> CommandContext(
    const GlobalOptions& g, absl::Duration fallback = absl::Seconds(30));

// Prints "error: <code>: <message>" to stderr and returns the exit code.
int Fail(const absl::Status& status);
int ExitCodeFor(const absl::Status& status);

// Prints `doc` as JSON (--output json) or with `table` otherwise.
void Print(const GlobalOptions& g, const Json& doc,
           const std::function<void(const Json&)>& table);

// A --max-queue-time flag ("90s", "30m", "1h30m"; "none": no limit) as
// the JSON of "max_queue_seconds" (a number, or null for "none").
[[nodiscard]] absl::StatusOr<Json> QueueTimeFlag(std::string_view text);

// The flags of a submit that `acquire` and `run` share.
struct SubmitFlags {
  std::string repo, run, creation_time, group, max_queue_time;
  int limit = -1;
  int priority = 0;
  bool supersede = false;  // cancel_running
};
// Adds them to `cmd`; `limit_help` describes --limit.
void AddSubmitFlags(CLI::App* cmd, SubmitFlags* f, const char* limit_help);
// The body of POST .../runs they ask for (InvalidArgument for a bad
// --max-queue-time).
[[nodiscard]] absl::StatusOr<Json> SubmitBody(const SubmitFlags& f);

// Formats seconds as "1h02m", "3m05s", "12s".
std::string HumanSeconds(double seconds);

// Subcommands. Each adds itself to `app` and sets `*run` when chosen.
using Runner = std::function<int()>;
void RegisterServeCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterStatusCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterQueueCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterAcquireCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterReleaseCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterWatchCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterConfigCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterRunCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterLimitCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterSharedLimitCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterImportCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterDeleteCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterRenewCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterVersionCommand(CLI::App& app, GlobalOptions& g, Runner* run);
void RegisterCompletionCommand(CLI::App& app, GlobalOptions& g, Runner* run);

// Prints rows as a table: each column as wide as its widest cell, two
// spaces between columns, every line after `indent`.
void PrintTable(const std::vector<std::vector<std::string>>& rows,
                std::string_view indent = "");

// An RFC 3339 time as the tables show it: to the second, in UTC
// ("2026-12-05T21:12:57Z"); the text itself if it does not parse.
[[nodiscard]] std::string TableTime(const std::string& rfc3339);

// The error for a command line whose command is not one of `app`'s
// ("unknown command \"stauts\" (did you mean \"status\"?)"), or empty
// when the first word that is not a global flag (or a flag's value) names
// one, or there is none. Global flags may come before the command.
[[nodiscard]] std::string UnknownCommand(const CLI::App& app, int argc,
                                         const char* const* argv);

// Adds to each command's --help the global flags it also takes.
void DescribeGlobalFlags(CLI::App& app);

// Waits until `run_key` holds a slot: submits, then re-submits on every
// event of the repository's watch (and after the watch is ready, so no
// admission is missed). `on_position` is told each new queue position;
// the first time also who holds the slots (HolderLines), so a user sees
// what the run waits for. Returns the lease JSON. On
// Cancelled/DeadlineExceeded the run is taken out of the queue.
[[nodiscard]] absl::StatusOr<Json> WaitForSlot(
    server::Api& api, const Context& ctx, const std::string& repo,
    const Json& submit_body,
    const std::function<void(int64_t position, const std::vector<std::string>&
                                                   holders)>& on_position);

// Lines naming who holds the slots of a repository, from its status JSON
// (`Api::Status`), as of `now`: "demo/pr-2 holds a slot (lease m1 expires
// 2026-12-05T21:00:00Z, in 29m58s)", at most `max_lines` of them and then
// "... and N more"; the first line says the limit and how many are in use.
[[nodiscard]] std::vector<std::string> HolderLines(const Json& status,
                                                   absl::Time now,
                                                   size_t max_lines = 5);

}  // namespace pac::concurrency::cli

#endif  // PAC_SRC_CLI_CLI_H_
