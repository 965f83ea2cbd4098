// End to end: the real `pac-concurrency` binary, started as a server and
// driven over HTTP and through its CLI (exit codes, JSON output), `run`
// killed with SIGTERM and SIGKILL, and two servers sharing one PostgreSQL
// and one etcd that never admit more than the limit between them.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "src/server/remote_api.h"
#include "tests/conformance/pg_test_env.h"
#include "tests/e2e/e2e_process.h"

namespace pac::concurrency {
namespace {

using server::Json;
using server::RemoteApi;
using ::testing::HasSubstr;

TEST(CliE2ETest, CommandsAgainstAServerGiveExitCodesAndJson) {
  ServerProcess server;
  ASSERT_FALSE(server.url().empty());
  const std::string& u = server.url();
  EXPECT_EQ(Cli(u, {"limit", "--repo", "ns/app", "1"}).code, 0);
  CliResult a =
      Cli(u, {"acquire", "--repo", "ns/app", "--run", "ns/a", "-o", "json"});
  EXPECT_EQ(a.code, 0) << a.out;
  EXPECT_TRUE(a.json()["acquired"].get<bool>());
  CliResult b =
      Cli(u, {"acquire", "--repo", "ns/app", "--run", "ns/b", "-o", "json"});
  EXPECT_EQ(b.code, 3) << b.out;
  EXPECT_EQ(b.json()["position"], 1);
  CliResult st = Cli(u, {"status", "--repo", "ns/app", "--output", "json"});
  ASSERT_EQ(st.code, 0);
  EXPECT_EQ(st.json()["in_use"], 1);
  EXPECT_EQ(st.json()["queued"][0]["pipeline_run"], "ns/b");
  CliResult q = Cli(u, {"queue", "--repo", "ns/app"});
  EXPECT_THAT(q.out, HasSubstr("ns/b"));
  // Every repository of a namespace, and a bad namespace name.
  EXPECT_EQ(Cli(u, {"limit", "--repo", "other/app", "1"}).code, 0);
  CliResult list = Cli(u, {"status", "--namespace", "ns", "-o", "json"});
  ASSERT_EQ(list.code, 0) << list.out;
  ASSERT_EQ(list.json()["repositories"].size(), 1u) << list.out;
  EXPECT_EQ(list.json()["repositories"][0]["repository"], "ns/app");
  EXPECT_EQ(list.json()["repositories"][0]["queue_depth"], 1);
  CliResult every = Cli(u, {"status", "-o", "json"});
  ASSERT_EQ(every.code, 0) << every.out;
  EXPECT_EQ(every.json()["repositories"].size(), 2u) << every.out;
  CliResult bad_ns = Cli(u, {"status", "--namespace", "Bad_NS"});
  EXPECT_EQ(bad_ns.code, 2) << bad_ns.out;
  EXPECT_THAT(bad_ns.out, HasSubstr("namespace"));
  CliResult rel =
      Cli(u, {"release", "--repo", "ns/app", "--run", "ns/a", "-o", "json"});
  EXPECT_EQ(rel.code, 0);
  EXPECT_EQ(rel.json()["admitted"][0]["pipeline_run"], "ns/b");
  // Bad input: exit 2 and a message naming what is wrong.
  CliResult bad = Cli(u, {"acquire", "--repo", "Bad/x", "--run", "ns/a"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_THAT(bad.out, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_EQ(Cli(u, {"acquire", "--repo", "ns/app"}).code, 2);  // no --run
  // An unreachable server: exit 69.
  CliResult down = Cli("http://127.0.0.1:1", {"status", "--repo", "ns/app"});
  EXPECT_EQ(down.code, 69);
  EXPECT_THAT(down.out, HasSubstr("UNAVAILABLE"));
  // Watches may not take every server thread: refused before listening.
  CliResult watches =
      Cli(u, {"serve", "--listen", "127.0.0.1:0", "--threads", "8",
              "--max-threads", "16", "--max-watches", "16"});
  EXPECT_EQ(watches.code, 2);
  EXPECT_THAT(watches.out,
              HasSubstr("--max-watches: must be below the most threads (16"));
  CliResult threads = Cli(u, {"serve", "--listen", "127.0.0.1:0", "--threads",
                              "8", "--max-threads", "6"});
  EXPECT_EQ(threads.code, 2);
  EXPECT_THAT(threads.out, HasSubstr("--max-threads: must be at least"));
  // The port of a running server is refused, not shared with it (if it
  // were, `timeout` ends the second server: 124).
  CliResult taken;
  taken.code = Finish(Spawn({"/usr/bin/timeout", "10", Binary(), "serve",
                             "--listen", u.substr(u.find("//") + 2)}),
                      &taken.out);
  EXPECT_EQ(taken.code, 69) << taken.out;
  EXPECT_THAT(taken.out, HasSubstr("address in use"));
  // Config validation.
  std::string good =
      WriteFile("good.yaml",
                "concurrency-driver: postgresql\n"
                "postgresql-host: db\npostgresql-password: hunter2\n");
  CliResult v = Cli(u, {"config", "validate", good});
  EXPECT_EQ(v.code, 0) << v.out;
  EXPECT_THAT(v.out, HasSubstr("postgresql"));
  EXPECT_THAT(v.out, ::testing::Not(HasSubstr("hunter2")));
  std::string broken = WriteFile("bad.yaml",
                                 "concurrency-driver: postgresql\n"
                                 "postgresql-port: many\n");
  CliResult vb = Cli(u, {"config", "validate", broken});
  EXPECT_EQ(vb.code, 2);
  EXPECT_THAT(vb.out, HasSubstr("postgresql-port"));
  // Import from kubectl output, through the CLI.
  std::string prs = WriteFile("prs.json", R"({"kind":"List","items":[
    {"metadata":{"name":"old","namespace":"imp","creationTimestamp":"2026-01-01T00:00:00Z",
      "annotations":{"pipelinesascode.tekton.dev/state":"started",
                     "pipelinesascode.tekton.dev/repository":"repo"}}},
    {"metadata":{"name":"next","namespace":"imp","creationTimestamp":"2026-01-01T00:01:00Z",
      "annotations":{"pipelinesascode.tekton.dev/state":"queued",
                     "pipelinesascode.tekton.dev/repository":"repo",
                     "pipelinesascode.tekton.dev/execution-order":"imp/next"}},
     "spec":{"status":"PipelineRunPending"}}]})");
  std::string repos =
      WriteFile("repos.yaml",
                "kind: Repository\nmetadata: {name: repo, namespace: imp}\n"
                "spec: {concurrency_limit: 1}\n");
  CliResult imp = Cli(u, {"import", "--pipelineruns", prs, "--repositories",
                          repos, "-o", "json"});
  ASSERT_EQ(imp.code, 0) << imp.out;
  EXPECT_EQ(imp.json()["queued"][0]["pipeline_run"], "imp/next");
  EXPECT_EQ(InUse(u, "imp/repo"), 1);
}

// Issue 19, observation 5: the CLI aborted (exit 134) on invalid UTF-8 in
// --run, --creation-time or an input file and on --server ftp://x, and
// crashed (exit 139) importing JSON nested 100,000 deep. Each is exit 2
// with a message naming the argument, the byte shown escaped, and the
// server, which saw none of it, still serves.
TEST(CliE2ETest, BadBytesUrlsAndDeepJsonAreExit2WithAMessage) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"limit", "--repo", "ns/app", "1"}).code, 0);
  const std::string deep = WriteFile(
      "deep.json", std::string(100000, '[') + std::string(100000, ']'));
  const std::string bad_json =
      WriteFile("bad.json", "{\"items\":[{\"metadata\":{\"name\":\"\xff\"}}]}");
  const std::string bad_yaml = WriteFile(
      "bad.yaml",
      "kind: Repository\nmetadata:\n  name: \"a\xff\"\n  namespace: ns\n");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"--server", u, "acquire", "--repo", "ns/app", "--run", "ns/a\xff"},
       "/pipeline_run (\"ns/a\\xff\") is not valid UTF-8"},
      {{"--server", u, "acquire", "--repo", "ns/app", "--run", "ns/b",
        "--creation-time", "2024\xff"},
       "/creation_time"},
      {{"--server", "ftp://x", "status"}, "scheme \"ftp\" is not supported"},
      {{"--server", "http://", "status"}, "names no host"},
      {{"--server", "localhost:8080", "status"}, "is not a URL"},
      {{"--server", u, "import", "--pipelineruns", deep},
       "nested deeper than 128 levels"},
      {{"--server", u, "import", "--pipelineruns", bad_json},
       "ill-formed UTF-8 byte; last read: '\"\\xff'"},
      {{"--server", u, "import", "--repositories", bad_yaml},
       "--repositories: byte 37 is not valid UTF-8 (\\xff)"},
  };
  for (const Case& k : cases) {
    std::vector<std::string> full{Binary()};
    full.insert(full.end(), k.args.begin(), k.args.end());
    CliResult r;
    r.code = Finish(Spawn(full), &r.out);
    EXPECT_EQ(r.code, 2) << k.args[k.args.size() - 1] << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr(k.message));
    EXPECT_THAT(r.out, ::testing::Not(HasSubstr("terminate called")));
  }
  EXPECT_EQ(InUse(u, "ns/app"), 0);
}

