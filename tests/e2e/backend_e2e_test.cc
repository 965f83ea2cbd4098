// End to end: `pac-concurrency serve` when its backend is unreachable at
// start or goes down while it serves (a TCP forwarder in front of the test
// servers): it serves, /readyz answers 503 within a second, and it serves
// again once the backend is back; and `run --config` whose path to its
// backend goes dead stops its command before its lease can expire.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

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

// The etcd test server's first endpoint as "host:port".
std::string FirstEtcdEndpoint() {
  const std::string endpoints = conformance::EnvOr("PAC_TEST_ETCD_ENDPOINTS");
  std::string first = endpoints.substr(0, endpoints.find(','));
  if (first.find("://") != std::string::npos) {
    first = first.substr(first.find("://") + 3);
  }
  return first;
}

// A forwarder in front of the PostgreSQL test server.
absl::StatusOr<std::unique_ptr<conformance::TcpForwarder>> PgForwarder() {
  auto pg = conformance::TestPostgreSQLConfig();
  if (!pg.ok()) return pg.status();
  return conformance::TcpForwarder::Start(pg->host + ":" +
                                          std::to_string(pg->port));
}

// A PostgreSQL configuration file for the test server, or for `forwarder`
// in front of it, with lease TTL `ttl`.
std::string PgConfigFile(const std::string& name, const std::string& ttl,
                         const conformance::TcpForwarder* forwarder = nullptr) {
  auto pg = conformance::TestPostgreSQLConfig();
  EXPECT_TRUE(pg.ok()) << pg.status();
  if (!pg.ok()) return "";
  int port = pg->port;
  if (forwarder != nullptr) {
    const std::string ep = forwarder->endpoint();
    port = std::stoi(ep.substr(ep.rfind(':') + 1));
  }
  return WriteFile(name,
                   "concurrency-driver: postgresql\n"
                   "postgresql-host: 127.0.0.1\n"
                   "postgresql-port: " +
                       std::to_string(port) + "\n" +
                       "postgresql-database: " + pg->database + "\n" +
                       "postgresql-username: " + pg->username + "\n" +
                       "postgresql-password-file: " +
                       conformance::EnvOr("PAC_TEST_PG_PASSWORD_FILE") + "\n" +
                       "postgresql-ssl-mode: disable\n"
                       "postgresql-connection-timeout: 2s\n"
                       "postgresql-lease-ttl: " +
                       ttl + "\n");
}

