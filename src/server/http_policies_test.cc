// The HTTP layer's queue policies: queue time limits, queue modes,
// clearing a queue, supersede groups and cancel_running, through the raw
// routes and RemoteApi.
#include <string>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/http_test_fixture.h"
#include "src/server/remote_api.h"

namespace pac::concurrency::server {
namespace {

using ::testing::HasSubstr;

// A queue time limit, the run's own (max_queue_seconds on submit) or the
// repository's (PUT .../policy): past it the run leaves the queue by
// itself, with a "removed" event, and its re-submits get 410.
TEST_F(HttpServerTest, ARunPastItsQueueTimeLimitLeavesTheQueue) {
  Start();
  RemoteApi api(url_, "");
  auto none = api.GetPolicy(ctx_, "ns/app");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, (Json{{"repository", "ns/app"},
                         {"max_queue_seconds", nullptr},
                         {"queue_mode", "oldest-first"},
                         {"shared_limits", Json::array()}}));
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  auto c = Client();
  auto b = c.Post("/v1/repositories/ns/app/runs",
                  R"({"pipeline_run": "ns/b", "max_queue_seconds": 0.3})",
                  "application/json");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->status, 202) << b->body;
  auto got = c.Get("/v1/repositories/ns/app/watch?timeout=10s");
  ASSERT_TRUE(got);
  ASSERT_GE(Body(got)["events"].size(), 1u) << got->body;
  EXPECT_EQ(Body(got)["events"][0], (Json{{"type", "removed"},
                                          {"repository", "ns/app"},
                                          {"pipeline_run", "ns/b"},
                                          {"reason", "timed-out"}}));
  auto again = c.Post("/v1/repositories/ns/app/runs",
                      R"({"pipeline_run": "ns/b"})", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 410) << again->body;
  EXPECT_EQ(Body(again)["error"]["reason"], "timed-out");

  // The repository's limit, set and read over HTTP, applies to c.
  auto put = c.Put("/v1/repositories/ns/app/policy",
                   R"({"max_queue_seconds": 0.3})", "application/json");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 200) << put->body;
  EXPECT_EQ(Body(put), (Json{{"repository", "ns/app"},
                             {"max_queue_seconds", 0.3},
                             {"queue_mode", "oldest-first"},
                             {"shared_limits", Json::array()}}));
  EXPECT_EQ((*api.GetPolicy(ctx_, "ns/app"))["max_queue_seconds"], 0.3);
  ASSERT_EQ(
      (*api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/c"}}))["position"],
      1);
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while ((*api.Status(ctx_, "ns/app"))["queue_depth"] != 0 &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ((*api.Status(ctx_, "ns/app"))["queue_depth"], 0);
  auto cs = api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/c"}});
  EXPECT_EQ(RunRemovedReason(cs.status()), "timed-out") << cs.status();
  // null forgets it.
  auto cleared =
      api.SetPolicy(ctx_, "ns/app", Json{{"max_queue_seconds", nullptr}});
  ASSERT_TRUE(cleared.ok()) << cleared.status();
  EXPECT_TRUE((*api.GetPolicy(ctx_, "ns/app"))["max_queue_seconds"].is_null());

  // Bad limits are 400 naming the field, and change nothing.
  for (const char* body :
       {R"({"max_queue_seconds": 0})", R"({"max_queue_seconds": -1})",
        R"({"max_queue_seconds": "30m"})", R"({"max_queue_seconds": 1e300})",
        R"({"max_queue": 30})"}) {
    auto bad =
        c.Put("/v1/repositories/ns/app/policy", body, "application/json");
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->status, 400) << body << bad->body;
    EXPECT_THAT(bad->body, HasSubstr("max_queue")) << body;
    auto sub = c.Post("/v1/repositories/ns/app/runs",
                      std::string(R"({"pipeline_run": "ns/d", )") + (body + 1),
                      "application/json");
    ASSERT_TRUE(sub);
    EXPECT_EQ(sub->status, 400) << body << sub->body;
  }
  EXPECT_TRUE((*api.GetPolicy(ctx_, "ns/app"))["max_queue_seconds"].is_null());
  EXPECT_EQ((*api.Status(ctx_, "ns/app"))["queue_depth"], 0);
}