// Runs a shell command; its exit code.
int Shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

// A CA, a server certificate for 127.0.0.1 it signed, a client
// certificate it signed, and another CA, made with the openssl command.
struct TestPki {
  std::string dir, ca, server_cert, server_key, client_cert, client_key,
      other_ca;
  static TestPki Make() {
    TestPki p;
    p.dir = TempDir() + "/pki";
    const std::string d = p.dir;
    const std::string cmd =
        "set -e; mkdir -p " + d + "; cd " + d +
        "; for ca in ca other-ca; do openssl req -x509 -newkey rsa:2048 "
        "-nodes -days 2 -subj /CN=$ca -keyout $ca.key -out $ca.crt "
        "2>/dev/null; done; printf 'subjectAltName=IP:127.0.0.1\\n' > "
        "san.ext; openssl req -newkey rsa:2048 -nodes -subj /CN=server "
        "-keyout server.key -out server.csr 2>/dev/null; openssl x509 -req "
        "-in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
        "-extfile san.ext -out server.crt 2>/dev/null; openssl req -newkey "
        "rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr "
        "2>/dev/null; openssl x509 -req -in client.csr -CA ca.crt -CAkey "
        "ca.key -CAcreateserial -days 2 -out client.crt 2>/dev/null";
    EXPECT_EQ(Shell(cmd), 0) << "openssl could not make the test certificates";
    p.ca = d + "/ca.crt";
    p.other_ca = d + "/other-ca.crt";
    p.server_cert = d + "/server.crt";
    p.server_key = d + "/server.key";
    p.client_cert = d + "/client.crt";
    p.client_key = d + "/client.key";
    return p;
  }
};

