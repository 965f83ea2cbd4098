#include "pac/concurrency/repository.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pac::concurrency {
namespace {

TEST(KeyTest, AcceptsKubernetesNames) {
  for (const char* key : {"ns/name", "a/b", "team-1/my.repo-2", "0/0",
                          "openshift-pipelines/pipelines-as-code"}) {
    EXPECT_TRUE(ValidateKey(key, "repository").ok()) << key;
  }
  // The longest: a 63-character namespace and a 253-character name made of
  // labels of at most 63 characters.
  std::string name = std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                     std::string(63, 'd') + "." + std::string(61, 'e');
  ASSERT_EQ(name.size(), 253u);
  EXPECT_TRUE(
      ValidateKey(std::string(63, 'a') + "/" + name, "repository").ok());
  EXPECT_FALSE(ValidateKey("ns/" + std::string(64, 'b'), "repository").ok());
}

TEST(KeyTest, RejectsBadKeysNamingTheField) {
  for (const std::string& key :
       {std::string(""), std::string("ns"), std::string("ns/"),
        std::string("/n"), std::string("a/b/c"), std::string("NS/n"),
        std::string("ns/N"), std::string("ns/a_b"), std::string("ns/.."),
        std::string("ns/a..b"), std::string("ns/.a"), std::string("-a/b"),
        std::string("a-/b"), std::string("ns/a b"), std::string("ns/a\0", 5),
        std::string(64, 'a') + "/b", "a/" + std::string(254, 'b')}) {
    absl::Status s = ValidateKey(key, "pipeline_run");
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << "accepted '" << key << "'";
    EXPECT_EQ(s.message().rfind("pipeline_run", 0), 0u) << s;
  }
}

// The offending character is shown as itself (a UTF-8 one whole), a byte
// that is not UTF-8 escaped; never '?'.
TEST(KeyTest, NamesTheOffendingCharacter) {
  for (const auto& [key, shown] :
       std::vector<std::pair<std::string, std::string>>{
           {"ns/caf\xc3\xa9", "'\xc3\xa9'"},
           {"ns/a\xf0\x9f\x9a\x80"
            "b",
            "'\xf0\x9f\x9a\x80'"},
           {"ns/a b", "' '"},
           {"ns/a\xff"
            "b",
            "'\\xff'"},
           {"ns/a\x01", "'\\x01'"}}) {
    absl::Status s = ValidateKey(key, "repository");
    EXPECT_THAT(std::string(s.message()),
                ::testing::HasSubstr("contains the character " + shown))
        << s;
  }
}

TEST(RepositoryTest, KeyAndLimit) {
  Repository repo{"ns", "repo", std::nullopt};
  EXPECT_EQ(repo.Key(), "ns/repo");
  EXPECT_EQ(EffectiveLimit(repo), 0);
  EXPECT_TRUE(ValidateRepository(repo).ok());
  repo.concurrency_limit = -1;
  absl::Status s = ValidateRepository(repo);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("concurrency_limit"), std::string::npos);
  Repository slashy{"ns/x", "repo", 1};
  EXPECT_FALSE(ValidateRepository(slashy).ok());
}

TEST(RepositoryTest, NamespaceAlone) {
  EXPECT_TRUE(ValidateNamespace("team-a", "namespace").ok());
  for (std::string_view bad : {"", "Team", "a/b", "-a", "a.b"}) {
    absl::Status s = ValidateNamespace(bad, "namespace");
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad;
    EXPECT_NE(s.message().find("namespace"), std::string::npos) << s;
  }
  EXPECT_FALSE(ValidateNamespace(std::string(64, 'a'), "namespace").ok());
}

TEST(RepositoryTest, FromKey) {
  auto repo = Repository::FromKey("ns/repo", 3);
  ASSERT_TRUE(repo.ok());
  EXPECT_EQ(repo->ns, "ns");
  EXPECT_EQ(repo->name, "repo");
  EXPECT_EQ(repo->concurrency_limit, 3);
  EXPECT_FALSE(Repository::FromKey("bad").ok());
  EXPECT_FALSE(Repository::FromKey("ns/repo", -2).ok());
}

}  // namespace
}  // namespace pac::concurrency