// The queue's mode (PUT .../policy "queue_mode") orders the queue, a
// submit's "priority" places a run under the priority mode, and the status
// shows both; a field left out of a PUT keeps its value.
TEST_F(HttpServerTest, AQueueModeOrdersTheQueue) {
  Start();
  RemoteApi api(url_, "");
  auto c = Client();
  ASSERT_TRUE(
      api.SetPolicy(ctx_, "ns/app", Json{{"max_queue_seconds", 600}}).ok());
  auto put = c.Put("/v1/repositories/ns/app/policy",
                   R"({"queue_mode": "priority"})", "application/json");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 200) << put->body;
  EXPECT_EQ(Body(put), (Json{{"repository", "ns/app"},
                             {"max_queue_seconds", 600},
                             {"queue_mode", "priority"},
                             {"shared_limits", Json::array()}}));
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  auto low = api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/low"}});
  ASSERT_TRUE(low.ok());
  EXPECT_EQ((*low)["position"], 1);
  auto high = api.Submit(ctx_, "ns/app",
                         Json{{"pipeline_run", "ns/high"}, {"priority", 7}});
  ASSERT_TRUE(high.ok());
  EXPECT_EQ((*high)["position"], 1);
  auto status = api.Status(ctx_, "ns/app");
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["queue_mode"], "priority");
  EXPECT_EQ((*status)["queued"][0]["pipeline_run"], "ns/high");
  EXPECT_EQ((*status)["queued"][0]["priority"], 7);
  EXPECT_EQ((*status)["queued"][1]["pipeline_run"], "ns/low");
  for (const char* body :
       {R"({"queue_mode": "fifo"})", R"({"queue_mode": 1})"}) {
    auto bad =
        c.Put("/v1/repositories/ns/app/policy", body, "application/json");
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->status, 400) << body << bad->body;
    EXPECT_THAT(bad->body, HasSubstr("queue_mode")) << body;
  }
  for (const char* body :
       {R"({"pipeline_run": "ns/x", "priority": "high"})",
        R"({"pipeline_run": "ns/x", "priority": 1.5})",
        R"({"pipeline_run": "ns/x", "priority": 3000000000})"}) {
    auto bad = c.Post("/v1/repositories/ns/app/runs", body, "application/json");
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->status, 400) << body << bad->body;
    EXPECT_THAT(bad->body, HasSubstr("priority")) << body;
  }
  // null: back to oldest-first; the limit is kept.
  auto reset = api.SetPolicy(ctx_, "ns/app", Json{{"queue_mode", nullptr}});
  ASSERT_TRUE(reset.ok()) << reset.status();
  EXPECT_EQ((*reset)["queue_mode"], "oldest-first");
  EXPECT_EQ((*reset)["max_queue_seconds"], 600);
  EXPECT_EQ((*api.Status(ctx_, "ns/app"))["queued"][0]["pipeline_run"],
            "ns/low");
}