CliResult RunCli(std::vector<std::string> args) {
  std::vector<std::string> full{Binary()};
  full.insert(full.end(), args.begin(), args.end());
  CliResult r;
  r.code = Finish(Spawn(full), &r.out);
  return r;
}

// serve --tls-cert/--tls-key: the CLI and curl with the right CA work; the
// wrong CA and a plain-HTTP client fail with messages that say why.
TEST(CliE2ETest, TlsServerWithRightAndWrongCasAndPlainHttp) {
  TestPki pki = TestPki::Make();
  ServerProcess server(
      {"--tls-cert", pki.server_cert, "--tls-key", pki.server_key});
  ASSERT_EQ(server.url().rfind("https://", 0), 0u) << server.url();
  const std::string& u = server.url();
  CliResult ok = RunCli(
      {"--server", u, "--ca-file", pki.ca, "limit", "--repo", "ns/app", "1"});
  EXPECT_EQ(ok.code, 0) << ok.out;
  CliResult st = RunCli(
      {"--server", u, "--ca-file", pki.ca, "status", "--repo", "ns/app"});
  EXPECT_EQ(st.code, 0) << st.out;
  EXPECT_THAT(st.out, HasSubstr("ns/app"));
  EXPECT_EQ(
      Shell("curl -sf --cacert " + pki.ca + " " + u + "/healthz >/dev/null"),
      0);
  // TLS 1.2 and later only.
  const std::string hostport = u.substr(8);
  EXPECT_EQ(Shell("openssl s_client -connect " + hostport +
                  " -tls1_2 -CAfile " + pki.ca + " </dev/null >/dev/null 2>&1"),
            0);
  EXPECT_NE(Shell("openssl s_client -connect " + hostport +
                  " -tls1_1 -CAfile " + pki.ca + " </dev/null >/dev/null 2>&1"),
            0);
  // The wrong CA: the server's certificate is not trusted.
  CliResult wrong =
      RunCli({"--server", u, "--ca-file", pki.other_ca, "status"});
  EXPECT_NE(wrong.code, 0);
  EXPECT_THAT(wrong.out, HasSubstr("certificate is not trusted"));
  EXPECT_NE(Shell("curl -sf --cacert " + pki.other_ca + " " + u +
                  "/healthz >/dev/null 2>&1"),
            0);
  // Plain HTTP to the TLS port: told to use https.
  std::string plain = u;
  plain.replace(0, 5, "http");
  CliResult p = RunCli({"--server", plain, "status"});
  EXPECT_EQ(p.code, 2) << p.out;
  EXPECT_THAT(p.out, HasSubstr("speaks HTTPS only"));
  // TLS flags with an http:// server are a usage error.
  CliResult mixed = RunCli({"--server", plain, "--ca-file", pki.ca, "status"});
  EXPECT_EQ(mixed.code, 2) << mixed.out;
  EXPECT_THAT(mixed.out, HasSubstr("https://"));
}

