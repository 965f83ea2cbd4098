// The HTTP boundary against hostile, slow and malformed clients, spoken to
// with raw sockets so that each request is exactly the bytes a client
// sent: invalid UTF-8 in a path, chunked floods past --max-body, form
// encoded bodies, pipelined requests, bodiless POSTs, slow and idle
// connections. After each, the server still answers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/http_server.h"
#include "src/server/http_test_fixture.h"
#include "src/server/remote_api.h"

namespace pac::concurrency::server {
namespace {

using ::testing::HasSubstr;

// One TCP connection to the server, closed on destruction.
class RawConn {
 public:
  explicit RawConn(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~RawConn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  // Sends all of `bytes`; false once the peer closed or reset.
  bool Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(size_t(n));
    }
    return true;
  }
  // Reads what arrives until `done(all)` says so, the peer closes, or
  // `timeout` passes; returns everything read.
  std::string ReadUntil(const std::function<bool(const std::string&)>& done,
                        absl::Duration timeout = absl::Seconds(10)) {
    std::string all;
    const absl::Time end = absl::Now() + timeout;
    while (!done(all)) {
      const int ms = int(absl::ToInt64Milliseconds(end - absl::Now()));
      if (ms <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, ms) <= 0) break;
      char buf[65536];
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) break;
      all.append(buf, size_t(n));
    }
    return all;
  }
  // Reads `count` complete responses with Content-Length bodies.
  std::string ReadResponses(int count,
                            absl::Duration timeout = absl::Seconds(10)) {
    return ReadUntil(
        [count](const std::string& s) { return CountResponses(s) >= count; },
        timeout);
  }
  static int CountResponses(const std::string& s) {
    int n = 0;
    size_t at = 0;
    while (true) {
      size_t head_end = s.find("\r\n\r\n", at);
      if (head_end == std::string::npos) return n;
      std::string head = s.substr(at, head_end - at);
      size_t cl = head.find("Content-Length: ");
      size_t len =
          cl == std::string::npos ? 0 : std::stoul(head.substr(cl + 16));
      if (s.size() < head_end + 4 + len) return n;
      ++n;
      at = head_end + 4 + len;
    }
  }

 private:
  int fd_ = -1;
};

class HttpBoundaryTest : public MemoryServerTest {
 protected:
  void Start(const std::function<void(HttpServerOptions&)>& tweak = {}) {
    StartServer(tweak);
    port_ = port();
  }
  // The server still answers a fresh connection.
  void ExpectHealthy() {
    RawConn c(port_);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_THAT(c.ReadResponses(1), HasSubstr("200 OK"));
  }
  static std::string StatusLine(const std::string& response) {
    return response.substr(0, response.find("\r\n"));
  }
  static std::string Body(const std::string& response) {
    size_t at = response.find("\r\n\r\n");
    return at == std::string::npos ? "" : response.substr(at + 4);
  }

  int port_ = 0;
};