// DELETE .../queue removes the queued runs: the raw route, RemoteApi, the
// watch event with its reason, the 410 RUN_REMOVED a re-submit gets (the
// reason round-trips), the counter, and the admin role it needs.
TEST_F(HttpServerTest, ClearingAQueueRemovesItsRunsForGood) {
  Start();
  RemoteApi api(url_, "");
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  ASSERT_EQ(
      (*api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/b"}}))["position"],
      1);
  ASSERT_EQ(
      (*api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/c"}}))["position"],
      2);
  auto c = Client();
  std::thread clearer([this] {
    absl::SleepFor(absl::Milliseconds(300));
    auto cleared = Client().Delete("/v1/repositories/ns/app/queue");
    ASSERT_TRUE(cleared);
    EXPECT_EQ(cleared->status, 200) << cleared->body;
    EXPECT_EQ(Body(cleared),
              (Json{{"repository", "ns/app"},
                    {"removed", Json::array({"ns/b", "ns/c"})}}));
  });
  auto got = c.Get("/v1/repositories/ns/app/watch?timeout=10s");
  clearer.join();
  ASSERT_TRUE(got);
  ASSERT_GE(Body(got)["events"].size(), 1u) << got->body;
  EXPECT_EQ(Body(got)["events"][0], (Json{{"type", "removed"},
                                          {"repository", "ns/app"},
                                          {"pipeline_run", "ns/b"},
                                          {"reason", "cleared"}}));
  // A re-submit is 410 with the reason, raw and through RemoteApi.
  auto again = c.Post("/v1/repositories/ns/app/runs",
                      R"({"pipeline_run": "ns/c"})", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 410) << again->body;
  EXPECT_EQ(Body(again)["error"]["code"], "RUN_REMOVED");
  EXPECT_EQ(Body(again)["error"]["reason"], "cleared");
  auto b = api.Submit(ctx_, "ns/app", Json{{"pipeline_run", "ns/b"}});
  EXPECT_TRUE(IsRunRemoved(b.status())) << b.status();
  EXPECT_EQ(RunRemovedReason(b.status()), "cleared");
  auto status = api.Status(ctx_, "ns/app");
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["in_use"], 1);
  EXPECT_EQ((*status)["queue_depth"], 0);
  auto empty = api.ClearQueue(ctx_, "ns/app");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE((*empty)["removed"].empty());
  EXPECT_EQ(api.ClearQueue(ctx_, "bad").status().code(),
            absl::StatusCode::kInvalidArgument);
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body,
              HasSubstr("pac_runs_removed_total{reason=\"cleared\"} 2"));
}