// serve --tls-client-ca: a client without a certificate, or with one of
// another CA, is refused in the handshake; one with a certificate of the
// CA is served.
TEST(CliE2ETest, MutualTlsNeedsAClientCertificateOfTheCa) {
  TestPki pki = TestPki::Make();
  ServerProcess server({"--tls-cert", pki.server_cert, "--tls-key",
                        pki.server_key, "--tls-client-ca", pki.ca});
  const std::string& u = server.url();
  CliResult none = RunCli({"--server", u, "--ca-file", pki.ca, "status"});
  EXPECT_NE(none.code, 0) << none.out;
  EXPECT_THAT(none.out, HasSubstr("--cert and --key"));
  CliResult with = RunCli({"--server", u, "--ca-file", pki.ca, "--cert",
                           pki.client_cert, "--key", pki.client_key, "status"});
  EXPECT_EQ(with.code, 0) << with.out;
  // A certificate of another CA is refused.
  CliResult other = RunCli({"--server", u, "--ca-file", pki.ca, "--cert",
                            pki.dir + "/other-ca.crt", "--key",
                            pki.dir + "/other-ca.key", "status"});
  EXPECT_NE(other.code, 0) << other.out;
  CliResult half = RunCli({"--server", u, "--ca-file", pki.ca, "--cert",
                           pki.client_cert, "status"});
  EXPECT_EQ(half.code, 2) << half.out;
  EXPECT_THAT(half.out, HasSubstr("--cert and --key"));
}

// Through --server, a bad key was a 404 "no route" (exit 1) while --config
// said INVALID_ARGUMENT; a trailing slash in --server failed to connect.
// Keys are checked by the client as by the server (exit 2 naming the
// field); a trailing slash works, and a path prefix is kept (for a server
// behind a path-routing proxy).
TEST(CliE2ETest, ServerUrlsWithSlashesAndBadKeysThroughAServer) {
  ServerProcess server;
  const std::string& u = server.url();
  for (const char* key : {"/a", "ns/", "a/b/c"}) {
    CliResult r = Cli(u, {"status", "--repo", key});
    EXPECT_EQ(r.code, 2) << key << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr("INVALID_ARGUMENT: repository"));
  }
  CliResult bad_run =
      Cli(u, {"acquire", "--repo", "ns/app", "--run", "no-namespace"});
  EXPECT_EQ(bad_run.code, 2) << bad_run.out;
  EXPECT_THAT(bad_run.out, HasSubstr("pipeline_run"));
  EXPECT_EQ(Cli(u + "/", {"limit", "--repo", "ns/app", "1"}).code, 0);
  CliResult prefixed =
      Cli(u + "/behind/a/proxy/", {"status", "--repo", "ns/app"});
  EXPECT_THAT(prefixed.out,
              HasSubstr("/behind/a/proxy/v1/repositories/ns/app"));
}

TEST(CliE2ETest, WatchPrintsEventsAsTheyHappen) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(
      Cli(u, {"acquire", "--repo", "ns/w", "--run", "ns/a", "--limit", "1"})
          .code,
      0);
  Child watch = Spawn({Binary(), "--server", u, "watch", "--repo", "ns/w",
                       "--count", "1", "-o", "json"});
  ASSERT_THAT(ReadUntil(watch, "watching ns/w"), HasSubstr("watching ns/w"));
  ASSERT_EQ(Cli(u, {"release", "--repo", "ns/w", "--run", "ns/a"}).code, 0);
  std::string out;
  EXPECT_EQ(Finish(watch, &out), 0);
  EXPECT_THAT(out, HasSubstr(R"("type":"released")"));
  EXPECT_THAT(out, HasSubstr(R"("pipeline_run":"ns/a")"));
}

TEST(CliE2ETest, RunReleasesAtOnceOnSigterm) {
  ServerProcess server;
  const std::string& u = server.url();
  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/term",
                     "--run", "ns/a", "--limit", "1", "--", "sleep", "30"});
  ASSERT_TRUE(Eventually([&] { return InUse(u, "ns/term") == 1; }));
  kill(run.pid, SIGTERM);
  std::string out;
  EXPECT_EQ(Finish(run, &out), 143) << out;  // the command's status
  EXPECT_THAT(out, HasSubstr("released the slot"));
  // Released at once: the memory driver's TTL (30 min) never came into it.
  EXPECT_EQ(InUse(u, "ns/term"), 0);
}

