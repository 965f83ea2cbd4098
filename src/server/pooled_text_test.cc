#include "src/server/pooled_text.h"

#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "src/common/strings.h"

namespace pac::concurrency::server {
namespace {

TEST(PooledTextTest, EqualValuesShareOneCopy) {
  PooledText a = std::string("pipelinesascode.tekton.dev");
  PooledText b("pipelinesascode.tekton.dev");
  EXPECT_EQ(&a.str(), &b.str());
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a == "pipelinesascode.tekton.dev");
  EXPECT_FALSE(a == "argocd");
  EXPECT_FALSE(a == PooledText("argocd"));
}

TEST(PooledTextTest, EmptyClearAndConversions) {
  PooledText t;
  EXPECT_TRUE(t.empty());
  EXPECT_TRUE(t == "");
  t = "queued";
  EXPECT_EQ(t.size(), 6u);
  EXPECT_EQ(std::string_view(t), "queued");
  EXPECT_EQ(internal::Cat("state ", t, "."), "state queued.");
  nlohmann::json j = {{"state", t.str()}};
  EXPECT_EQ(j.dump(), R"({"state":"queued"})");
  t.clear();
  EXPECT_TRUE(t.empty());
}

// Many threads interning the same values get the same copies, and the
// values stay where they are while the pool grows.
TEST(PooledTextTest, ThreadsInterningTogetherAgree) {
  constexpr int kThreads = 8, kValues = 2000;
  std::vector<std::vector<const std::string*>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &seen] {
      for (int i = 0; i < kValues; ++i) {
        seen[t].push_back(
            &PooledText("pooled-test-" + std::to_string(i)).str());
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]);
  for (int i = 0; i < kValues; ++i) {
    EXPECT_EQ(*seen[0][i], "pooled-test-" + std::to_string(i));
  }
  EXPECT_EQ(PooledText::Overflowed(), 0u);
}

}  // namespace
}  // namespace pac::concurrency::server
