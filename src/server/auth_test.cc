// Tokens with roles: the token file's forms, and every route × role cell
// of docs/api.md's table, through the real HTTP server.
#include "src/server/auth.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/http_server.h"

namespace pac::concurrency::server {
namespace {

using ::testing::HasSubstr;

TEST(TokenTableTest, OneTokenAloneIsTheSharedTokenOfBefore) {
  auto t = TokenTable::Parse("s3cret\n", "--token-file");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->single());
  TokenTable::Failure why;
  auto who = t->Authenticate("Bearer s3cret", &why);
  ASSERT_TRUE(who.has_value());
  EXPECT_EQ(who->role, Role::kAdmin);
  // The scheme in any case; a wrong and a missing token told apart.
  EXPECT_TRUE(t->Authenticate("bearer s3cret", &why).has_value());
  EXPECT_FALSE(t->Authenticate("Bearer s3creX", &why).has_value());
  EXPECT_EQ(why, TokenTable::Failure::kUnknown);
  EXPECT_FALSE(t->Authenticate("", &why).has_value());
  EXPECT_EQ(why, TokenTable::Failure::kMissing);
  EXPECT_FALSE(t->Authenticate("Basic s3cret", &why).has_value());
  EXPECT_EQ(why, TokenTable::Failure::kMissing);
}

TEST(TokenTableTest, RoleLinesWithNamespaces) {
  auto t = TokenTable::Parse(
      "# token role namespaces\n\nr-1 read\nc-1 controller team-a,team-b\n"
      "a-1   admin\r\n",
      "--token-file");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->single());
  TokenTable::Failure why;
  auto c = t->Authenticate("Bearer c-1", &why);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->role, Role::kController);
  EXPECT_TRUE(c->AllowsNamespace("team-b"));
  EXPECT_FALSE(c->AllowsNamespace("team-c"));
  EXPECT_EQ(t->Authenticate("Bearer r-1", &why)->role, Role::kRead);
  EXPECT_TRUE(t->Authenticate("Bearer a-1", &why)->AllowsNamespace("x"));
}

TEST(TokenTableTest, BadFilesAreRefusedByLineWithoutShowingTheToken) {
  struct Case {
    std::string text, message;
  } cases[] = {
      {"", "no token"},
      {"# only a comment\n", "no token"},
      {"tok-1 owner\n", "line 1: unknown role \"owner\""},
      {"tok-1 read\ntok-1 admin\n", "line 2: the same token"},
      {"tok-1 read Bad_NS\n", "line 1: namespace"},
      {"tok-1 read ns extra\n", "line 1: expected"},
  };
  for (const Case& k : cases) {
    auto t = TokenTable::Parse(k.text, "--token-file");
    ASSERT_FALSE(t.ok()) << k.text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(k.message));
    EXPECT_THAT(std::string(t.status().message()),
                ::testing::Not(HasSubstr("tok-1")));
  }
}

class RolesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    driver_ = *NewMemoryDriver(MemoryConfig{absl::Minutes(5)});
    service_ = std::make_unique<Service>(driver_.get(), nullptr, &metrics_);
    auto tokens = TokenTable::Parse(
        "read-all read\ncontrol-all controller\nadmin-all admin\n"
        "read-ns read ns\ncontrol-other controller other\n"
        "admin-ns admin ns\n",
        "tokens");
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    HttpServerOptions o;
    o.port = 0;
    o.tokens = std::make_shared<const TokenTable>(*std::move(tokens));
    server_ = std::make_unique<HttpServer>(service_.get(), &metrics_, o);
    ASSERT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
    // ns/app with limit 1, held by ns/a.
    Context ctx = Context::Background();
    ASSERT_TRUE(
        service_->SetLimit(ctx, "ns/app", Json{{"concurrency_limit", 1}}).ok());
    auto a = service_->Submit(ctx, "ns/app", Json{{"pipeline_run", "ns/a"}});
    ASSERT_TRUE(a.ok());
    lease_id_ = (*a)["lease"]["lease_id"];
  }
  void TearDown() override {
    server_->Stop();
    (void)driver_->Close();
  }
  httplib::Result Send(const std::string& token, const std::string& method,
                       const std::string& path, const std::string& body) {
    httplib::Client c(url_);
    c.set_read_timeout(10, 0);
    if (!token.empty()) c.set_bearer_token_auth(token);
    if (method == "GET") return c.Get(path);
    if (method == "PUT") return c.Put(path, body, "application/json");
    if (method == "DELETE") return c.Delete(path);
    return c.Post(path, body, "application/json");
  }

  std::unique_ptr<Driver> driver_;
  Metrics metrics_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<HttpServer> server_;
  std::string url_;
  std::string lease_id_;
};