TEST(CliE2ETest, RunExitsWithTheCommandsStatusAndWaitsInTheQueue) {
  ServerProcess server;
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/q", "--run", "ns/holder",
                    "--limit", "1"})
                .code,
            0);
  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/q", "--run",
                     "ns/waiter", "--", "sh", "-c", "exit 7"});
  ASSERT_TRUE(Eventually([&] {
    RemoteApi api(u, "");
    auto s = api.Status(Context::Background(), "ns/q");
    return s.ok() && (*s)["queue_depth"] == 1;
  }));
  // acquire --wait also says who holds the slot, and leaves the queue when
  // its time is up.
  CliResult waited = Cli(u, {"--timeout", "1s", "acquire", "--wait", "--repo",
                             "ns/q", "--run", "ns/second"});
  EXPECT_EQ(waited.code, 124) << waited.out;
  EXPECT_THAT(waited.out, HasSubstr("queued at position 2"));
  EXPECT_THAT(waited.out, HasSubstr("ns/holder holds a slot (lease "));
  ASSERT_EQ(Cli(u, {"release", "--repo", "ns/q", "--run", "ns/holder"}).code,
            0);
  std::string out;
  EXPECT_EQ(Finish(run, &out), 7) << out;
  EXPECT_THAT(out, HasSubstr("queued at position 1"));
  // Who it waits for, and until when at the latest (the TTL is 30 min).
  EXPECT_THAT(out, HasSubstr("ns/q: 1 of 1 slots in use"));
  EXPECT_THAT(out, HasSubstr("ns/holder holds a slot (lease "));
  EXPECT_THAT(out, ::testing::ContainsRegex(
                       "expires 20[0-9-]+T[0-9:.]+Z, in 29m[0-9]+s\\)"));
  EXPECT_EQ(InUse(u, "ns/q"), 0);
}

// With every watch place of the server taken (--max-watches), a queued
// `run` is refused a watch (429) and polls instead: it keeps its place and
// starts once admitted. `watch` itself reports the refusal.
TEST(CliE2ETest, RunWaitsInTheQueueWhenTheServerRefusesMoreWatches) {
  ServerProcess server({"--threads", "4", "--max-watches", "1"});
  const std::string& u = server.url();
  ASSERT_EQ(Cli(u, {"acquire", "--repo", "ns/full", "--run", "ns/holder",
                    "--limit", "1"})
                .code,
            0);
  Child watch = Spawn({Binary(), "--server", u, "watch", "--repo", "ns/other"});
  ASSERT_THAT(ReadUntil(watch, "watching ns/other"),
              HasSubstr("watching ns/other"));
  CliResult refused = Cli(u, {"watch", "--repo", "ns/full", "--count", "1"});
  EXPECT_NE(refused.code, 0);
  EXPECT_THAT(refused.out, HasSubstr("too many open watches"));

  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/full",
                     "--run", "ns/waiter", "--", "sh", "-c", "exit 7"});
  ASSERT_TRUE(Eventually([&] {
    RemoteApi api(u, "");
    auto s = api.Status(Context::Background(), "ns/full");
    return s.ok() && (*s)["queue_depth"] == 1;
  }));
  // Refused its watch by now, it still waits (it used to give up).
  absl::SleepFor(absl::Milliseconds(1500));
  int status = 0;
  EXPECT_EQ(waitpid(run.pid, &status, WNOHANG), 0) << "run gave up waiting";
  ASSERT_EQ(Cli(u, {"release", "--repo", "ns/full", "--run", "ns/holder"}).code,
            0);
  std::string out;
  EXPECT_EQ(Finish(run, &out), 7) << out;
  EXPECT_THAT(out, HasSubstr("queued at position 1"));
  kill(watch.pid, SIGTERM);
  std::string ignored;
  (void)Finish(watch, &ignored);
}

TEST(CliE2ETest, RunKeepsItsLeaseAliveLongerThanTheTtl) {
  ServerProcess server({}, {"PAC_MEMORY_LEASE_TTL=1s"});
  const std::string& u = server.url();
  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/long",
                     "--run", "ns/a", "--limit", "1", "--", "sleep", "4"});
  ASSERT_TRUE(Eventually([&] { return InUse(u, "ns/long") == 1; }));
  // Four TTLs later the slot is still held by the same lease.
  RemoteApi api(u, "");
  auto first = api.Status(Context::Background(), "ns/long");
  ASSERT_TRUE(first.ok());
  const std::string lease = (*first)["running"][0]["lease_id"];
  absl::SleepFor(absl::Seconds(3));
  auto later = api.Status(Context::Background(), "ns/long");
  ASSERT_TRUE(later.ok());
  ASSERT_EQ((*later)["in_use"], 1);
  EXPECT_EQ((*later)["running"][0]["lease_id"], lease);
  // Nobody else got in meanwhile.
  EXPECT_EQ(
      Cli(u, {"acquire", "--repo", "ns/long", "--run", "ns/b", "--no-queue"})
          .code,
      3);
  std::string out;
  EXPECT_EQ(Finish(run, &out), 0) << out;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("lease lost")));
}

