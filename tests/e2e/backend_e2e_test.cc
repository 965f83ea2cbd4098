// End to end: `pac-concurrency serve` when its backend is unreachable at
// start or goes down while it serves (a TCP forwarder in front of the test
// servers): it serves, /readyz answers 503 within a second, and it serves
// again once the backend is back.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/conformance/tcp_forwarder.h"
#include "tests/e2e/e2e_process.h"

namespace pac::concurrency {
namespace {

using ::testing::HasSubstr;

// The HTTP status of a GET of `url` (curl, 10 s at most), 0 if none came.
int HttpCode(const std::string& url) {
  FILE* p = popen(
      ("curl -s -m 10 -o /dev/null -w '%{http_code}' '" + url + "'").c_str(),
      "r");
  if (p == nullptr) return 0;
  char buf[16] = {0};
  if (fgets(buf, sizeof buf, p) == nullptr) buf[0] = '\0';
  pclose(p);
  return std::atoi(buf);
}

// `serve` whose etcd is unreachable at start (a forwarder in front of the
// test server, refusing): it serves, /readyz answers 503 at once, calls
// answer 503 naming the cause, and once etcd answers it is ready and
// serves. Before, it exited 69 at start.
TEST(CliE2ETest, ServeStartsBeforeItsBackendAndIsReadyOnceItAnswers) {
  const std::string endpoints = conformance::EnvOr("PAC_TEST_ETCD_ENDPOINTS");
  ASSERT_FALSE(endpoints.empty())
      << "PAC_TEST_ETCD_ENDPOINTS is not set: run through `make test`";
  std::string first = endpoints.substr(0, endpoints.find(','));
  if (first.find("://") != std::string::npos) {
    first = first.substr(first.find("://") + 3);
  }
  auto fwd = conformance::TcpForwarder::Start(first);
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  (*fwd)->SetDown(true);
  std::string config = WriteFile("late-etcd.yaml",
                                 "concurrency-driver: etcd\n"
                                 "etcd-endpoints: " +
                                     (*fwd)->endpoint() +
                                     "\n"
                                     "etcd-dial-timeout: 1s\n"
                                     "etcd-prefix: /" +
                                     Unique("late") + "/\n");
  ServerProcess server({"--config", config});
  ASSERT_FALSE(server.url().empty())
      << "serve did not start while its backend was unreachable";
  EXPECT_EQ(HttpCode(server.url() + "/healthz"), 200);
  const absl::Time asked = absl::Now();
  EXPECT_EQ(HttpCode(server.url() + "/readyz"), 503);
  EXPECT_LT(absl::Now() - asked, absl::Seconds(1));
  const std::string repo = Unique("late") + "/app";
  CliResult early = Cli(server.url(), {"acquire", "--repo", repo, "--run",
                                       "ns/r1", "--limit", "1"});
  EXPECT_EQ(early.code, 69) << early.out;
  EXPECT_THAT(early.out, HasSubstr("not connected yet"));

  (*fwd)->SetDown(false);
  EXPECT_TRUE(
      Eventually([&] { return HttpCode(server.url() + "/readyz") == 200; },
                 absl::Seconds(15)));
  CliResult later = Cli(server.url(), {"acquire", "--repo", repo, "--run",
                                       "ns/r1", "--limit", "1"});
  EXPECT_EQ(later.code, 0) << later.out;
  EXPECT_EQ(InUse(server.url(), repo), 1);
}

// `serve` on PostgreSQL through a forwarder that goes down (every
// connection cut, new ones refused) and comes back: /readyz answers 503
// within a second while it is down (it waited out the 30 s request timeout
// before), and a submit is granted soon after it is back.
TEST(CliE2ETest, ReadyzAnswersWithinASecondWhilePostgreSQLIsDown) {
  auto pg = conformance::TestPostgreSQLConfig();
  ASSERT_TRUE(pg.ok()) << pg.status();
  auto fwd = conformance::TcpForwarder::Start(pg->host + ":" +
                                              std::to_string(pg->port));
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  const std::string ep = (*fwd)->endpoint();
  std::string config =
      WriteFile("pg-fwd.yaml",
                "concurrency-driver: postgresql\n"
                "postgresql-host: 127.0.0.1\n"
                "postgresql-port: " +
                    ep.substr(ep.rfind(':') + 1) + "\n" +
                    "postgresql-database: " + pg->database + "\n" +
                    "postgresql-username: " + pg->username + "\n" +
                    "postgresql-password-file: " +
                    conformance::EnvOr("PAC_TEST_PG_PASSWORD_FILE") + "\n" +
                    "postgresql-ssl-mode: disable\n"
                    "postgresql-connection-timeout: 3s\n");
  ServerProcess server({"--config", config});
  ASSERT_FALSE(server.url().empty());
  ASSERT_EQ(HttpCode(server.url() + "/readyz"), 200);
  (*fwd)->SetDown(true);
  for (int i = 0; i < 3; ++i) {
    const absl::Time asked = absl::Now();
    EXPECT_EQ(HttpCode(server.url() + "/readyz"), 503);
    const absl::Duration took = absl::Now() - asked;
    std::printf("[ timing ] /readyz with PostgreSQL down: %s\n",
                absl::FormatDuration(took).c_str());
    EXPECT_LT(took, absl::Seconds(1));
  }
  (*fwd)->SetDown(false);
  const absl::Time back = absl::Now();
  const std::string repo = Unique("pgback") + "/app";
  CliResult r = Cli(server.url(), {"acquire", "--repo", repo, "--run", "ns/r1",
                                   "--limit", "1"});
  EXPECT_EQ(r.code, 0) << r.out;
  std::printf("[ timing ] first grant %s after PostgreSQL was back\n",
              absl::FormatDuration(absl::Now() - back).c_str());
  EXPECT_EQ(HttpCode(server.url() + "/readyz"), 200);
}

}  // namespace
}  // namespace pac::concurrency
