#include "pac/concurrency/config.h"

#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "src/common/strings.h"
#include "yaml-cpp/yaml.h"

namespace pac::concurrency {
namespace {

using FlatMap = std::map<std::string, std::string>;

const std::set<std::string>& SecretKeys() {
  static const auto* keys =
      new std::set<std::string>{"etcd-password", "postgresql-password"};
  return *keys;
}

absl::Status FieldError(std::string_view key, std::string_view problem) {
  return absl::InvalidArgumentError(
      internal::Cat("config: ", key, ": ", problem));
}

// Quotes a value for an error message, unless it is a secret.
std::string Shown(std::string_view key, std::string_view value) {
  if (SecretKeys().count(std::string(key))) return "(hidden)";
  std::string out = internal::Cat("\"", value.substr(0, 80), "\"");
  return out;
}

absl::Status ParseDurationField(const FlatMap& m, const std::string& key,
                                absl::Duration* out) {
  auto it = m.find(key);
  if (it == m.end()) return absl::OkStatus();
  absl::StatusOr<absl::Duration> d = ParseDuration(it->second);
  if (!d.ok()) {
    return FieldError(key, internal::Cat(Shown(key, it->second),
                                         " is not a duration (use 30s, 5m, "
                                         "1h30m, or a number of seconds)"));
  }
  *out = *d;
  return absl::OkStatus();
}

absl::Status ParseIntField(const FlatMap& m, const std::string& key, int* out) {
  auto it = m.find(key);
  if (it == m.end()) return absl::OkStatus();
  int v = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(it->second), &v)) {
    return FieldError(
        key, internal::Cat(Shown(key, it->second), " is not a whole number"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ParseBoolField(const FlatMap& m, const std::string& key,
                            bool* out) {
  auto it = m.find(key);
  if (it == m.end()) return absl::OkStatus();
  if (!absl::SimpleAtob(absl::StripAsciiWhitespace(it->second), out)) {
    return FieldError(
        key, internal::Cat(Shown(key, it->second), " is not true or false"));
  }
  return absl::OkStatus();
}

void StringField(const FlatMap& m, const std::string& key, std::string* out) {
  auto it = m.find(key);
  if (it != m.end()) *out = std::string(absl::StripAsciiWhitespace(it->second));
}

absl::Status ReadSecretFile(const std::string& key, const std::string& path,
                            std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return FieldError(key, internal::Cat("cannot read file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  // A trailing newline is an artefact of how the file was written.
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  *out = s;
  return absl::OkStatus();
}

bool HasPrefixKey(const FlatMap& m, absl::string_view prefix) {
  for (const auto& [k, v] : m) {
    if (absl::StartsWith(k, prefix)) return true;
  }
  return false;
}

// camelCase / snake_case / kebab-case -> kebab-case.
std::string Kebab(std::string_view key) {
  std::string out;
  for (size_t i = 0; i < key.size(); ++i) {
    char c = key[i];
    if (c == '_') {
      out.push_back('-');
    } else if (std::isupper(static_cast<unsigned char>(c))) {
      bool prev_lower =
          i > 0 && std::islower(static_cast<unsigned char>(key[i - 1]));
      if (prev_lower) out.push_back('-');
      out.push_back(static_cast<char>(std::tolower(c)));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string ScalarOrList(const YAML::Node& node) {
  if (node.IsSequence()) {
    std::vector<std::string> parts;
    for (const auto& item : node) parts.push_back(item.as<std::string>());
    return absl::StrJoin(parts, ",");
  }
  if (node.IsNull()) return "";
  return node.as<std::string>();
}

absl::Status FlattenSection(const std::string& section, const YAML::Node& node,
                            FlatMap* out) {
  if (!node.IsMap()) {
    return FieldError(section, "must be a mapping of settings");
  }
  for (const auto& kv : node) {
    std::string sub = Kebab(kv.first.as<std::string>());
    if (sub == "sslmode") sub = "ssl-mode";
    if (sub == "tls" || sub == "tls-config") {
      if (!kv.second.IsMap())
        return FieldError(section + "-tls", "must be a mapping");
      for (const auto& t : kv.second) {
        (*out)[internal::Cat(section, "-", Kebab(t.first.as<std::string>()))] =
            ScalarOrList(t.second);
      }
      continue;
    }
    if (kv.second.IsMap()) {
      return FieldError(internal::Cat(section, "-", sub), "must be a value");
    }
    (*out)[internal::Cat(section, "-", sub)] = ScalarOrList(kv.second);
  }
  return absl::OkStatus();
}

// An etcd endpoint as the driver dials it: host:port, optionally after
// http:// or https:// (what etcdctl and Pipelines-as-Code write); the host
// a name, an IPv4 address or a bracketed IPv6 one; the port 1..65535.
bool IsEndpoint(std::string_view ep) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (ep.starts_with(scheme)) ep.remove_prefix(scheme.size());
  }
  const size_t colon = ep.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view host = ep.substr(0, colon);
  std::string_view port = ep.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  int p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    p = p * 10 + (c - '0');
  }
  if (p < 1 || p > 65535) return false;
  if (host.front() == '[') return host.size() > 2 && host.back() == ']';
  for (char c : host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

const std::vector<std::string>& ConfigKeys() {
  static const auto* keys = new std::vector<std::string>{
      "concurrency-driver",
      "etcd-endpoints",
      "etcd-dial-timeout",
      "etcd-username",
      "etcd-password",
      "etcd-password-file",
      "etcd-cert-file",
      "etcd-key-file",
      "etcd-ca-file",
      "etcd-server-name",
      "etcd-mode",
      "etcd-prefix",
      "etcd-lease-ttl",
      "postgresql-host",
      "postgresql-port",
      "postgresql-database",
      "postgresql-username",
      "postgresql-password",
      "postgresql-password-file",
      "postgresql-ssl-mode",
      "postgresql-ssl-root-cert",
      "postgresql-max-connections",
      "postgresql-connection-timeout",
      "postgresql-lease-ttl",
      "postgresql-poll-interval",
      "postgresql-prepared-statements",
      "memory-lease-ttl",
  };
  return *keys;
}

absl::StatusOr<absl::Duration> ParseDuration(std::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(internal::AV(text));
  if (t.empty()) return absl::InvalidArgumentError("empty duration");
  int64_t seconds = 0;
  if (absl::SimpleAtoi(t, &seconds)) return absl::Seconds(seconds);
  if (absl::StrContains(t, "inf")) {
    return absl::InvalidArgumentError("infinite durations are not allowed");
  }
  absl::Duration d;
  if (!absl::ParseDuration(t, &d)) {
    return absl::InvalidArgumentError(
        internal::Cat("not a duration: ", internal::SV(t)));
  }
  return d;
}

absl::StatusOr<DriverConfig> LoadConfigFromConfigMap(const FlatMap& data) {
  static const std::vector<std::string> kPrefixes = {"concurrency-", "etcd-",
                                                     "postgresql-", "memory-"};
  const auto& known = ConfigKeys();
  FlatMap m;
  for (const auto& [k, v] : data) {
    bool ours = false;
    for (const auto& p : kPrefixes) ours = ours || absl::StartsWith(k, p);
    if (!ours) continue;
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      return FieldError(k, "unknown key (see docs/configuration.md)");
    }
    m[k] = v;
  }

  DriverConfig config;
  StringField(m, "concurrency-driver", &config.driver);
  config.driver = absl::AsciiStrToLower(config.driver);
  if (config.driver.empty()) config.driver = "memory";

  if (config.driver == "etcd" || HasPrefixKey(m, "etcd-")) {
    EtcdConfig e;
    if (auto it = m.find("etcd-endpoints"); it != m.end()) {
      for (absl::string_view part : absl::StrSplit(it->second, ',')) {
        part = absl::StripAsciiWhitespace(part);
        if (!part.empty()) e.endpoints.emplace_back(part);
      }
    }
    if (auto s = ParseDurationField(m, "etcd-dial-timeout", &e.dial_timeout);
        !s.ok()) {
      return s;
    }
    if (auto s = ParseDurationField(m, "etcd-lease-ttl", &e.lease_ttl);
        !s.ok()) {
      return s;
    }
    StringField(m, "etcd-username", &e.username);
    if (auto it = m.find("etcd-password"); it != m.end())
      e.password = it->second;
    if (auto it = m.find("etcd-password-file"); it != m.end()) {
      if (m.count("etcd-password")) {
        return FieldError("etcd-password-file",
                          "give either etcd-password or etcd-password-file");
      }
      if (auto s =
              ReadSecretFile("etcd-password-file", it->second, &e.password);
          !s.ok()) {
        return s;
      }
    }
    StringField(m, "etcd-mode", &e.mode);
    e.mode = absl::AsciiStrToLower(e.mode);
    StringField(m, "etcd-prefix", &e.prefix);
    TLSConfig tls;
    StringField(m, "etcd-cert-file", &tls.cert_file);
    StringField(m, "etcd-key-file", &tls.key_file);
    StringField(m, "etcd-ca-file", &tls.ca_file);
    StringField(m, "etcd-server-name", &tls.server_name);
    if (!tls.cert_file.empty() || !tls.key_file.empty() ||
        !tls.ca_file.empty() || !tls.server_name.empty()) {
      e.tls = tls;
    }
    config.etcd = e;
  }

  if (config.driver == "postgresql" || HasPrefixKey(m, "postgresql-")) {
    PostgreSQLConfig p;
    StringField(m, "postgresql-host", &p.host);
    if (auto s = ParseIntField(m, "postgresql-port", &p.port); !s.ok())
      return s;
    StringField(m, "postgresql-database", &p.database);
    StringField(m, "postgresql-username", &p.username);
    if (auto it = m.find("postgresql-password"); it != m.end()) {
      p.password = it->second;
    }
    if (auto it = m.find("postgresql-password-file"); it != m.end()) {
      if (m.count("postgresql-password")) {
        return FieldError(
            "postgresql-password-file",
            "give either postgresql-password or postgresql-password-file");
      }
      if (auto s = ReadSecretFile("postgresql-password-file", it->second,
                                  &p.password);
          !s.ok()) {
        return s;
      }
    }
    StringField(m, "postgresql-ssl-mode", &p.ssl_mode);
    p.ssl_mode = absl::AsciiStrToLower(p.ssl_mode);
    StringField(m, "postgresql-ssl-root-cert", &p.ssl_root_cert);
    if (auto s =
            ParseIntField(m, "postgresql-max-connections", &p.max_connections);
        !s.ok()) {
      return s;
    }
    if (auto s = ParseDurationField(m, "postgresql-connection-timeout",
                                    &p.connection_timeout);
        !s.ok()) {
      return s;
    }
    if (auto s = ParseDurationField(m, "postgresql-lease-ttl", &p.lease_ttl);
        !s.ok()) {
      return s;
    }
    if (auto s =
            ParseDurationField(m, "postgresql-poll-interval", &p.poll_interval);
        !s.ok()) {
      return s;
    }
    if (auto s = ParseBoolField(m, "postgresql-prepared-statements",
                                &p.prepared_statements);
        !s.ok()) {
      return s;
    }
    config.postgresql = p;
  }

  if (config.driver == "memory" || HasPrefixKey(m, "memory-")) {
    MemoryConfig mem;
    if (auto s = ParseDurationField(m, "memory-lease-ttl", &mem.lease_ttl);
        !s.ok()) {
      return s;
    }
    config.memory = mem;
  }

  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  return config;
}

absl::Status ValidateConfig(const DriverConfig& config) {
  if (config.driver != "memory" && config.driver != "etcd" &&
      config.driver != "postgresql") {
    return FieldError("concurrency-driver",
                      internal::Cat("unknown driver ",
                                    Shown("concurrency-driver", config.driver),
                                    " (use memory, etcd or postgresql)"));
  }
  if (config.memory.has_value() &&
      config.memory->lease_ttl <= absl::ZeroDuration()) {
    return FieldError("memory-lease-ttl", "must be positive");
  }
  if (config.driver == "etcd" && !config.etcd.has_value()) {
    return FieldError("etcd-endpoints", "the etcd driver needs etcd settings");
  }
  if (config.etcd.has_value()) {
    const EtcdConfig& e = *config.etcd;
    if (e.mode != "etcd" && e.mode != "mock" && e.mode != "memory") {
      return FieldError(
          "etcd-mode",
          internal::Cat("unknown mode ", Shown("etcd-mode", e.mode),
                        " (use etcd, mock or memory)"));
    }
    if (e.mode == "etcd" && config.driver == "etcd" && e.endpoints.empty()) {
      return FieldError("etcd-endpoints",
                        "at least one endpoint is needed in etcd mode");
    }
    for (const auto& ep : e.endpoints) {
      if (!IsEndpoint(ep)) {
        return FieldError(
            "etcd-endpoints",
            internal::Cat("bad endpoint ", Shown("", ep),
                          " (use host:port, optionally after http:// or "
                          "https://, e.g. etcd-0:2379)"));
      }
    }
    if (e.dial_timeout <= absl::ZeroDuration()) {
      return FieldError("etcd-dial-timeout", "must be positive");
    }
    if (e.lease_ttl < absl::Seconds(1)) {
      return FieldError("etcd-lease-ttl", "must be at least 1s");
    }
    if (e.prefix.empty()) return FieldError("etcd-prefix", "must not be empty");
    if (!e.password.empty() && e.username.empty()) {
      return FieldError("etcd-username", "a password needs a username");
    }
    if (e.tls.has_value() &&
        e.tls->cert_file.empty() != e.tls->key_file.empty()) {
      return FieldError(
          e.tls->cert_file.empty() ? "etcd-cert-file" : "etcd-key-file",
          "a client certificate and its key go together");
    }
  }
  if (config.driver == "postgresql" && !config.postgresql.has_value()) {
    return FieldError("postgresql-host",
                      "the postgresql driver needs postgresql settings");
  }
  if (config.postgresql.has_value()) {
    const PostgreSQLConfig& p = *config.postgresql;
    if (p.host.empty())
      return FieldError("postgresql-host", "must not be empty");
    if (p.port < 1 || p.port > 65535) {
      return FieldError("postgresql-port", "must be between 1 and 65535");
    }
    if (p.database.empty()) {
      return FieldError("postgresql-database", "must not be empty");
    }
    if (p.username.empty()) {
      return FieldError("postgresql-username", "must not be empty");
    }
    static const std::set<std::string> kModes = {"disable", "require",
                                                 "verify-ca", "verify-full"};
    if (!kModes.count(p.ssl_mode)) {
      return FieldError(
          "postgresql-ssl-mode",
          internal::Cat("unknown mode ",
                        Shown("postgresql-ssl-mode", p.ssl_mode),
                        " (use disable, require, verify-ca or verify-full)"));
    }
    if (p.max_connections < 1) {
      return FieldError("postgresql-max-connections", "must be at least 1");
    }
    if (p.connection_timeout <= absl::ZeroDuration()) {
      return FieldError("postgresql-connection-timeout", "must be positive");
    }
    if (p.lease_ttl < absl::Seconds(1)) {
      return FieldError("postgresql-lease-ttl", "must be at least 1s");
    }
    if (p.poll_interval < absl::ZeroDuration()) {
      return FieldError("postgresql-poll-interval", "must not be negative");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FlatMap> FlattenYaml(std::string_view yaml) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        internal::Cat("config: YAML does not parse at line ", e.mark.line + 1,
                      ", column ", e.mark.column + 1, ": ", e.msg));
  }
  FlatMap out;
  if (root.IsNull()) return out;
  if (!root.IsMap()) {
    return absl::InvalidArgumentError("config: the document must be a mapping");
  }
  try {
    if (root["data"] && root["data"].IsMap()) {
      for (const auto& kv : root["data"]) {
        out[kv.first.as<std::string>()] = ScalarOrList(kv.second);
      }
      return out;
    }
    for (const auto& kv : root) {
      std::string key = kv.first.as<std::string>();
      if (key == "driver") {
        out["concurrency-driver"] = ScalarOrList(kv.second);
      } else if (key == "etcd" || key == "postgresql" || key == "memory" ||
                 key == "etcd_config" || key == "etcdConfig" ||
                 key == "postgresql_config" || key == "postgresqlConfig" ||
                 key == "memory_config" || key == "memoryConfig") {
        std::string section = Kebab(key);
        section = section.substr(0, section.find('-'));
        if (auto s = FlattenSection(section, kv.second, &out); !s.ok()) {
          return s;
        }
      } else if (kv.second.IsMap()) {
        return FieldError(key,
                          "unknown section (use driver, etcd, "
                          "postgresql or memory)");
      } else {
        out[key] = ScalarOrList(kv.second);
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        internal::Cat("config: unexpected YAML structure at line ",
                      e.mark.line + 1, ": ", e.msg));
  }
  // Nested keys that are not ours would be ignored by the ConfigMap loader;
  // in a file that is only about concurrency they are typos.
  const auto& known = ConfigKeys();
  for (const auto& [k, v] : out) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      return FieldError(k, "unknown key (see docs/configuration.md)");
    }
  }
  return out;
}

absl::StatusOr<DriverConfig> LoadConfigFromYaml(std::string_view yaml) {
  absl::StatusOr<FlatMap> flat = FlattenYaml(yaml);
  if (!flat.ok()) return flat.status();
  return LoadConfigFromConfigMap(*flat);
}

absl::StatusOr<DriverConfig> LoadConfigFromYamlFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        internal::Cat("config: cannot read file ", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return LoadConfigFromYaml(ss.str());
}

absl::StatusOr<DriverConfig> ApplyEnvironment(const FlatMap& base,
                                              const EnvLookup& lookup) {
  FlatMap merged = base;
  for (const std::string& key : ConfigKeys()) {
    std::string env = "PAC_";
    for (char c : key) {
      env.push_back(c == '-' ? '_'
                             : static_cast<char>(std::toupper(
                                   static_cast<unsigned char>(c))));
    }
    if (std::optional<std::string> v = lookup(env); v.has_value()) {
      merged[key] = *v;
      // A password from the environment replaces one read from a file.
      if (key == "etcd-password") merged.erase("etcd-password-file");
      if (key == "postgresql-password")
        merged.erase("postgresql-password-file");
    }
  }
  return LoadConfigFromConfigMap(merged);
}

FlatMap RedactSecrets(FlatMap data) {
  for (auto& [k, v] : data) {
    if (SecretKeys().count(k) && !v.empty()) v = "***";
  }
  return data;
}

}  // namespace pac::concurrency