// Every route × role cell: a token whose role is below the route's gets
// 403 naming the role needed; one at or above it gets past the check (the
// answer is then the route's own: 200, 202, 404, 410...). No token and an
// unknown token get 401, with different messages. Health probes are open.
TEST_F(RolesTest, EveryRouteTimesEveryRole) {
  struct RouteCase {
    std::string method, path, body;
    int needed;  // 0 open, 1 read, 2 controller, 3 admin
  } routes[] = {
      {"GET", "/healthz", "", 0},
      {"GET", "/readyz", "", 0},
      {"GET", "/metrics", "", 1},
      {"GET", "/v1/repositories", "", 1},
      {"GET", "/v1/repositories/ns/app", "", 1},
      {"GET", "/v1/repositories/ns/app/watch?timeout=10ms", "", 1},
      {"POST", "/v1/repositories/ns/app/runs", R"({"pipeline_run":"ns/b"})", 2},
      {"DELETE", "/v1/repositories/ns/app/runs/ns/zz", "", 2},
      {"POST", "/v1/leases/no-such-lease/renew", "", 2},
      {"GET", "/v1/repositories/ns/app/state", "", 1},
      {"PUT", "/v1/repositories/ns/app/state", R"({"state":"active"})", 2},
      {"GET", "/v1/pipelineruns/ns/pr-1/state", "", 1},
      {"PUT", "/v1/pipelineruns/ns/pr-1/state", R"({"state":"started"})", 2},
      {"PUT", "/v1/repositories/ns/app", R"({"concurrency_limit":1})", 3},
      {"DELETE", "/v1/repositories/ns/gone", "", 3},
      {"DELETE", "/v1/repositories/ns/gone/queue", "", 3},
      {"GET", "/v1/repositories/ns/app/policy", "", 1},
      {"PUT", "/v1/repositories/ns/app/policy", R"({"max_queue_seconds":60})",
       3},
      {"POST", "/v1/repositories",
       "kind: Repository\nmetadata: {name: m, namespace: ns}\n", 3},
      {"POST", "/v1/import", R"({"pipelineruns": {"items": []}})", 3},
      {"POST", "/v1/repositories/ns/app/runs",
       R"({"pipeline_run":"ns/c","state":"started"})", 3},
  };
  const std::pair<std::string, int> tokens[] = {
      {"read-all", 1}, {"control-all", 2}, {"admin-all", 3}};
  for (const RouteCase& r : routes) {
    const std::string cell = r.method + " " + r.path + " " + r.body;
    auto none = Send("", r.method, r.path, r.body);
    ASSERT_TRUE(none) << cell;
    auto wrong = Send("not-a-token", r.method, r.path, r.body);
    if (r.needed == 0) {
      EXPECT_EQ(none->status, 200) << cell;
      EXPECT_EQ(wrong->status, 200) << cell;
      continue;
    }
    EXPECT_EQ(none->status, 401) << cell;
    EXPECT_THAT(none->body, HasSubstr("is required")) << cell;
    EXPECT_EQ(wrong->status, 401) << cell;
    EXPECT_THAT(wrong->body, HasSubstr("not one this server knows")) << cell;
    for (const auto& [token, level] : tokens) {
      auto got = Send(token, r.method, r.path, r.body);
      ASSERT_TRUE(got) << cell << " as " << token;
      if (level < r.needed) {
        EXPECT_EQ(got->status, 403) << cell << " as " << token;
        // The role needed is named: the route's (controller for a
        // submit), or admin to adopt.
        EXPECT_THAT(got->body, HasSubstr(level == 1 ? "needs a token with the"
                                                    : "with the admin role"))
            << cell << " as " << token;
      } else {
        EXPECT_NE(got->status, 401) << cell << " as " << token;
        EXPECT_NE(got->status, 403) << cell << " as " << token << got->body;
        EXPECT_LT(got->status, 500) << cell << " as " << token << got->body;
      }
    }
  }
}

