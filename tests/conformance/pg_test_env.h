// Reads the throwaway PostgreSQL server's settings that
// scripts/pg-test-server.sh exports (PAC_TEST_PG_*). A test that needs the
// server and finds no settings fails: it never skips.
#ifndef PAC_TESTS_CONFORMANCE_PG_TEST_ENV_H_
#define PAC_TESTS_CONFORMANCE_PG_TEST_ENV_H_

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "pac/concurrency/config.h"

namespace pac::concurrency::conformance {

inline std::string EnvOr(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v == nullptr ? fallback : std::string(v);
}

inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The test server's configuration, or an error saying how to start it.
inline absl::StatusOr<PostgreSQLConfig> TestPostgreSQLConfig() {
  if (EnvOr("PAC_TEST_PG_PORT").empty()) {
    return absl::FailedPreconditionError(
        "PAC_TEST_PG_* is not set: run the tests through `make test` (or "
        "source the env file of scripts/pg-test-server.sh start DIR)");
  }
  PostgreSQLConfig c;
  c.host = EnvOr("PAC_TEST_PG_HOST", "127.0.0.1");
  c.port = std::stoi(EnvOr("PAC_TEST_PG_PORT"));
  c.database = EnvOr("PAC_TEST_PG_DATABASE", "pac_concurrency");
  c.username = EnvOr("PAC_TEST_PG_USER", "pac_user");
  c.password = ReadFileOrEmpty(EnvOr("PAC_TEST_PG_PASSWORD_FILE"));
  c.ssl_mode = "require";
  c.max_connections = 8;
  c.connection_timeout = absl::Seconds(10);
  return c;
}

}  // namespace pac::concurrency::conformance

#endif  // PAC_TESTS_CONFORMANCE_PG_TEST_ENV_H_
