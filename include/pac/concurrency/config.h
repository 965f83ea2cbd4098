// Driver configuration, as in the specification's DriverConfig, and its
// loaders. See docs/configuration.md for every key and its default.
#ifndef PAC_CONCURRENCY_CONFIG_H_
#define PAC_CONCURRENCY_CONFIG_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace pac::concurrency {

struct TLSConfig {
  std::string cert_file;    // client certificate (PEM); needs key_file
  std::string key_file;     // client key (PEM); needs cert_file
  std::string ca_file;      // CA bundle used to verify the server
  std::string server_name;  // name expected in the server certificate
};

struct EtcdConfig {
  std::vector<std::string> endpoints;  // "host:port", tried in order
  absl::Duration dial_timeout = absl::Seconds(5);
  std::string username;
  std::string password;       // secret: never logged
  std::string mode = "etcd";  // "etcd", "mock" or "memory"
  std::optional<TLSConfig> tls;
  std::string prefix = "/pac-concurrency/";  // every key lives under it
  absl::Duration lease_ttl = absl::Minutes(1);
};

struct PostgreSQLConfig {
  std::string host = "localhost";
  int port = 5432;
  std::string database = "pac_concurrency";
  std::string username = "pac_user";
  std::string password;              // secret: never logged
  std::string ssl_mode = "disable";  // disable, require, verify-ca, verify-full
  std::string ssl_root_cert;         // CA file for verify-ca / verify-full
  int max_connections = 10;
  absl::Duration connection_timeout = absl::Seconds(30);
  absl::Duration lease_ttl = absl::Hours(1);
  // Interval of the polling fallback for poolers that break LISTEN; zero
  // keeps LISTEN/NOTIFY only.
  absl::Duration poll_interval = absl::ZeroDuration();
  // Prepare the driver's statements once per connection (no parse and plan
  // per call). False behind a pooler that hands each transaction to
  // another server connection (PgBouncer in transaction mode).
  bool prepared_statements = true;
};

struct MemoryConfig {
  absl::Duration lease_ttl = absl::Minutes(30);
};

struct DriverConfig {
  std::string driver = "memory";  // "memory", "etcd" or "postgresql"
  std::optional<EtcdConfig> etcd;
  std::optional<PostgreSQLConfig> postgresql;
  std::optional<MemoryConfig> memory;
};

// Checks a whole configuration: known driver, the section the driver needs,
// positive durations, valid enums, no contradictions (a TLS cert without a
// key). InvalidArgument naming the first wrong field (by its ConfigMap key).
[[nodiscard]] absl::Status ValidateConfig(const DriverConfig& config);

// Parses a duration: Go syntax ("5s", "1h30m", "250ms", "1.5h") or a bare
// integer meaning seconds. Negative values parse; the caller decides.
[[nodiscard]] absl::StatusOr<absl::Duration> ParseDuration(
    std::string_view text);

// Builds a configuration from the flat keys of the Pipelines-as-Code
// ConfigMap (`concurrency-driver`, `etcd-endpoints`, ...). Keys outside the
// concurrency prefixes (concurrency-, etcd-, postgresql-, memory-) are
// ignored, as the ConfigMap holds other settings too; an unknown key inside
// them is an error. `*-password-file` keys read the password from a file.
// The result is validated.
[[nodiscard]] absl::StatusOr<DriverConfig> LoadConfigFromConfigMap(
    const std::map<std::string, std::string>& data);

// Parses YAML: either the flat ConfigMap keys at the top level, a ConfigMap
// manifest (its `data:`), or the nested form
//   driver: postgresql
//   postgresql: {host: db, port: 5432, lease-ttl: 1h}
// Environment overrides are not applied here.
[[nodiscard]] absl::StatusOr<DriverConfig> LoadConfigFromYaml(
    std::string_view yaml);
[[nodiscard]] absl::StatusOr<DriverConfig> LoadConfigFromYamlFile(
    const std::string& path);

// Reads the flat keys from environment variables: key `etcd-dial-timeout`
// is `PAC_ETCD_DIAL_TIMEOUT`, `concurrency-driver` is
// `PAC_CONCURRENCY_DRIVER`. Values set there override `base` (which may come
// from a file). `environ_lookup` returns nullopt for an unset variable.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
[[nodiscard]] absl::StatusOr<DriverConfig> ApplyEnvironment(
    const std::map<std::string, std::string>& base, const EnvLookup& lookup);

// The flat keys understood by LoadConfigFromConfigMap, in documentation order.
[[nodiscard]] const std::vector<std::string>& ConfigKeys();

// Flattens a nested or ConfigMap YAML document into flat keys (no defaults
// applied, nothing validated). Used to layer files and environment.
[[nodiscard]] absl::StatusOr<std::map<std::string, std::string>> FlattenYaml(
    std::string_view yaml);

// Redacts secrets: a copy of `data` with password values replaced by "***".
[[nodiscard]] std::map<std::string, std::string> RedactSecrets(
    std::map<std::string, std::string> data);

}  // namespace pac::concurrency

#endif  // PAC_CONCURRENCY_CONFIG_H_