// `serve` whose etcd is unreachable at start (a forwarder in front of the
// test server, refusing): it serves, /readyz answers 503 at once, calls
// answer 503 naming the cause, and once etcd answers it is ready and
// serves. Before, it exited 69 at start.
TEST(CliE2ETest, ServeStartsBeforeItsBackendAndIsReadyOnceItAnswers) {
  const std::string first = FirstEtcdEndpoint();
  ASSERT_FALSE(first.empty())
      << "PAC_TEST_ETCD_ENDPOINTS is not set: run through `make test`";
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

// `serve` on PostgreSQL through a forwarder that stalls (bytes taken, no
// answer), then goes down (every connection cut, new ones refused) and
// comes back: /readyz answers 503 within a second while it stalls or is
// down (it waited out the 30 s request timeout
// before), and a submit is granted soon after it is back.
TEST(CliE2ETest, ReadyzAnswersWithinASecondWhilePostgreSQLIsDown) {
  auto fwd = PgForwarder();
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  const std::string config = PgConfigFile("pg-fwd.yaml", "1h", fwd->get());
  ServerProcess server({"--config", config});
  ASSERT_FALSE(server.url().empty());
  ASSERT_EQ(HttpCode(server.url() + "/readyz"), 200);
  // Three probes, each answered 503 within a second.
  auto probes_fail_fast = [&](const char* how) {
    for (int i = 0; i < 3; ++i) {
      const absl::Time asked = absl::Now();
      EXPECT_EQ(HttpCode(server.url() + "/readyz"), 503) << how;
      const absl::Duration took = absl::Now() - asked;
      std::printf("[ timing ] /readyz with PostgreSQL %s: %s\n", how,
                  absl::FormatDuration(took).c_str());
      EXPECT_LT(took, absl::Seconds(1)) << how;
    }
  };
  // A backend that takes the bytes and never answers (a stalled network).
  // Cutting the connections below clears the stalled ones.
  (*fwd)->BlackHole(true);
  probes_fail_fast("stalled");
  (*fwd)->BlackHole(false);
  (*fwd)->SetDown(true);
  probes_fail_fast("down");
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

// Issue 21, points 1 and 7: `run --config` (the Manager in its own
// process) whose path to the backend goes dead, every byte dropped and no
// connection cut. It cannot renew, so it must stop its command (SIGTERM,
// then SIGKILL: this one ignores SIGTERM) before its lease can expire; a
// waiter on a working path is admitted after the lease expired, and its
// command must not have started while the holder's still ran.
void HolderCutOffStopsBeforeTheWaiterRuns(const std::string& cut_config,
                                          const std::string& direct_config,
                                          conformance::TcpForwarder& fwd,
                                          absl::Duration ttl) {
  const std::string repo = Unique("cut") + "/app";
  const std::string pid_file = TempDir() + "/" + Unique("holder") + ".pid";
  const std::string marker = TempDir() + "/" + Unique("waiter") + ".ran";
  Child holder =
      Spawn({Binary(), "--config", cut_config, "run", "--repo", repo, "--run",
             "ns/a", "--limit", "1", "--", "sh", "-c",
             "echo $$ > " + pid_file + "; trap '' TERM; exec sleep 605"});
  std::string seen = ReadUntil(holder, "acquired a slot");
  ASSERT_THAT(seen, HasSubstr("acquired a slot"));
  Child waiter = Spawn({Binary(), "--config", direct_config, "run", "--repo",
                        repo, "--run", "ns/b", "--", "touch", marker});
  seen = ReadUntil(waiter, "queued at position 1");
  ASSERT_THAT(seen, HasSubstr("queued at position 1"));
  pid_t command = 0;
  ASSERT_TRUE(Eventually([&] {
    std::ifstream in(pid_file);
    return static_cast<bool>(in >> command) && command > 0;
  }));

  fwd.BlackHole(true);
  const absl::Time cut = absl::Now();
  // The holder's command is gone once `run` has killed and reaped it.
  const bool stopped = Eventually([&] { return kill(command, 0) != 0; },
                                  ttl + absl::Seconds(10));
  const absl::Duration took = absl::Now() - cut;
  const bool waiter_ran_first = access(marker.c_str(), F_OK) == 0;
  if (!stopped) kill(command, SIGKILL);
  std::printf("[ timing ] the holder's command stopped %s after the cut\n",
              absl::FormatDuration(took).c_str());
  EXPECT_TRUE(stopped);
  EXPECT_LT(took, ttl);
  EXPECT_FALSE(waiter_ran_first)
      << "the waiter's command ran while the holder's still ran";
  std::string out;
  EXPECT_EQ(Finish(holder, &out), 128 + SIGKILL) << out;
  EXPECT_THAT(out, HasSubstr("stopping the command"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("released the slot")));

  // Once the holder's lease has expired the waiter is admitted.
  std::atomic<bool> finished{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 600 && !finished; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    if (!finished) kill(waiter.pid, SIGKILL);
  });
  std::string wout;
  const int wcode = Finish(waiter, &wout);
  finished = true;
  watchdog.join();
  EXPECT_EQ(wcode, 0) << wout;
  EXPECT_EQ(access(marker.c_str(), F_OK), 0) << wout;
}

TEST(CliE2ETest, RunWithConfigCutOffFromEtcdStopsItsCommandInTime) {
  const std::string first = FirstEtcdEndpoint();
  ASSERT_FALSE(first.empty())
      << "PAC_TEST_ETCD_ENDPOINTS is not set: run through `make test`";
  auto fwd = conformance::TcpForwarder::Start(first);
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  const std::string prefix = "/" + Unique("cut") + "/";
  auto config = [&](const std::string& name, const std::string& endpoint) {
    return WriteFile(name,
                     "concurrency-driver: etcd\n"
                     "etcd-endpoints: " +
                         endpoint +
                         "\n"
                         "etcd-dial-timeout: 1s\n"
                         "etcd-lease-ttl: 4s\n"
                         "etcd-prefix: " +
                         prefix + "\n");
  };
  HolderCutOffStopsBeforeTheWaiterRuns(
      config("etcd-cut.yaml", (*fwd)->endpoint()),
      config("etcd-direct.yaml", first), **fwd, absl::Seconds(4));
}

TEST(CliE2ETest, RunWithConfigCutOffFromPostgreSQLStopsItsCommandInTime) {
  auto fwd = PgForwarder();
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  HolderCutOffStopsBeforeTheWaiterRuns(
      PgConfigFile("pg-cut.yaml", "4s", fwd->get()),
      PgConfigFile("pg-direct.yaml", "4s"), **fwd, absl::Seconds(4));
}

}  // namespace
}  // namespace pac::concurrency
