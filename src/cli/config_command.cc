// `pac-concurrency config validate FILE`: checks a driver configuration
// (with PAC_* environment overrides) and prints it with secrets redacted.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "src/cli/cli.h"

namespace pac::concurrency::cli {

namespace {

int Validate(const GlobalOptions& g, const std::string& file) {
  std::map<std::string, std::string> flat;
  auto config = LoadDriverConfig(file, &flat);
  if (!config.ok()) return Fail(config.status());
  // Only the keys this project reads: a whole Pipelines-as-Code ConfigMap
  // also holds settings of its own (tokens, webhook secrets) that are none
  // of ours to print.
  std::map<std::string, std::string> used;
  int ignored = 0;
  const auto& known = ConfigKeys();
  for (const auto& [k, v] : flat) {
    if (std::find(known.begin(), known.end(), k) != known.end()) {
      used[k] = v;
    } else {
      ++ignored;
    }
  }
  // The effective values: a PAC_* variable overrides the file's value (it
  // has already been applied to `config`; shown here with where it came
  // from).
  Json from_env = Json::object();
  for (const std::string& k : known) {
    std::string name = "PAC_" + k;
    for (char& c : name) c = c == '-' ? '_' : static_cast<char>(toupper(c));
    if (const char* v = std::getenv(name.c_str()); v != nullptr) {
      used[k] = v;
      from_env[k] = name;
    }
  }
  Json doc{{"valid", true},
           {"driver", config->driver},
           {"settings", RedactSecrets(used)},
           {"from_environment", from_env},
           {"ignored_keys", ignored}};
  Print(g, doc, [](const Json& d) {
    std::printf("valid: driver %s\n", d["driver"].get<std::string>().c_str());
    const Json& env = d["from_environment"];
    for (auto it = d["settings"].begin(); it != d["settings"].end(); ++it) {
      std::string from;
      if (env.contains(it.key())) {
        from = " (from " + env[it.key()].get<std::string>() + ")";
      }
      std::printf("  %s: %s%s\n", it.key().c_str(),
                  it.value().get<std::string>().c_str(), from.c_str());
    }
    if (int n = d["ignored_keys"].get<int>(); n > 0) {
      std::printf("(%d other keys ignored: not concurrency settings)\n", n);
    }
  });
  return kExitOk;
}

}  // namespace

void RegisterConfigCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  CLI::App* config = app.add_subcommand("config", "Driver configuration");
  config->require_subcommand(1);
  auto file = std::make_shared<std::string>();
  CLI::App* validate = config->add_subcommand(
      "validate", "Check a config file (exit 0 valid, 2 invalid)");
  validate->add_option("file", *file, "YAML config (ConfigMap or nested)")
      ->required();
  validate->callback(
      [&g, file, run] { *run = [&g, file] { return Validate(g, *file); }; });
}

}  // namespace pac::concurrency::cli