// Observation 1: an unknown path with an invalid UTF-8 byte aborted the
// process (the 404 message embedded the raw path and JSON serialisation
// threw). It is a 404 whose message shows the byte escaped.
TEST_F(HttpBoundaryTest, InvalidUtf8InAPathIsA404ThatShowsTheByteEscaped) {
  Start();
  for (const char* path : {"/%ff", "/v1/%c3%28/x", "/v1/repositories/%ff/a"}) {
    RawConn c(port_);
    ASSERT_TRUE(
        c.Send(std::string("GET ") + path + " HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string r = c.ReadResponses(1);
    ASSERT_FALSE(r.empty()) << path;
    EXPECT_THAT(StatusLine(r),
                ::testing::AnyOf(HasSubstr(" 404 "), HasSubstr(" 400 ")))
        << path;
    Json e = Json::parse(Body(r), nullptr, false);
    ASSERT_TRUE(e.is_object()) << r;
    EXPECT_FALSE(e["error"]["message"].get<std::string>().empty());
  }
  RawConn c(port_);
  ASSERT_TRUE(c.Send("GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_THAT(Body(c.ReadResponses(1)), HasSubstr("\\\\xff"));
  ExpectHealthy();
}

// Observation 2: a chunked body was read whole whatever --max-body said.
// It is refused while reading, once past the limit: the server answers 413
// before the client has sent a tenth of what it means to.
TEST_F(HttpBoundaryTest, AChunkedBodyPastMaxBodyIsRefusedWhileReading) {
  Start();
  RawConn c(port_);
  ASSERT_TRUE(
      c.Send("PUT /v1/repositories/ns/app HTTP/1.1\r\nHost: x\r\n"
             "Transfer-Encoding: chunked\r\n\r\n"));
  const std::string chunk = "10000\r\n" + std::string(0x10000, 'a') + "\r\n";
  int sent = 0;
  for (; sent < 160; ++sent) {  // 10 MiB at most, never the last chunk
    if (!c.Send(chunk)) break;
  }
  const std::string r = c.ReadResponses(1, absl::Seconds(5));
  ASSERT_FALSE(r.empty()) << "no answer after " << sent << " chunks";
  EXPECT_THAT(StatusLine(r), HasSubstr(" 413 "));
  EXPECT_THAT(Body(r), HasSubstr("--max-body"));
  EXPECT_LT(sent, 160) << "the server read the whole flood";
  ExpectHealthy();
}

// A Content-Length past the limit is refused before the body is read.
TEST_F(HttpBoundaryTest, ADeclaredLengthPastMaxBodyIsRefusedAtOnce) {
  Start();
  RawConn c(port_);
  ASSERT_TRUE(
      c.Send("PUT /v1/repositories/ns/app HTTP/1.1\r\nHost: x\r\n"
             "Content-Length: 1000000000\r\n\r\n{"));
  const std::string r = c.ReadResponses(1, absl::Seconds(5));
  EXPECT_THAT(StatusLine(r), HasSubstr(" 413 "));
  EXPECT_THAT(Body(r), HasSubstr("65536"));
}

// Observation 4: curl -d sends application/x-www-form-urlencoded, which
// the HTTP library capped at 8 KB. Bodies of any Content-Type are read up
// to --max-body.
TEST_F(HttpBoundaryTest, FormEncodedBodiesOver8KBAreReadAsTheyAre) {
  Start();
  std::string yaml;
  for (int i = 0; i < 200; ++i) {
    yaml +=
        "---\napiVersion: pipelinesascode.tekton.dev/v1alpha1\n"
        "kind: Repository\nmetadata:\n  name: repo-" +
        std::to_string(i) +
        "\n  namespace: ns\nspec:\n  concurrency_limit: 2\n";
  }
  ASSERT_GT(yaml.size(), 8192u);
  RawConn c(port_);
  ASSERT_TRUE(
      c.Send("POST /v1/repositories HTTP/1.1\r\nHost: x\r\n"
             "Content-Type: application/x-www-form-urlencoded\r\n"
             "Content-Length: " +
             std::to_string(yaml.size()) + "\r\n\r\n" + yaml));
  const std::string r = c.ReadResponses(1);
  EXPECT_THAT(StatusLine(r), HasSubstr(" 200 ")) << Body(r);
  auto limit =
      driver_->GetRepositoryLimit(Context::Background(), "ns/repo-199");
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(limit->value_or(-1), 2);
}

// Observation 6: a POST with no body (curl -X POST) waited 5 s for one and
// then answered a bare "HTTP 400". No length means no body; a renew's
// empty body means {}.
TEST_F(HttpBoundaryTest, ABodilessRenewIsAnsweredAtOnce) {
  Start();
  RemoteApi api("http://127.0.0.1:" + std::to_string(port_), "");
  Context ctx = Context::Background();
  auto a = api.Submit(ctx, "ns/app",
                      Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  ASSERT_TRUE(a.ok()) << a.status();
  const std::string id = (*a)["lease"]["lease_id"];
  RawConn c(port_);
  const absl::Time start = absl::Now();
  ASSERT_TRUE(
      c.Send("POST /v1/leases/" + id + "/renew HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string r = c.ReadResponses(1);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_THAT(StatusLine(r), HasSubstr(" 200 ")) << r;
}

// Observation 7: three requests in one packet got one answer. Pipelined
// requests are answered, in order.
TEST_F(HttpBoundaryTest, PipelinedRequestsAreAnsweredInOrder) {
  Start();
  RawConn c(port_);
  ASSERT_TRUE(
      c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
             "PUT /v1/repositories/ns/app HTTP/1.1\r\nHost: x\r\n"
             "Content-Length: 23\r\n\r\n{\"concurrency_limit\":3}"
             "GET /v1/repositories/ns/app HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string r = c.ReadResponses(3);
  ASSERT_EQ(RawConn::CountResponses(r), 3) << r;
  const size_t health = r.find("\"ok\"");
  const size_t status = r.find("\"concurrency_limit\":3");
  EXPECT_NE(health, std::string::npos);
  EXPECT_NE(status, std::string::npos);
  EXPECT_LT(health, status);
}

// JSON nested 100,000 deep overflowed the stack of whoever walked or
// printed it; it is refused before parsing, as is a body whose bytes are
// not UTF-8 (named, escaped).
TEST_F(HttpBoundaryTest, DeepOrNonUtf8JsonBodiesAreRefusedByName) {
  Start([](HttpServerOptions& o) { o.max_body_bytes = 1 << 20; });
  struct Case {
    std::string path, body, message;
  } cases[] = {
      {"/v1/import", std::string(100000, '[') + std::string(100000, ']'),
       "nested deeper than 128 levels"},
      {"/v1/repositories/ns/app/runs", "{\"pipeline_run\":\"ns/a\xff\"}",
       "not UTF-8: \\\\xff"},
  };
  for (const Case& k : cases) {
    RawConn c(port_);
    ASSERT_TRUE(c.Send("POST " + k.path + " HTTP/1.1\r\nHost: x\r\n" +
                       "Content-Length: " + std::to_string(k.body.size()) +
                       "\r\n\r\n" + k.body));
    const std::string r = c.ReadResponses(1);
    EXPECT_THAT(StatusLine(r), HasSubstr(" 400 ")) << k.path;
    EXPECT_THAT(Body(r), HasSubstr(k.message)) << k.path;
  }
  ExpectHealthy();
}

// A parser refusal is a JSON error that says what was wrong, not a bare
// "HTTP 400".
TEST_F(HttpBoundaryTest, ParserRefusalsAreJsonErrorsThatNameTheProblem) {
  Start([](HttpServerOptions& o) { o.max_header_bytes = 4096; });
  {
    RawConn c(port_);
    ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " +
                       std::string(8000, 'a') + "\r\n\r\n"));
    const std::string r = c.ReadResponses(1);
    EXPECT_THAT(StatusLine(r), HasSubstr(" 431 "));
    EXPECT_THAT(Body(r), HasSubstr("--max-header-bytes"));
  }
  {
    std::string many;
    for (int i = 0; i < 150; ++i) many += "X-H" + std::to_string(i) + ": 1\r\n";
    RawConn c(port_);
    ASSERT_TRUE(c.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + "\r\n"));
    const std::string r = c.ReadResponses(1);
    EXPECT_THAT(StatusLine(r), HasSubstr(" 431 "));
    EXPECT_THAT(Body(r), HasSubstr("--max-header-count"));
  }
  {
    RawConn c(port_);
    ASSERT_TRUE(c.Send("GARBAGE\r\n\r\n"));
    const std::string r = c.ReadResponses(1);
    EXPECT_THAT(StatusLine(r), HasSubstr(" 400 "));
    EXPECT_THAT(Body(r), HasSubstr("malformed HTTP request"));
  }
  ExpectHealthy();
}

// Observation 3: connections that trickle their headers held a thread
// each. Here 200 trickling and 200 idle connections are open, and a
// well-behaved client is still answered promptly; the trickling ones are
// closed at the header deadline.
TEST_F(HttpBoundaryTest, SlowAndIdleConnectionsDoNotStarveOthers) {
  Start([](HttpServerOptions& o) {
    o.header_timeout = absl::Seconds(2);
    o.keep_alive_timeout = absl::Seconds(60);
    o.threads = 4;
    o.max_threads = 16;
  });
  std::vector<std::unique_ptr<RawConn>> slow, idle;
  for (int i = 0; i < 200; ++i) {
    slow.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(slow.back()->Send("GET /healthz HTTP/1.1\r\nHo"));
    idle.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(idle.back()->ok());
  }
  absl::Duration worst;
  for (int i = 0; i < 20; ++i) {
    const absl::Time t = absl::Now();
    ExpectHealthy();
    worst = std::max(worst, absl::Now() - t);
  }
  EXPECT_LT(worst, absl::Seconds(1)) << "a healthz took " << worst;
  // The trickling connections are closed once the header deadline passes.
  const std::string r = slow.front()->ReadUntil(
      [](const std::string&) { return false; }, absl::Seconds(5));
  EXPECT_THAT(r, HasSubstr(" 408 "));
}

// With the connection cap reached, a new connection closes the oldest
// idle one rather than being refused.
TEST_F(HttpBoundaryTest, AtTheConnectionCapTheOldestIdleConnectionIsClosed) {
  Start([](HttpServerOptions& o) {
    o.max_connections = 8;
    o.keep_alive_timeout = absl::Seconds(60);
  });
  std::vector<std::unique_ptr<RawConn>> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(idle.back()->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_EQ(RawConn::CountResponses(idle.back()->ReadResponses(1)), 1);
  }
  ExpectHealthy();
  // The first idle connection was the one closed.
  EXPECT_EQ(idle.front()->ReadUntil([](const std::string&) { return false; },
                                    absl::Seconds(2)),
            "");
  EXPECT_FALSE(idle.front()->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") &&
               !idle.front()->ReadResponses(1, absl::Seconds(1)).empty());
  ASSERT_TRUE(idle.back()->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(RawConn::CountResponses(idle.back()->ReadResponses(1)), 1);
}

// Per peer: past --max-connections-per-peer a new connection from that
// address closes the oldest idle one of that address; when none of its
// connections is idle it is refused with 503 naming the flag.
TEST_F(HttpBoundaryTest, ThePerPeerCapClosesThatPeersOldestIdleOrRefuses) {
  Start([](HttpServerOptions& o) {
    o.max_connections_per_peer = 3;
    o.keep_alive_timeout = absl::Seconds(60);
    o.header_timeout = absl::Seconds(60);
  });
  // Three connections in the middle of a request: none is idle.
  std::vector<std::unique_ptr<RawConn>> busy;
  for (int i = 0; i < 3; ++i) {
    busy.push_back(std::make_unique<RawConn>(port_));
    ASSERT_TRUE(busy.back()->Send("GET /healthz HTTP/1.1\r\nHo"));
  }
  absl::SleepFor(absl::Milliseconds(200));
  {
    RawConn c(port_);
    const std::string r = c.ReadResponses(1, absl::Seconds(5));
    EXPECT_THAT(StatusLine(r), HasSubstr(" 503 "));
    EXPECT_THAT(Body(r), HasSubstr("--max-connections-per-peer"));
  }
  // One of them finishes its request and idles: the next connection takes
  // its place.
  ASSERT_TRUE(busy[0]->Send("st: x\r\n\r\n"));
  ASSERT_EQ(RawConn::CountResponses(busy[0]->ReadResponses(1)), 1);
  absl::SleepFor(absl::Milliseconds(100));
  RawConn next(port_);
  ASSERT_TRUE(next.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_THAT(next.ReadResponses(1), HasSubstr(" 200 "));
  EXPECT_EQ(busy[0]->ReadUntil([](const std::string&) { return false; },
                               absl::Seconds(2)),
            "");
  // /metrics counts both.
  RawConn m(port_);
  ASSERT_TRUE(m.Send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string metrics = m.ReadResponses(1);
  EXPECT_THAT(metrics,
              HasSubstr("pac_http_refusals_total{reason=\"capacity\"} 1"));
  EXPECT_THAT(metrics,
              HasSubstr("pac_http_refusals_total{reason=\"evicted_idle\"}"));
}

}  // namespace
}  // namespace pac::concurrency::server