// Issue 21, point 1: with its server killed, `run` kept its command running
// after the lease had expired (it printed "renewal failed" and retried),
// so a waiter admitted elsewhere ran beside it. Now a holder that cannot
// renew before its lease's expiry stops its command before then: SIGTERM,
// and SIGKILL for a command that ignores it; it says so and does not claim
// to have released the slot.
TEST(CliE2ETest, RunStopsItsCommandWhenItCannotRenewBeforeTheLeaseExpires) {
  ServerProcess server({}, {"PAC_MEMORY_LEASE_TTL=4s"});
  const std::string& u = server.url();
  Child run = Spawn({Binary(), "--server", u, "run", "--repo", "ns/app",
                     "--run", "ns/a", "--limit", "1", "--", "sh", "-c",
                     "trap '' TERM; sleep 601"});
  ASSERT_TRUE(Eventually([&] { return InUse(u, "ns/app") == 1; }));
  absl::SleepFor(absl::Milliseconds(1500));  // a renewal or two
  const absl::Time killed = absl::Now();
  server.KillNow();
  // A watchdog, so that a run that never stops fails the test instead of
  // hanging it.
  std::atomic<bool> finished{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 300 && !finished; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    if (!finished) {
      kill(run.pid, SIGKILL);
      (void)Shell("pkill -KILL -f 'sleep 601'");
    }
  });
  std::string out;
  const int code = Finish(run, &out);
  const absl::Duration took = absl::Now() - killed;
  finished = true;
  watchdog.join();
  // The lease expires at the latest a TTL (4 s) after the kill; `run`
  // stops its command before the earliest moment it can expire (the last
  // renewal's send time + TTL), so before the kill + 4 s in any case.
  EXPECT_LT(took, absl::Seconds(4)) << out;
  EXPECT_THAT(out, HasSubstr("stopping the command"));
  EXPECT_THAT(out, HasSubstr("SIGKILL"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("released the slot")));
  EXPECT_EQ(code, 128 + SIGKILL) << out;
}