TEST_F(RolesTest, NamespaceLimitedTokensActOnlyInTheirNamespaces) {
  // A controller of "other" may not submit to or release in ns.
  auto submit = Send("control-other", "POST", "/v1/repositories/ns/app/runs",
                     R"({"pipeline_run":"ns/b"})");
  EXPECT_EQ(submit->status, 403);
  EXPECT_THAT(submit->body, HasSubstr("may not act on namespace"));
  EXPECT_EQ(Send("control-other", "POST", "/v1/repositories/other/app/runs",
                 R"({"pipeline_run":"other/b","concurrency_limit":1})")
                ->status,
            200);
  // The state of a pipeline run is checked against the run's namespace.
  EXPECT_EQ(Send("control-other", "PUT", "/v1/pipelineruns/ns/pr-1/state",
                 R"({"state":"started"})")
                ->status,
            403);
  EXPECT_EQ(Send("control-other", "PUT", "/v1/pipelineruns/other/pr-1/state",
                 R"({"state":"started"})")
                ->status,
            200);
  // An admin of ns may set ns's limits but not import across namespaces.
  EXPECT_EQ(Send("admin-ns", "PUT", "/v1/repositories/ns/app",
                 R"({"concurrency_limit":2})")
                ->status,
            200);
  auto import = Send("admin-ns", "POST", "/v1/import",
                     R"({"pipelineruns": {"items": []}})");
  EXPECT_EQ(import->status, 403);
  EXPECT_THAT(import->body, HasSubstr("spans namespaces"));
  EXPECT_EQ(Send("read-ns", "GET", "/metrics", "")->status, 403);
  // Listings show a limited token only its namespaces.
  auto all = Send("read-ns", "GET", "/v1/repositories", "");
  ASSERT_EQ(all->status, 200);
  Json list = Json::parse(all->body);
  ASSERT_EQ(list["repositories"].size(), 1u) << all->body;
  EXPECT_EQ(list["repositories"][0]["repository"], "ns/app");
  // Pages of a limited token hold only its namespaces too.
  auto paged = Send("read-ns", "GET", "/v1/repositories?limit=1", "");
  ASSERT_EQ(paged->status, 200);
  Json first = Json::parse(paged->body);
  ASSERT_EQ(first["repositories"].size(), 1u) << paged->body;
  EXPECT_EQ(first["repositories"][0]["repository"], "ns/app");
  EXPECT_FALSE(first.contains("next")) << paged->body;
  EXPECT_EQ(
      Send("read-ns", "GET", "/v1/repositories?namespace=other", "")->status,
      403);
  EXPECT_EQ(Send("read-all", "GET", "/v1/repositories", "")->status, 200);
}

TEST_F(RolesTest, ReadTokensDoNotSeeLeaseIds) {
  auto as_read = Send("read-all", "GET", "/v1/repositories/ns/app", "");
  ASSERT_EQ(as_read->status, 200);
  EXPECT_THAT(as_read->body, HasSubstr("ns/a"));
  EXPECT_THAT(as_read->body, ::testing::Not(HasSubstr("lease_id")));
  EXPECT_THAT(as_read->body, ::testing::Not(HasSubstr(lease_id_)));
  auto as_controller =
      Send("control-all", "GET", "/v1/repositories/ns/app", "");
  EXPECT_THAT(as_controller->body, HasSubstr(lease_id_));
  // And a controller renews by it.
  EXPECT_EQ(
      Send("control-all", "POST", "/v1/leases/" + lease_id_ + "/renew", "")
          ->status,
      200);
}

}  // namespace
}  // namespace pac::concurrency::server