// "group" in a submit: a newer run of the group supersedes the older
// queued one (a removed event with the reason, 410 on its re-submit); a
// group that is not a string, or has a space, is 400 and writes nothing.
TEST_F(HttpServerTest, ASubmitOfAGroupSupersedesItsOlderQueuedRun) {
  Start();
  RemoteApi api(url_, "");
  ASSERT_TRUE(
      api.Submit(ctx_, "ns/app",
                 Json{{"pipeline_run", "ns/a"}, {"concurrency_limit", 1}})
          .ok());
  ASSERT_EQ((*api.Submit(
                ctx_, "ns/app",
                Json{{"pipeline_run", "ns/pr-7-1"},
                     {"group", "pr-7"},
                     {"creation_time", "2026-01-01T10:00:00Z"}}))["position"],
            1);
  auto c = Client();
  auto bad =
      c.Post("/v1/repositories/ns/app/runs",
             R"({"pipeline_run": "ns/x", "group": 7})", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  bad = c.Post("/v1/repositories/ns/app/runs",
               R"({"pipeline_run": "ns/x", "group": "pr 7"})",
               "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  EXPECT_THAT(Body(bad)["error"]["message"].get<std::string>(),
              HasSubstr("group"));
  std::thread newer([this] {
    absl::SleepFor(absl::Milliseconds(300));
    RemoteApi other(url_, "");
    auto r = other.Submit(Context::Background(), "ns/app",
                          Json{{"pipeline_run", "ns/pr-7-2"},
                               {"group", "pr-7"},
                               {"creation_time", "2026-01-01T10:05:00Z"}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)["position"], 1);
  });
  auto got = c.Get("/v1/repositories/ns/app/watch?timeout=10s");
  newer.join();
  ASSERT_TRUE(got);
  ASSERT_GE(Body(got)["events"].size(), 1u) << got->body;
  EXPECT_EQ(Body(got)["events"][0]["type"], "removed");
  EXPECT_EQ(Body(got)["events"][0]["pipeline_run"], "ns/pr-7-1");
  EXPECT_EQ(Body(got)["events"][0]["reason"], "superseded");
  auto again = api.Submit(
      ctx_, "ns/app", Json{{"pipeline_run", "ns/pr-7-1"}, {"group", "pr-7"}});
  EXPECT_TRUE(IsRunRemoved(again.status())) << again.status();
  EXPECT_EQ(RunRemovedReason(again.status()), "superseded");
  auto status = api.Status(ctx_, "ns/app");
  ASSERT_TRUE(status.ok());
  ASSERT_EQ((*status)["queued"].size(), 1u);
  EXPECT_EQ((*status)["queued"][0]["pipeline_run"], "ns/pr-7-2");
}

// "cancel_running" in a submit: the group's running run hears
// "cancel_requested" on the watch and in its renew answer, keeps its slot
// until it releases, and the newer run is admitted then. The flag without
// a group, or not a boolean, is 400.
TEST_F(HttpServerTest, CancelRunningAsksTheGroupsRunningRunToStop) {
  Start();
  RemoteApi api(url_, "");
  auto first = api.Submit(ctx_, "ns/app",
                          Json{{"pipeline_run", "ns/pr-7-1"},
                               {"group", "pr-7"},
                               {"concurrency_limit", 1}});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*first)["acquired"].get<bool>());
  const std::string lease = (*first)["lease"]["lease_id"];
  EXPECT_FALSE((*first)["lease"]["cancel_requested"].get<bool>());
  auto c = Client();
  for (const char* body :
       {R"({"pipeline_run": "ns/x", "cancel_running": true})",
        R"({"pipeline_run": "ns/x", "group": "g", "cancel_running": 1})"}) {
    auto bad = c.Post("/v1/repositories/ns/app/runs", body, "application/json");
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->status, 400) << bad->body;
    EXPECT_THAT(Body(bad)["error"]["message"].get<std::string>(),
                HasSubstr("cancel_running"));
  }
  std::thread newer([this] {
    absl::SleepFor(absl::Milliseconds(300));
    RemoteApi other(url_, "");
    auto r = other.Submit(Context::Background(), "ns/app",
                          Json{{"pipeline_run", "ns/pr-7-2"},
                               {"group", "pr-7"},
                               {"cancel_running", true}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ((*r)["position"], 1);
  });
  auto got = c.Get("/v1/repositories/ns/app/watch?timeout=10s");
  newer.join();
  ASSERT_TRUE(got);
  ASSERT_GE(Body(got)["events"].size(), 1u) << got->body;
  EXPECT_EQ(Body(got)["events"][0]["type"], "cancel_requested");
  EXPECT_EQ(Body(got)["events"][0]["pipeline_run"], "ns/pr-7-1");
  auto renewed = api.Renew(ctx_, lease);
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  EXPECT_TRUE((*renewed)["cancel_requested"].get<bool>());
  auto status = api.Status(ctx_, "ns/app");
  ASSERT_TRUE(status.ok());
  ASSERT_EQ((*status)["running"].size(), 1u);
  EXPECT_TRUE((*status)["running"][0]["cancel_requested"].get<bool>());
  ASSERT_EQ((*status)["queued"].size(), 1u);
  auto released = api.Release(ctx_, "ns/app", "ns/pr-7-1", lease);
  ASSERT_TRUE(released.ok()) << released.status();
  status = api.Status(ctx_, "ns/app");
  ASSERT_TRUE(status.ok());
  ASSERT_EQ((*status)["running"].size(), 1u);
  EXPECT_EQ((*status)["running"][0]["pipeline_run"], "ns/pr-7-2");
  EXPECT_FALSE((*status)["running"][0]["cancel_requested"].get<bool>());
}

// Shared limits over HTTP: set, list and delete them, join a repository
// through its policy, and a queued run's waiting_for names the full
// shared limit (on submit and in the status).
TEST_F(HttpServerTest, SharedLimitsHoldRunsAcrossRepositories) {
  Start();
  auto c = Client();
  auto put =
      c.Put("/v1/shared-limits/team-a", R"({"limit": 1})", "application/json");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 200) << put->body;
  EXPECT_EQ(Body(put), (Json{{"name", "team-a"}, {"limit", 1}}));
  auto bad = c.Put("/v1/shared-limits/Team%20A", R"({"limit": 1})",
                   "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  bad =
      c.Put("/v1/shared-limits/team-a", R"({"limit": -2})", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  for (const char* repo : {"ns/one", "ns/two"}) {
    auto p = c.Put(std::string("/v1/repositories/") + repo + "/policy",
                   R"({"shared_limits": ["team-a"]})", "application/json");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->status, 200) << p->body;
    EXPECT_EQ(Body(p)["shared_limits"], Json::array({"team-a"}));
  }
  auto a = c.Post("/v1/repositories/ns/one/runs",
                  R"({"pipeline_run": "ns/a", "concurrency_limit": 5})",
                  "application/json");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, 200) << a->body;
  // ns/two has four free slots, but team-a is full.
  auto b = c.Post("/v1/repositories/ns/two/runs",
                  R"({"pipeline_run": "ns/b", "concurrency_limit": 5})",
                  "application/json");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->status, 202) << b->body;
  EXPECT_EQ(Body(b)["waiting_for"], (Json{{"reason", "shared_limit"},
                                          {"shared_limit", "team-a"},
                                          {"limit", 1},
                                          {"in_use", 1},
                                          {"queued", 1},
                                          {"ahead", 0}}));
  auto status = c.Get("/v1/repositories/ns/two");
  ASSERT_TRUE(status);
  EXPECT_EQ(Body(status)["queued"][0]["waiting_for"]["shared_limit"], "team-a");
  // And in the listing (ns/one, full by the team too, has nobody queued).
  auto listing = c.Get("/v1/repositories?namespace=ns");
  ASSERT_TRUE(listing);
  EXPECT_EQ(listing->status, 200) << listing->body;
  bool listed = false;
  const Json listed_body = Body(listing);
  for (const Json& r : listed_body["repositories"]) {
    if (r["repository"] != "ns/two") continue;
    listed = true;
    EXPECT_EQ(r["queued"][0]["waiting_for"]["reason"], "shared_limit")
        << r.dump();
    EXPECT_EQ(r["queued"][0]["waiting_for"]["shared_limit"], "team-a");
  }
  EXPECT_TRUE(listed) << listing->status << listing->body;
  auto list = c.Get("/v1/shared-limits");
  ASSERT_TRUE(list);
  EXPECT_EQ(list->status, 200) << list->body;
  EXPECT_EQ(
      Body(list)["shared_limits"],
      Json::array({Json{{"name", "team-a"},
                        {"limit", 1},
                        {"running", 1},
                        {"queued", 1},
                        {"members", Json::array({"ns/one", "ns/two"})}}}));
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body,
              HasSubstr("pac_shared_limit{shared_limit=\"team-a\"} 1"));
  EXPECT_THAT(metrics->body,
              HasSubstr("pac_shared_limit_in_use{shared_limit=\"team-a\"} 1"));
  EXPECT_THAT(metrics->body,
              HasSubstr("pac_shared_limit_queued{shared_limit=\"team-a\"} 1"));
  // Deleting the limit lets b run.
  auto del = c.Delete("/v1/shared-limits/team-a");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
  auto again = c.Post("/v1/repositories/ns/two/runs",
                      R"({"pipeline_run": "ns/b"})", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
  EXPECT_TRUE(Body(again)["acquired"].get<bool>());
}

