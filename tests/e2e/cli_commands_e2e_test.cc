// End to end: the CLI's own behaviour through the real `pac-concurrency`
// binary: its commands and flags (version, delete, renew, list,
// completion, unknown commands), --log-level, --timeout, `config validate`
// and the shipped example configurations, and `-` as standard input.
// (cli_e2e_test.cc holds the server, TLS, `run` and two-server cases.)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_process.h"

namespace pac::concurrency {
namespace {

using ::testing::HasSubstr;

// serve logs its info lines by default, and none with --log-level warn
// (warn used to be taken as "the default", which for serve is info).
TEST(CliE2ETest, ServeLogLevelWarnLogsNoInfoLines) {
  for (bool warn : {false, true}) {
    std::vector<std::string> args{Binary(), "serve", "--listen", "127.0.0.1:0"};
    if (warn) args.insert(args.end(), {"--log-level", "warn"});
    Child c = Spawn(args);
    // SIGTERM only once it serves (before that it would kill, not stop it).
    std::string out;
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (out.find("serving on") == std::string::npos &&
           absl::Now() < deadline) {
      pollfd p{c.out, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[256];
      ssize_t n = read(c.out, buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, n);
    }
    kill(c.pid, SIGTERM);
    std::string rest;
    EXPECT_EQ(Finish(c, &rest), 0);
    out += rest;
    EXPECT_THAT(out, HasSubstr("serving on"));
    EXPECT_EQ(out.find("shutting down") != std::string::npos, !warn)
        << (warn ? "--log-level warn" : "default") << ":\n"
        << out;
    EXPECT_EQ(out.find("[info]") != std::string::npos, !warn) << out;
  }
}

// Issue 19, observation 8: `config validate` of a whole Pipelines-as-Code
// ConfigMap printed the keys it ignores verbatim, secrets included. It
// prints only the keys it reads, passwords as ***, and counts the rest.
TEST(CliE2ETest, ConfigValidatePrintsOnlyItsKeysWithSecretsHidden) {
  const std::string cm = WriteFile(
      "pac-cm.yaml",
      "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pipelines-as-code\n"
      "data:\n  concurrency-driver: postgresql\n  postgresql-host: db\n"
      "  postgresql-password: hunter2\n  github-token: ghp_secret123\n"
      "  webhook-secret: whsec_abc\n");
  for (const char* output : {"table", "json"}) {
    CliResult r;
    r.code = Finish(Spawn({Binary(), "-o", output, "config", "validate", cm}),
                    &r.out);
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_THAT(r.out, HasSubstr("postgresql-host"));
    EXPECT_THAT(r.out, HasSubstr("***"));
    for (const char* secret : {"hunter2", "ghp_secret123", "whsec_abc",
                               "github-token", "webhook-secret"}) {
      EXPECT_THAT(r.out, ::testing::Not(HasSubstr(secret))) << output;
    }
  }
}

// The configurations shipped in examples/config/ are valid, and `config
// validate` prints the effective values: a PAC_* variable overrides the
// file and says so; an unreadable referenced file is exit 2 naming its key.
TEST(CliE2ETest, ConfigValidateShowsOverridesAndAcceptsTheShippedExamples) {
  const std::string examples =
      std::string(PAC_SOURCE_DIR) + "/examples/config/";
  const std::string pw = WriteFile("db-password", "s3cret\n");
  const std::string pw_env = "PAC_POSTGRESQL_PASSWORD_FILE=" + pw;
  for (const char* name :
       {"memory.yaml", "postgresql.yaml", "etcd.yaml", "pac-configmap.yaml"}) {
    CliResult r;
    r.code = Finish(
        Spawn({Binary(), "config", "validate", examples + name}, {pw_env}),
        &r.out);
    EXPECT_EQ(r.code, 0) << name << ": " << r.out;
  }
  CliResult r;
  r.code = Finish(
      Spawn({Binary(), "config", "validate", examples + "postgresql.yaml"},
            {pw_env, "PAC_POSTGRESQL_PORT=6543"}),
      &r.out);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out,
              HasSubstr("postgresql-port: 6543 (from PAC_POSTGRESQL_PORT)"));
  EXPECT_THAT(r.out, HasSubstr("postgresql-host: localhost\n"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("s3cret")));
  r.code = Finish(Spawn({Binary(), "-o", "json", "config", "validate",
                         examples + "postgresql.yaml"},
                        {pw_env, "PAC_POSTGRESQL_PORT=6543"}),
                  &r.out);
  EXPECT_EQ(r.json()["settings"]["postgresql-port"], "6543") << r.out;
  EXPECT_EQ(r.json()["from_environment"]["postgresql-port"],
            "PAC_POSTGRESQL_PORT");
  // What --config would refuse, validate refuses.
  r.code = Finish(
      Spawn({Binary(), "config", "validate", examples + "postgresql.yaml"},
            {pw_env, "PAC_POSTGRESQL_PORT=many"}),
      &r.out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("postgresql-port"));
  r.code = Finish(
      Spawn({Binary(), "config", "validate", examples + "postgresql.yaml"}),
      &r.out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("postgresql-password-file: cannot read file"));
  r.code =
      Finish(Spawn({Binary(), "config", "validate", examples + "etcd.yaml"},
                   {"PAC_ETCD_ENDPOINTS=http://"}),
             &r.out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("etcd-endpoints"));
}

// Issue 26, point 4: the commands a user looks for (version, delete,
// renew, list), an unknown command named with the closest one, shell
// completion, and the global flags in each command's --help. Point 8: a
// release with a stale --lease-id says it does not match.
TEST(CliE2ETest, VersionDeleteRenewListCompletionAndUnknownCommands) {
  ServerProcess server;
  const std::string& u = server.url();
  CliResult r = Cli(u, {"stauts"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("unknown command \"stauts\" (did you mean "
                               "\"status\"?)"));
  r = Cli(u, {"-o", "json", "frobnicate"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("unknown command \"frobnicate\""));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("did you mean")));
  // A global flag's value is not taken for the command.
  EXPECT_EQ(Cli(u, {"--timeout", "5s", "status"}).code, 0);

  r.code = Finish(Spawn({Binary(), "--version"}), &r.out);
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, ::testing::MatchesRegex(
                         "pac-concurrency [0-9]+\\.[0-9]+\\.[0-9]+\n"));
  r = Cli(u, {"-o", "json", "version"});
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.json()["server"]["driver"], "memory");
  EXPECT_EQ(r.json()["server"]["version"], r.json()["client"]["version"]);
  std::string metrics;
  Finish(Spawn({"/usr/bin/curl", "-s", u + "/metrics"}), &metrics);
  EXPECT_THAT(
      metrics,
      ::testing::ContainsRegex(
          "pac_build_info\\{driver=\"memory\",version=\"[0-9.]+\"\\} 1"));

  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/del", "--run", "ns/a", "--limit",
                    "1", "-o", "json"})
                .code,
            0);
  r = Cli(u, {"-o", "json", "acquire", "--repo", "ns/ren", "--run", "ns/a",
              "--limit", "1"});
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string lease = r.json()["lease"]["lease_id"];
  r = Cli(u, {"renew", "--lease-id", lease});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("renewed lease " + lease + " of ns/a"));
  r = Cli(u, {"renew", "--lease-id", "mnosuchlease"});
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("error: "));
  r = Cli(u, {"release", "--repo", "ns/ren", "--run", "ns/a", "--lease-id",
              "mstale"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("--lease-id mstale does not match the lease "
                               "ns/a holds (" +
                               lease + ")"));
  EXPECT_EQ(InUse(u, "ns/ren"), 1);

  // Advice names the command and flag, never an HTTP route.
  r = Cli(u, {"acquire", "--repo", "ns/nolimit", "--run", "ns/x"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("pass --limit N (0 = unlimited) or set it "
                               "first with `pac-concurrency limit --repo "
                               "ns/nolimit N`"));
  EXPECT_THAT(r.out, ::testing::Not(HasSubstr("/v1/")));
  // A character outside the key alphabet is shown as itself.
  r = Cli(u, {"acquire", "--repo", "ns/caf\xc3\xa9", "--run", "ns/x"});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("contains the character '\xc3\xa9'"));

  r = Cli(u, {"list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("ns/del"));
  r = Cli(u, {"delete", "--repo", "ns/del"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("--yes"));
  EXPECT_EQ(InUse(u, "ns/del"), 1);
  r = Cli(u, {"delete", "--repo", "ns/del", "--yes"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(InUse(u, "ns/del"), 0);
  EXPECT_THAT(Cli(u, {"list"}).out, ::testing::Not(HasSubstr("ns/del")));

  // Completion: the generated script completes commands and their flags.
  const std::string script = std::string("source <(") + Binary() +
                             " completion bash); "
                             "COMP_WORDS=(pac-concurrency sta); COMP_CWORD=1; "
                             "_pac_concurrency; echo \"[${COMPREPLY[*]}]\"; "
                             "COMP_WORDS=(pac-concurrency acquire --re); "
                             "COMP_CWORD=2; _pac_concurrency; "
                             "echo \"[${COMPREPLY[*]}]\"";
  r.code = Finish(Spawn({"/bin/bash", "-c", script}), &r.out);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("[status]\n[--repo]\n"));
  r.code = Finish(Spawn({Binary(), "completion", "zsh"}), &r.out);
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, ::testing::StartsWith("#compdef pac-concurrency\n"));
  EXPECT_THAT(r.out, HasSubstr("bashcompinit"));
  // Every command's help lists the global flags.
  for (const char* cmd : {"status", "run", "release", "serve"}) {
    r.code = Finish(Spawn({Binary(), cmd, "--help"}), &r.out);
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_THAT(r.out, HasSubstr("Global flags")) << cmd;
    EXPECT_THAT(r.out, HasSubstr("--server")) << cmd;
    EXPECT_THAT(r.out, HasSubstr("--timeout")) << cmd;
  }
}

// Issue 26, point 6: --timeout is exact. A watch (and so acquire --wait
// and run, which wait on one) ended only at the heartbeat after the
// deadline (11 s became 20 s), and `watch` then exited 0; --config waited
// out the backend's own connect timeout (5 s for etcd, 30 s for
// PostgreSQL) whatever --timeout said.
TEST(CliE2ETest, TimeoutIsExactForWatchesWaitsAndConnecting) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/t", "--run", "ns/holder",
                    "--limit", "1"})
                .code,
            0);
  const absl::Time start = absl::Now();
  Child watch = Spawn(
      {Binary(), "--server", u, "--timeout", "11s", "watch", "--repo", "ns/t"});
  Child wait = Spawn({Binary(), "--server", u, "--timeout", "11s", "acquire",
                      "--wait", "--repo", "ns/t", "--run", "ns/w"});
  std::string out;
  EXPECT_EQ(Finish(watch, &out), 124) << out;
  EXPECT_THAT(out, HasSubstr("--timeout reached"));
  EXPECT_EQ(Finish(wait, &out), 124) << out;
  const absl::Duration took = absl::Now() - start;
  std::printf("[ timing ] two commands with --timeout 11s: %s\n",
              absl::FormatDuration(took).c_str());
  EXPECT_GE(took, absl::Seconds(11));
  EXPECT_LT(took, absl::Seconds(16));  // was 20 s: the next heartbeat

  // A backend that accepts connections and never answers.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  const std::string pw = WriteFile("silent-pw", "x\n");
  const std::string examples =
      std::string(PAC_SOURCE_DIR) + "/examples/config/";
  for (const auto& [config, env] :
       std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"etcd.yaml", {"PAC_ETCD_ENDPOINTS=127.0.0.1:" + port}},
           {"postgresql.yaml",
            {"PAC_POSTGRESQL_HOST=127.0.0.1", "PAC_POSTGRESQL_PORT=" + port,
             "PAC_POSTGRESQL_PASSWORD_FILE=" + pw}}}) {
    const absl::Time asked = absl::Now();
    CliResult r;
    r.code = Finish(Spawn({Binary(), "--config", examples + config, "--timeout",
                           "2s", "status"},
                          env),
                    &r.out);
    const absl::Duration t = absl::Now() - asked;
    std::printf("[ timing ] --config %s, silent backend, --timeout 2s: %s\n",
                config.c_str(), absl::FormatDuration(t).c_str());
    EXPECT_EQ(r.code, 124) << config << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr("--timeout reached while connecting"));
    EXPECT_LT(t, absl::Seconds(4)) << config;
  }
  close(fd);
}

// Issue 26, point 8: "-" is standard input for every file argument.
TEST(CliE2ETest, DashIsStandardInputForFileArguments) {
  ServerProcess server;
  const std::string& u = server.url();
  const std::string bin = Binary();
  CliResult r;
  r.code = Finish(
      Spawn({"/bin/bash", "-c",
             "printf 'kind: Repository\nmetadata: {name: app, namespace: "
             "stdin}\nspec: {concurrency_limit: 3}\n' | " +
                 bin + " --server " + u + " limit -f -"}),
      &r.out);
  EXPECT_EQ(r.code, 0) << r.out;
  r = Cli(u, {"-o", "json", "status", "--repo", "stdin/app"});
  EXPECT_EQ(r.json()["concurrency_limit"], 3) << r.out;
  r.code = Finish(
      Spawn({"/bin/bash", "-c",
             "printf 'driver: memory\n' | " + bin + " config validate -"}),
      &r.out);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("valid: driver memory"));
}

}  // namespace
}  // namespace pac::concurrency
