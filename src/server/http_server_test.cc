// The HTTP layer in-process: routing, error documents, the bearer token,
// body limits, watches (stream and long poll), metrics, and RemoteApi's
// round trip of errors. Many client threads through one server never
// exceed a limit.
#include "src/server/http_server.h"

#include <atomic>
#include <functional>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "pac/concurrency/concurrency.h"
#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"
#include "src/server/http_test_fixture.h"
#include "src/server/remote_api.h"
#include "tests/conformance/forwarding_driver.h"

namespace pac::concurrency::server {
namespace {

using ::testing::HasSubstr;

TEST_F(HttpServerTest, MalformedRequestsGet4xxWithAMessageAndServingGoesOn) {
  Start();
  auto c = Client();
  struct Case {
    std::string method, path, body;
    int want;
    std::string message;
  } cases[] = {
      {"PUT", "/v1/repositories/ns/app", "{not json", 400, "not valid JSON"},
      {"PUT", "/v1/repositories/ns/app", "", 400, "empty"},
      {"PUT", "/v1/repositories/ns/app", R"({"concurrency_limit":1,"x":2})",
       400, "unknown field"},
      {"PUT", "/v1/repositories/ns/app", R"({"concurrency_limit":-1})", 400,
       "negative"},
      {"PUT", "/v1/repositories/NS/app", R"({"concurrency_limit":1})", 400,
       "uppercase"},
      {"POST", "/v1/repositories/ns/app/runs", R"({"pipeline_run":"a"})", 400,
       "pipeline_run"},
      {"POST", "/v1/repositories/ns/app/runs", R"([1,2,3])", 400,
       "JSON object"},
      {"POST", "/v1/repositories/ns/app/runs", std::string(100 * 1024, '{'),
       413, "too large"},
      {"POST", "/v1/repositories", "kind: Repository\nmetadata: {name: x}\n",
       400, "metadata.namespace"},
      {"GET", "/v1/repositories?namespace=Bad_NS", "", 400, "namespace"},
      {"GET", "/v1/repositories?limit=0", "", 400, "limit"},
      {"GET", "/v1/repositories?limit=10001", "", 400, "limit"},
      {"GET", "/v1/repositories?limit=2x", "", 400, "limit"},
      {"GET", "/v1/repositories?after=Not/A/Key", "", 400, "after"},
      {"GET", "/v1/repositories?after=", "", 400, "after"},
      {"GET", "/v1/nothing/here", "", 404, "no route"},
      {"POST", "/v1/leases/zzz/renew", "", 410, "lease"},
  };
  for (const Case& k : cases) {
    auto r = k.method == "PUT"    ? c.Put(k.path, k.body, "application/json")
             : k.method == "POST" ? c.Post(k.path, k.body, "application/json")
                                  : c.Get(k.path);
    ASSERT_TRUE(r) << k.path;
    EXPECT_EQ(r->status, k.want) << k.method << " " << k.path;
    Json e = Body(r);
    ASSERT_TRUE(e.is_object()) << r->body;
    EXPECT_THAT(e["error"]["message"].get<std::string>(), HasSubstr(k.message))
        << k.path;
    EXPECT_FALSE(e["error"]["code"].get<std::string>().empty());
  }
  auto health = c.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto ready = c.Get("/readyz");
  EXPECT_EQ(ready->status, 200);
  // Nothing was written by the refused requests.
  EXPECT_FALSE(driver_->GetRepositoryLimit(ctx_, "ns/app")->has_value());
}

// A listing in pages: `limit` repositories at most, from after `after`,
// with `next` while more follow; the pages together are the whole list,
// in key order, and RemoteApi pages the same way.
TEST_F(HttpServerTest, ListingsComeInPagesThatJoinIntoTheWholeList) {
  Start();
  std::vector<std::string> keys;
  for (int i = 0; i < 7; ++i) {
    const std::string key = absl::StrFormat("pg%d/app", i);
    keys.push_back(key);
    ASSERT_TRUE(
        driver_->SetRepositoryLimit(ctx_, *Repository::FromKey(key, 1)).ok());
  }
  auto c = Client();
  std::vector<std::string> seen;
  std::string after;
  int pages = 0;
  while (true) {
    std::string path = "/v1/repositories?limit=3";
    if (!after.empty()) path += "&after=" + after;
    auto r = c.Get(path);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    Json page = Body(r);
    ++pages;
    EXPECT_LE(page["repositories"].size(), 3u);
    for (const Json& repo : page["repositories"]) {
      seen.push_back(repo["repository"]);
      EXPECT_EQ(repo["concurrency_limit"], 1);
    }
    if (!page.contains("next")) break;
    after = page["next"].get<std::string>();
    EXPECT_EQ(after, seen.back());
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, keys);
  // The whole list without a limit, and one page through RemoteApi.
  EXPECT_EQ(Body(c.Get("/v1/repositories"))["repositories"].size(), 7u);
  RemoteApi api(url_, "");
  ListPage page;
  page.limit = 2;
  page.after = "pg4/app";
  auto r = api.ListRepositories(ctx_, "", page);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ((*r)["repositories"].size(), 2u);
  EXPECT_EQ((*r)["repositories"][0]["repository"], "pg5/app");
  EXPECT_FALSE(r->contains("next"));
}

TEST_F(HttpServerTest, BearerTokenGuardsEveryMutatingRequest) {
  Start("s3cret-token");
  auto c = Client();
  auto none = c.Put("/v1/repositories/ns/app", R"({"concurrency_limit":1})",
                    "application/json");
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(Body(none)["error"]["code"], "UNAUTHENTICATED");
  c.set_bearer_token_auth("s3cret-tokeX");
  EXPECT_EQ(c.Put("/v1/repositories/ns/app", R"({"concurrency_limit":1})",
                  "application/json")
                ->status,
            401);
  EXPECT_EQ(c.Delete("/v1/repositories/ns/app")->status, 401);
  EXPECT_EQ(c.Delete("/v1/repositories/ns/app/queue")->status, 401);
  EXPECT_FALSE(driver_->GetRepositoryLimit(ctx_, "ns/app")->has_value());
  // Reads need no token.
  EXPECT_EQ(c.Get("/v1/repositories/ns/app")->status, 200);
  RemoteApi good(url_, "s3cret-token");
  EXPECT_TRUE(
      good.SetLimit(ctx_, "ns/app", Json{{"concurrency_limit", 1}}).ok());
  RemoteApi bad(url_, "wrong");
  EXPECT_EQ(bad.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/a"}})
                .status()
                .code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(HttpServerTest, RemoteApiRoundTripsAnswersAndErrors) {
  Start();
  RemoteApi api(url_, "");
  auto a = api.Submit(ctx_, "ns/app",
                      Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE((*a)["acquired"].get<bool>());
  auto b = api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/b"}});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)["position"], 1);
  const std::string id = (*a)["lease"]["lease_id"];
  EXPECT_TRUE(api.Renew(ctx_, id).ok());
  auto rel = api.Release(ctx_, "ns/app", "ns/a", id);
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ((*rel)["admitted"][0]["pipeline_run"], "ns/b");
  EXPECT_TRUE(IsLeaseLost(api.Renew(ctx_, id).status()));
  EXPECT_EQ(api.Status(ctx_, "bad/Key").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(api.Submit(ctx_, "never/seen", Json{{"pipeline_run", "ns/x"}})
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  RemoteApi nobody("http://127.0.0.1:1", "");
  EXPECT_EQ(nobody.Status(ctx_, "ns/app").status().code(),
            absl::StatusCode::kUnavailable);
}

// The specification's states over HTTP, through RemoteApi: set, read,
// never set (404), a state the drivers refuse (400 naming it), a misspelt
// field.
TEST_F(HttpServerTest, StatesOfRepositoriesAndRunsRoundTrip) {
  Start();
  RemoteApi api(url_, "");
  using StateOf = Api::StateOf;
  auto set = api.SetState(ctx_, StateOf::kRepository, "ns/app",
                          Json{{"state", "paused"}});
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(*set, (Json{{"repository", "ns/app"}, {"state", "paused"}}));
  auto got = api.GetState(ctx_, StateOf::kRepository, "ns/app");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)["state"], "paused");
  ASSERT_TRUE(api.SetState(ctx_, StateOf::kPipelineRun, "ns/pr-1",
                           Json{{"state", "started"}})
                  .ok());
  auto run = api.GetState(ctx_, StateOf::kPipelineRun, "ns/pr-1");
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(*run, (Json{{"pipeline_run", "ns/pr-1"}, {"state", "started"}}));

  auto never = api.GetState(ctx_, StateOf::kPipelineRun, "ns/pr-2");
  EXPECT_TRUE(absl::IsNotFound(never.status())) << never.status();
  EXPECT_THAT(std::string(never.status().message()), HasSubstr("ns/pr-2"));
  auto too_long = api.SetState(ctx_, StateOf::kRepository, "ns/app",
                               Json{{"state", std::string(51, 'x')}});
  EXPECT_TRUE(absl::IsInvalidArgument(too_long.status()));
  EXPECT_THAT(std::string(too_long.status().message()),
              HasSubstr("at most 50"));
  auto misspelt = api.SetState(ctx_, StateOf::kRepository, "ns/app",
                               Json{{"stat", "paused"}});
  EXPECT_TRUE(absl::IsInvalidArgument(misspelt.status()));
  auto not_string =
      api.SetState(ctx_, StateOf::kRepository, "ns/app", Json{{"state", 3}});
  EXPECT_TRUE(absl::IsInvalidArgument(not_string.status()));
  // Nothing refused was written.
  EXPECT_EQ((*api.GetState(ctx_, StateOf::kRepository, "ns/app"))["state"],
            "paused");
}

TEST_F(HttpServerTest, StreamWatchSeesAReleaseByAnotherClient) {
  Start();
  RemoteApi api(url_, "");
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  std::vector<std::string> seen;
  auto ctx = Context::WithTimeout(Context::Background(), absl::Seconds(20));
  absl::Status s = api.Watch(
      ctx, "ns/app",
      [&](const Json& ev) {
        if (ev.is_null()) return true;
        seen.push_back(ev["type"].get<std::string>() + " " +
                       ev["pipeline_run"].get<std::string>());
        return ev["type"] != "released";
      },
      [&] {
        std::thread([this] {
          RemoteApi other(url_, "");
          (void)other.Release(Context::Background(), "ns/app", "ns/a", "");
        }).detach();
        return true;
      });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_THAT(seen, ::testing::ElementsAre("released ns/a"));
}

TEST_F(HttpServerTest, LongPollAnswersAtTheFirstEventOrEmptyAtTimeout) {
  Start();
  RemoteApi api(url_, "");
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  auto c = Client();
  auto empty = c.Get("/v1/repositories/ns/app/watch?timeout=200ms");
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->status, 200);
  EXPECT_TRUE(Body(empty)["events"].empty());
  std::thread releaser([this] {
    absl::SleepFor(absl::Milliseconds(300));
    RemoteApi other(url_, "");
    (void)other.Release(Context::Background(), "ns/app", "ns/a", "");
  });
  auto got = c.Get("/v1/repositories/ns/app/watch?timeout=10s");
  releaser.join();
  ASSERT_TRUE(got);
  ASSERT_EQ(Body(got)["events"].size(), 1u) << got->body;
  EXPECT_EQ(Body(got)["events"][0]["type"], "released");
  EXPECT_EQ(c.Get("/v1/repositories/ns/app/watch?timeout=forever")->status,
            400);
}

// Each open watch holds a server thread. Past the cap a watch is refused
// (429, ResourceExhausted), and other requests are still served; a watch
// that ends frees its place.
TEST_F(HttpServerTest, WatchesPastTheCapAreRefusedAndOtherRequestsServed) {
  Start("", /*max_watches=*/2);
  RemoteApi api(url_, "");
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  auto open_watches = [this] { return Gauge("pac_http_open_watches"); };
  EXPECT_EQ(open_watches(), 0);

  // A stream and a long poll fill both places.
  auto [stream_ctx, stop_stream] = Context::WithCancel(Context::Background());
  std::atomic<bool> stream_ready{false};
  std::thread stream([&, ctx = stream_ctx] {
    (void)RemoteApi(url_, "").Watch(
        ctx, "ns/app", [](const Json&) { return true; },
        [&] {
          stream_ready = true;
          return true;
        });
  });
  std::thread poll([this] {
    auto r = Client().Get("/v1/repositories/ns/app/watch?timeout=1500ms");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  });
  for (int i = 0; i < 500 && open_watches() != 2; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(open_watches(), 2);
  EXPECT_TRUE(stream_ready);

  auto refused = Client().Get("/v1/repositories/ns/app/watch?timeout=1s");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 429);
  EXPECT_EQ(Body(refused)["error"]["code"], "RESOURCE_EXHAUSTED");
  EXPECT_THAT(Body(refused)["error"]["message"].get<std::string>(),
              HasSubstr("too many open watches"));
  EXPECT_EQ(refused->get_header_value("Retry-After"), "1");
  auto refused_stream = Client().Get("/v1/repositories/other/app/watch");
  ASSERT_TRUE(refused_stream);
  EXPECT_EQ(refused_stream->status, 429);

  // Other requests still get a thread.
  auto b = api.Submit(ctx_, "ns/app",
                      Json{{"pipeline_run", "ns/b"}, {"concurrency_limit", 1}});
  EXPECT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(api.Release(ctx_, "ns/app", "ns/a", "").ok());

  // The long poll ends at the first event (the release): its place frees.
  poll.join();
  for (int i = 0; i < 500 && open_watches() != 1; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(open_watches(), 1);
  auto again = Client().Get("/v1/repositories/ns/app/watch?timeout=100ms");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;

  stop_stream.Cancel();
  stream.join();
  EXPECT_THAT(metrics_.Render({}),
              HasSubstr("pac_http_requests_total{code=\"429\",method=\"GET\","
                        "route=\"/v1/repositories/{ns}/{name}/watch\"} 2"));
}

// A client that keeps its connection open between requests (Go's
// http.Client, a requests.Session) says nothing between them. Such
// connections hold no worker thread: more of them than there are threads
// leave every thread free, and the extra threads started under load end
// once idle again.
TEST_F(HttpServerTest, IdleKeepAliveConnectionsDoNotStarveOtherRequests) {
  Start("", 0, [](HttpServerOptions& o) {
    o.threads = 4;
    o.max_threads = 16;
    o.thread_idle_timeout = absl::Milliseconds(200);
    o.keep_alive_timeout = absl::Seconds(60);
  });
  EXPECT_EQ(Gauge("pac_http_max_threads"), 16);
  std::vector<std::unique_ptr<httplib::Client>> idle;
  for (int i = 0; i < 8; ++i) {
    auto c = std::make_unique<httplib::Client>(url_);
    c->set_keep_alive(true);
    c->set_read_timeout(5, 0);
    auto r = c->Get("/healthz");
    ASSERT_TRUE(r) << "client " << i << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 200);
    idle.push_back(std::move(c));
  }
  // Eight idle connections and none holds a thread: only the metrics
  // request itself is running.
  EXPECT_LE(Gauge("pac_http_busy_threads"), 1);
  EXPECT_GE(Gauge("pac_http_open_connections"), 9);
  RemoteApi api(url_, "");
  auto r = api.Submit(ctx_, "ns/app",
                      Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}});
  ASSERT_TRUE(r.ok()) << r.status();
  // The kept connections still work.
  for (auto& c : idle) {
    auto again = c->Get("/healthz");
    ASSERT_TRUE(again);
    EXPECT_EQ(again->status, 200);
  }
  // Once they close, the extra threads end.
  idle.clear();
  int threads = -1;
  for (int i = 0; i < 500 && (threads = Gauge("pac_http_threads")) != 4; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(threads, 4) << "busy " << Gauge("pac_http_busy_threads");
}

// A second server on the port of a running one must fail to start: with
// SO_REUSEPORT (httplib's default) it bound the same port, and the kernel
// split the connections between the two servers' separate states.
TEST_F(HttpServerTest, ASecondServerCannotTakeThePortOfARunningOne) {
  Start();
  HttpServerOptions o;
  o.port = server_->port();
  HttpServer second(service_.get(), &metrics_, o);
  absl::Status s = second.Start();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("address in use"));
  auto r = Client().Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

// Each answered request is one log line (debug; warn for a 5xx) with its
// method, path and status, and no header: not the bearer token.
TEST_F(HttpServerTest, RequestsAreLoggedWithoutTheirHeaders) {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>(
      "http-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  logger->set_level(spdlog::level::debug);
  Start("s3cret-token", 0, [&](HttpServerOptions& o) { o.logger = logger; });
  auto c = Client();
  c.set_bearer_token_auth("s3cret-token");
  ASSERT_TRUE(c.Get("/healthz"));
  ASSERT_TRUE(c.Put("/v1/repositories/ns/app?dry=1",
                    R"({"concurrency_limit":2})", "application/json"));
  ASSERT_TRUE(c.Get("/v1/nothing/here"));
  server_->Stop();
  logger->flush();
  const std::string log = out.str();
  EXPECT_THAT(log, HasSubstr("[debug] http GET /healthz 200"));
  EXPECT_THAT(log, HasSubstr("http PUT /v1/repositories/ns/app 200"));
  EXPECT_THAT(log, HasSubstr("http GET /v1/nothing/here 404"));
  EXPECT_THAT(log, HasSubstr("from 127.0.0.1"));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("s3cret")));
  EXPECT_THAT(log, ::testing::Not(HasSubstr("dry=1")));
}

TEST_F(HttpServerTest, MetricsExposeGaugesCountersAndHistograms) {
  Start();
  RemoteApi api(url_, "");
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 3}})
          .ok());
  auto c = Client();
  (void)c.Put("/v1/repositories/ns/app", "{oops", "application/json");
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_THAT(m->get_header_value("Content-Type"), HasSubstr("text/plain"));
  EXPECT_THAT(m->body, HasSubstr("pac_slots_in_use{repository=\"ns/app\"} 1"));
  EXPECT_THAT(m->body,
              HasSubstr("pac_concurrency_limit{repository=\"ns/app\"} 3"));
  EXPECT_THAT(m->body, HasSubstr("pac_queue_depth{repository=\"ns/app\"} 0"));
  EXPECT_THAT(m->body, HasSubstr("pac_acquire_duration_seconds_count{outcome="
                                 "\"acquired\"} 1"));
  EXPECT_THAT(m->body, HasSubstr("pac_http_requests_total{code=\"400\""));
  // A repository another process wrote, which this server never served,
  // is in the gauges too (before, only repositories it had seen were).
  Repository unseen{"other", "app", 2};
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, unseen, "other/r1")->acquired);
  ASSERT_TRUE(driver_->AcquireSlot(ctx_, unseen, "other/r2")->acquired);
  ASSERT_FALSE(driver_->AcquireSlot(ctx_, unseen, "other/r3")->acquired);
  m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_THAT(m->body,
              HasSubstr("pac_slots_in_use{repository=\"other/app\"} 2"));
  EXPECT_THAT(m->body,
              HasSubstr("pac_concurrency_limit{repository=\"other/app\"} 2"));
  EXPECT_THAT(m->body,
              HasSubstr("pac_queue_depth{repository=\"other/app\"} 1"));
}