// A run held by a full shared limit says how many runs go before it:
// those ahead in its own queue, and those of the other members queued
// earlier (the earliest queued head goes first), in its status and in
// the listing.
TEST_F(HttpServerTest, ARunHeldByASharedLimitSaysHowManyGoFirst) {
  Start();
  auto c = Client();
  ASSERT_TRUE(
      c.Put("/v1/shared-limits/team-b", R"({"limit": 1})", "application/json"));
  for (const char* repo : {"ns/one", "ns/two"}) {
    auto p = c.Put(std::string("/v1/repositories/") + repo + "/policy",
                   R"({"shared_limits": ["team-b"]})", "application/json");
    ASSERT_TRUE(p);
    ASSERT_EQ(p->status, 200) << p->body;
  }
  auto submit = [&](const char* repo, const char* run) {
    auto r =
        c.Post(std::string("/v1/repositories/") + repo + "/runs",
               Json{{"pipeline_run", run}, {"concurrency_limit", 5}}.dump(),
               "application/json");
    EXPECT_TRUE(r);
    return r ? r->status : 0;
  };
  EXPECT_EQ(submit("ns/one", "ns/a"), 200);
  EXPECT_EQ(submit("ns/one", "ns/a2"), 202);  // first in the team's queue
  EXPECT_EQ(submit("ns/two", "ns/b"), 202);
  EXPECT_EQ(submit("ns/two", "ns/c"), 202);
  auto status = c.Get("/v1/repositories/ns/two");
  ASSERT_TRUE(status);
  const Json two = Body(status);
  ASSERT_EQ(two["queued"].size(), 2u) << two.dump();
  EXPECT_EQ(two["queued"][0]["waiting_for"]["reason"], "shared_limit");
  EXPECT_EQ(two["queued"][0]["waiting_for"]["ahead"], 0);
  EXPECT_EQ(two["queued"][0]["waiting_for"]["ahead_in_shared_limit"], 1);
  EXPECT_EQ(two["queued"][1]["waiting_for"]["ahead"], 1);
  EXPECT_EQ(two["queued"][1]["waiting_for"]["ahead_in_shared_limit"], 2);
  auto listing = c.Get("/v1/repositories?namespace=ns");
  ASSERT_TRUE(listing);
  const Json all = Body(listing);
  int seen = 0;
  for (const Json& r : all["repositories"]) {
    if (r["repository"] == "ns/one") {
      ++seen;
      EXPECT_EQ(r["queued"][0]["waiting_for"]["ahead_in_shared_limit"], 0);
    } else if (r["repository"] == "ns/two") {
      ++seen;
      EXPECT_EQ(r["queued"][1]["waiting_for"]["ahead_in_shared_limit"], 2);
    }
  }
  EXPECT_EQ(seen, 2) << listing->body;
}