TEST(CliE2ETest, RunKilledWithSigkillFreesTheSlotAfterTheTtl) {
  ServerProcess server({}, {"PAC_MEMORY_LEASE_TTL=2s"});
  const std::string& u = server.url();
  Child holder = Spawn({Binary(), "--server", u, "run", "--repo", "ns/kill",
                        "--run", "ns/a", "--limit", "1", "--", "sleep", "60"},
                       {}, /*own_group=*/true);
  ASSERT_TRUE(Eventually([&] { return InUse(u, "ns/kill") == 1; }));
  Child waiter = Spawn({Binary(), "--server", u, "run", "--repo", "ns/kill",
                        "--run", "ns/b", "--", "true"});
  ASSERT_TRUE(Eventually([&] {
    RemoteApi api(u, "");
    auto s = api.Status(Context::Background(), "ns/kill");
    return s.ok() && (*s)["queue_depth"] == 1;
  }));
  kill(holder.pid, SIGKILL);
  int status;
  waitpid(holder.pid, &status, 0);  // (its orphaned `sleep` keeps the pipe)
  close(holder.out);
  // The dead holder's lease still counts until its TTL runs out...
  RemoteApi api(u, "");
  auto now = api.Status(Context::Background(), "ns/kill");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ((*now)["running"][0]["pipeline_run"], "ns/a");
  // ...then the head of the queue is admitted, runs and releases.
  std::string out;
  EXPECT_EQ(Finish(waiter, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("acquired a slot"));
  EXPECT_EQ(InUse(u, "ns/kill"), 0);
  kill(-holder.pid, SIGKILL);  // the orphaned `sleep`
}

// N clients over two servers on one backend: the in-test counter of
// holders never passes the limit.
void HammerTwoServers(const std::string& config_path) {
  ServerProcess a({"--config", config_path}), b({"--config", config_path});
  ASSERT_FALSE(a.url().empty());
  ASSERT_FALSE(b.url().empty());
  const std::string repo = Unique("shared") + "/app";
  RemoteApi setup(a.url(), "");
  ASSERT_TRUE(
      setup
          .SetLimit(Context::Background(), repo, Json{{"concurrency_limit", 2}})
          .ok());
  std::atomic<int> holding{0}, max_holding{0}, done{0}, errors{0};
  std::vector<std::thread> threads;
  const int kThreads = 8, kRuns = 6;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      RemoteApi api(t % 2 == 0 ? a.url() : b.url(), "");
      Context ctx =
          Context::WithTimeout(Context::Background(), absl::Minutes(2));
      for (int i = 0; i < kRuns; ++i) {
        const std::string run =
            "ns/r-" + std::to_string(t) + "-" + std::to_string(i);
        bool acquired = false;
        while (!acquired && !ctx.Done()) {
          auto r = api.Submit(ctx, repo, Json{{"pipeline_run", run}});
          if (!r.ok()) {
            ++errors;
            return;
          }
          acquired = (*r)["acquired"].get<bool>();
          if (!acquired) absl::SleepFor(absl::Milliseconds(5));
        }
        int now = ++holding;
        int prev = max_holding.load();
        while (now > prev && !max_holding.compare_exchange_weak(prev, now)) {
        }
        absl::SleepFor(absl::Milliseconds(3));
        --holding;
        if (!api.Release(ctx, repo, run, "").ok()) {
          ++errors;
          return;
        }
        ++done;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(done.load(), kThreads * kRuns);
  EXPECT_LE(max_holding.load(), 2);
  EXPECT_EQ(max_holding.load(), 2);  // the limit was actually reached
}

TEST(CliE2ETest, TwoServersSharingPostgreSQLNeverExceedTheLimit) {
  auto pg = conformance::TestPostgreSQLConfig();
  ASSERT_TRUE(pg.ok()) << pg.status();
  std::string config = WriteFile(
      "pg.yaml",
      "concurrency-driver: postgresql\n"
      "postgresql-host: " +
          pg->host + "\n" + "postgresql-port: " + std::to_string(pg->port) +
          "\n" + "postgresql-database: " + pg->database + "\n" +
          "postgresql-username: " + pg->username + "\n" +
          "postgresql-password-file: " +
          conformance::EnvOr("PAC_TEST_PG_PASSWORD_FILE") + "\n" +
          "postgresql-ssl-mode: require\n");
  HammerTwoServers(config);
  // The CLI without a server (none listens on port 1), on the same
  // backend: --config.
  const std::string repo = Unique("direct") + "/app";
  CliResult a =
      Cli("http://127.0.0.1:1", {"--config", config, "acquire", "--repo", repo,
                                 "--run", "ns/a", "--limit", "1"});
  EXPECT_EQ(a.code, 0) << a.out;
  CliResult st = Cli("http://127.0.0.1:1", {"--config", config, "status",
                                            "--repo", repo, "-o", "json"});
  ASSERT_EQ(st.code, 0) << st.out;
  // (Log lines may precede the JSON document on the shared pipe.)
  Json doc = Json::parse(st.out.substr(st.out.find('{')), nullptr, false);
  EXPECT_EQ(doc["in_use"], 1);
  EXPECT_EQ(doc["running"][0]["pipeline_run"], "ns/a");
  // A new process lists what the backend holds, not what it has seen.
  CliResult list =
      Cli("http://127.0.0.1:1", {"--config", config, "status", "--namespace",
                                 repo.substr(0, repo.find('/')), "-o", "json"});
  ASSERT_EQ(list.code, 0) << list.out;
  Json all = Json::parse(list.out.substr(list.out.find('{')), nullptr, false);
  ASSERT_EQ(all["repositories"].size(), 1u) << list.out;
  EXPECT_EQ(all["repositories"][0]["repository"], repo);
  EXPECT_EQ(all["repositories"][0]["in_use"], 1);
}

TEST(CliE2ETest, TwoServersSharingEtcdNeverExceedTheLimit) {
  const std::string endpoints = conformance::EnvOr("PAC_TEST_ETCD_ENDPOINTS");
  ASSERT_FALSE(endpoints.empty())
      << "PAC_TEST_ETCD_ENDPOINTS is not set: run through `make test`";
  std::string config = WriteFile("etcd.yaml",
                                 "concurrency-driver: etcd\n"
                                 "etcd-endpoints: " +
                                     endpoints +
                                     "\n"
                                     "etcd-prefix: /" +
                                     Unique("e2e") + "/\n");
  HammerTwoServers(config);
}

// A TCP connection to 127.0.0.1:port, or -1.
int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// The peak resident memory of a process (VmHWM), in MiB, or -1.
double PeakRssMiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024;
  }
  return -1;
}