TEST_F(HttpServerTest, ManyClientsThroughOneServerNeverExceedTheLimit) {
  Start();
  RemoteApi setup(url_, "");
  ASSERT_TRUE(
      setup.SetLimit(ctx_, "ns/app", Json{{"concurrency_limit", 2}}).ok());
  std::atomic<int> holding{0}, max_holding{0}, done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      RemoteApi api(url_, "");
      for (int i = 0; i < 10; ++i) {
        const std::string run =
            "ns/r-" + std::to_string(t) + "-" + std::to_string(i);
        Json body{{"pipeline_run", run}};
        while (true) {
          auto r = api.Submit(ctx_, "ns/app", body);
          if (!r.ok()) return;
          if ((*r)["acquired"].get<bool>()) break;
          absl::SleepFor(absl::Milliseconds(2));
        }
        int now = ++holding;
        int prev = max_holding.load();
        while (now > prev && !max_holding.compare_exchange_weak(prev, now)) {
        }
        absl::SleepFor(absl::Milliseconds(1));
        --holding;
        if (!api.Release(ctx_, "ns/app", run, "").ok()) return;
        ++done;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(done.load(), 80);
  EXPECT_LE(max_holding.load(), 2);
  EXPECT_GE(max_holding.load(), 1);
}

// A backend that refuses this server's own login (a PostgreSQL password
// changed under a running server) is 503 UNAVAILABLE: 401 means the
// client's bearer token, which was fine.
class BackendRefusesLogin final : public conformance::ForwardingDriver {
 public:
  using ForwardingDriver::ForwardingDriver;
  absl::StatusOr<RepositorySnapshot> GetRepositorySnapshot(
      const Context&, std::string_view) override {
    return absl::UnauthenticatedError(
        "postgresql: password authentication failed for user \"pac_user\"");
  }
};

TEST(HttpServerBackendTest, ABackendLoginFailureIs503NotTheTokens401) {
  auto d = NewMemoryDriver(MemoryConfig{absl::Minutes(5)});
  ASSERT_TRUE(d.ok());
  std::shared_ptr<Driver> store = *std::move(d);
  BackendRefusesLogin refusing(store);
  Metrics metrics;
  Service service(&refusing, nullptr, &metrics);
  HttpServerOptions o;
  o.port = 0;
  HttpServer server(&service, &metrics, o);
  ASSERT_TRUE(server.Start().ok());
  httplib::Client c("127.0.0.1", server.port());
  auto r = c.Get("/v1/repositories/ns/app");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_THAT(r->body, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(r->body, HasSubstr("password authentication failed"));
  EXPECT_THAT(r->body, HasSubstr("backend"));
  server.Stop();
}

}  // namespace
}  // namespace pac::concurrency::server