// A Repository manifest's pac-concurrency.dev/shared-limits annotation
// sets the repository's shared limits (POST /v1/repositories, `limit -f`);
// a manifest without it leaves them; a bad name is 400 and writes nothing.
TEST_F(HttpServerTest, AManifestAnnotationSetsTheSharedLimits) {
  Start();
  auto c = Client();
  auto applied = c.Post("/v1/repositories",
                        R"(apiVersion: pipelinesascode.tekton.dev/v1alpha1
kind: Repository
metadata:
  name: app
  namespace: ns
  annotations:
    pac-concurrency.dev/shared-limits: "team-b, team-a"
spec:
  concurrency_limit: 2
)",
                        "application/yaml");
  ASSERT_TRUE(applied);
  EXPECT_EQ(applied->status, 200) << applied->body;
  EXPECT_EQ(Body(applied)["repositories"][0]["shared_limits"],
            Json::array({"team-a", "team-b"}));
  auto policy = c.Get("/v1/repositories/ns/app/policy");
  ASSERT_TRUE(policy);
  EXPECT_EQ(Body(policy)["shared_limits"], Json::array({"team-a", "team-b"}));
  // Without the annotation the membership stays.
  auto again = c.Post("/v1/repositories", R"(kind: Repository
metadata: {name: app, namespace: ns}
spec: {concurrency_limit: 3}
)",
                      "application/yaml");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
  policy = c.Get("/v1/repositories/ns/app/policy");
  EXPECT_EQ(Body(policy)["shared_limits"], Json::array({"team-a", "team-b"}));
  auto bad = c.Post("/v1/repositories", R"(kind: Repository
metadata:
  name: other
  namespace: ns
  annotations: {pac-concurrency.dev/shared-limits: "Team A"}
spec: {concurrency_limit: 1}
)",
                    "application/yaml");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  EXPECT_THAT(bad->body, HasSubstr("pac-concurrency.dev/shared-limits"));
  auto none = c.Get("/v1/repositories/ns/other");
  ASSERT_TRUE(none);
  EXPECT_TRUE(Body(none)["concurrency_limit"].is_null()) << none->body;
}

}  // namespace
}  // namespace pac::concurrency::server