// Issue 19's requirement, against the real binary with default flags: with
// 1,000 connections trickling their headers (a byte every 2 s) and 1,000
// idle ones open, a well-behaved client's /healthz and submit+release
// pairs are answered promptly; then a flood of chunked bodies (1 GiB
// offered, each connection refused past --max-body) leaves the server's
// peak RSS under 200 MB. The latencies are printed (docs/benchmarks.md);
// the assertion on them is a generous bound, not the target.
TEST(CliE2ETest, SlowIdleAndFloodingClientsDoNotStarveOrBloatTheServer) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  ASSERT_GE(rl.rlim_cur, 2100u) << "needs 2,100 descriptors";
  ServerProcess server;
  ASSERT_FALSE(server.url().empty());
  const int port = std::stoi(server.url().substr(server.url().rfind(':') + 1));

  std::vector<int> slow, idle;
  for (int i = 0; i < 1000; ++i) {
    int s = Connect(port);
    ASSERT_GE(s, 0) << "slow connection " << i;
    ASSERT_GT(send(s, "GET /healthz HTTP/1.1\r\n", 24, MSG_NOSIGNAL), 0);
    slow.push_back(s);
    int d = Connect(port);
    ASSERT_GE(d, 0) << "idle connection " << i;
    idle.push_back(d);
  }
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    while (!stop) {
      for (int s : slow) (void)send(s, "X", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      for (int i = 0; i < 20 && !stop; ++i) {
        absl::SleepFor(absl::Milliseconds(100));
      }
    }
  });

  RemoteApi api(server.url(), "");
  Context ctx = Context::Background();
  ASSERT_TRUE(api.SetLimit(ctx, "ns/app", Json{{"concurrency_limit", 1}}).ok());
  std::vector<double> health_ms, pair_ms;
  for (int i = 0; i < 300; ++i) {
    absl::Time t = absl::Now();
    auto h = api.Status(ctx, "ns/app");
    ASSERT_TRUE(h.ok()) << h.status();
    health_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
    t = absl::Now();
    const std::string run = "ns/r" + std::to_string(i);
    auto a = api.Submit(ctx, "ns/app", Json{{"pipeline_run", run}});
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE((*a)["acquired"].get<bool>());
    ASSERT_TRUE(api.Release(ctx, "ns/app", run, "").ok());
    pair_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
  }
  {
    // /healthz itself, on a fresh connection each time.
    for (int i = 0; i < 100; ++i) {
      absl::Time t = absl::Now();
      int c = Connect(port);
      ASSERT_GE(c, 0);
      const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
      ASSERT_GT(send(c, req, sizeof(req) - 1, MSG_NOSIGNAL), 0);
      char buf[512];
      pollfd p{c, POLLIN, 0};
      ASSERT_GT(poll(&p, 1, 10000), 0);
      ASSERT_GT(recv(c, buf, sizeof buf, 0), 0);
      health_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t));
      close(c);
    }
  }
  auto p99 = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() * 99 / 100];
  };
  std::printf(
      "with 1000 slow + 1000 idle connections: status/healthz p99 %.2f ms, "
      "submit+release pair p99 %.2f ms\n",
      p99(health_ms), p99(pair_ms));
  EXPECT_LT(p99(health_ms), 1000.0);
  EXPECT_LT(p99(pair_ms), 1000.0);
  stop = true;
  trickle.join();
  for (int s : slow) close(s);
  for (int s : idle) close(s);

  // The flood: connections that each send chunked data until refused.
  const std::string chunk = "100000\r\n" + std::string(0x100000, 'a') + "\r\n";
  int64_t offered = 0, accepted = 0;
  int refused = 0;
  const absl::Time end = absl::Now() + absl::Seconds(60);
  while (offered < (int64_t(1) << 30) && absl::Now() < end) {
    std::vector<std::thread> floods;
    std::atomic<int64_t> sent{0};
    std::atomic<int> answered{0};
    for (int t = 0; t < 8; ++t) {
      floods.emplace_back([&] {
        int c = Connect(port);
        if (c < 0) return;
        const std::string head =
            "PUT /v1/repositories/ns/app HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\n\r\n";
        (void)send(c, head.data(), head.size(), MSG_NOSIGNAL);
        for (int i = 0; i < 16; ++i) {
          ssize_t n = send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL);
          if (n <= 0) break;
          sent += n;
        }
        char buf[256];
        pollfd p{c, POLLIN, 0};
        if (poll(&p, 1, 5000) > 0 && recv(c, buf, sizeof buf, 0) > 0 &&
            std::string(buf, 12).find("413") != std::string::npos) {
          ++answered;
        }
        close(c);
      });
    }
    for (auto& f : floods) f.join();
    offered += 8 * 16 * int64_t(chunk.size());
    accepted += sent;
    refused += answered;
  }
  const double rss = PeakRssMiB(server.pid());
  std::printf(
      "chunked flood: %.0f MiB offered, %.0f MiB taken by the "
      "socket before %d connections were refused with 413; server "
      "peak RSS %.1f MiB\n",
      offered / 1048576.0, accepted / 1048576.0, refused, rss);
  EXPECT_GT(refused, 0);
  EXPECT_GT(rss, 0);
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer keeps up to 256 MB of freed memory in quarantine and
  // adds its shadow: the 200 MB bound is the plain build's (measured there
  // at 40 MB); here only a flood that is read whole would fail.
  EXPECT_LT(rss, 1024.0);
#else
  EXPECT_LT(rss, 200.0);
#endif
  auto h = api.Status(ctx, "ns/app");
  EXPECT_TRUE(h.ok()) << h.status();
}

}  // namespace
}  // namespace pac::concurrency
