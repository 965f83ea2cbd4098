#include "pac/concurrency/config.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pac::concurrency {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST(DurationTest, GoSyntaxAndBareSeconds) {
  EXPECT_EQ(*ParseDuration("5s"), absl::Seconds(5));
  EXPECT_EQ(*ParseDuration("1h30m"), absl::Minutes(90));
  EXPECT_EQ(*ParseDuration("250ms"), absl::Milliseconds(250));
  EXPECT_EQ(*ParseDuration("1.5h"), absl::Minutes(90));
  EXPECT_EQ(*ParseDuration("30"), absl::Seconds(30));
  EXPECT_EQ(*ParseDuration(" 45 "), absl::Seconds(45));
  for (const char* bad : {"", "abc", "5 s", "5x", "inf", "1h30", "s"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
}

TEST(ConfigMapTest, DefaultsToMemory) {
  auto c = LoadConfigFromConfigMap({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->driver, "memory");
  ASSERT_TRUE(c->memory.has_value());
  EXPECT_EQ(c->memory->lease_ttl, absl::Minutes(30));
}

TEST(ConfigMapTest, EveryUpstreamKey) {
  std::map<std::string, std::string> data = {
      {"concurrency-driver", "postgresql"},
      {"etcd-endpoints", "10.0.0.1:2379, 10.0.0.2:2379"},
      {"etcd-dial-timeout", "7s"},
      {"etcd-username", "root"},
      {"etcd-password", "etcd secret"},
      {"etcd-cert-file", "/c.pem"},
      {"etcd-key-file", "/k.pem"},
      {"etcd-ca-file", "/ca.pem"},
      {"etcd-server-name", "etcd.local"},
      {"etcd-mode", "mock"},
      {"postgresql-host", "db"},
      {"postgresql-port", "6543"},
      {"postgresql-database", "pac"},
      {"postgresql-username", "pacu"},
      {"postgresql-password", "p w'\"\\="},
      {"postgresql-ssl-mode", "verify-full"},
      {"postgresql-max-connections", "4"},
      {"postgresql-connection-timeout", "12"},
      {"postgresql-lease-ttl", "2h"},
      {"postgresql-prepared-statements", "false"},
      {"memory-lease-ttl", "10m"},
      {"tekton-dashboard-url", "ignored: not ours"},
  };
  auto c = LoadConfigFromConfigMap(data);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->driver, "postgresql");
  ASSERT_TRUE(c->etcd && c->postgresql && c->memory);
  EXPECT_EQ(c->etcd->endpoints,
            (std::vector<std::string>{"10.0.0.1:2379", "10.0.0.2:2379"}));
  EXPECT_EQ(c->etcd->dial_timeout, absl::Seconds(7));
  EXPECT_EQ(c->etcd->password, "etcd secret");
  EXPECT_EQ(c->etcd->mode, "mock");
  ASSERT_TRUE(c->etcd->tls.has_value());
  EXPECT_EQ(c->etcd->tls->server_name, "etcd.local");
  EXPECT_EQ(c->postgresql->port, 6543);
  EXPECT_EQ(c->postgresql->password, "p w'\"\\=");
  EXPECT_EQ(c->postgresql->ssl_mode, "verify-full");
  EXPECT_EQ(c->postgresql->max_connections, 4);
  EXPECT_EQ(c->postgresql->connection_timeout, absl::Seconds(12));
  EXPECT_EQ(c->postgresql->lease_ttl, absl::Hours(2));
  EXPECT_FALSE(c->postgresql->prepared_statements);
  EXPECT_EQ(c->memory->lease_ttl, absl::Minutes(10));
}

struct BadCase {
  std::map<std::string, std::string> data;
  std::string field;
};

TEST(ConfigMapTest, BadValuesNameTheField) {
  std::vector<BadCase> cases = {
      {{{"concurrency-driver", "redis"}}, "concurrency-driver"},
      {{{"memory-lease-ttl", "abc"}}, "memory-lease-ttl"},
      {{{"memory-lease-ttl", "0"}}, "memory-lease-ttl"},
      {{{"memory-lease-ttl", "-5s"}}, "memory-lease-ttl"},
      {{{"concurrency-driver", "etcd"}}, "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"}, {"etcd-endpoints", " , "}},
       "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"}, {"etcd-endpoints", "http://"}},
       "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"}, {"etcd-endpoints", "etcd-0"}},
       "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"}, {"etcd-endpoints", "a:1, b:99999"}},
       "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"}, {"etcd-endpoints", "ftp://a:1"}},
       "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"}, {"etcd-endpoints", "a:1/path"}},
       "etcd-endpoints"},
      {{{"concurrency-driver", "etcd"},
        {"etcd-endpoints", "a:1"},
        {"etcd-mode", "raft"}},
       "etcd-mode"},
      {{{"concurrency-driver", "etcd"},
        {"etcd-endpoints", "a:1"},
        {"etcd-dial-timeout", "soon"}},
       "etcd-dial-timeout"},
      {{{"concurrency-driver", "etcd"},
        {"etcd-endpoints", "a:1"},
        {"etcd-cert-file", "/c.pem"}},
       "etcd-key-file"},
      {{{"concurrency-driver", "postgresql"}, {"postgresql-port", "99999"}},
       "postgresql-port"},
      {{{"concurrency-driver", "postgresql"}, {"postgresql-port", "54x"}},
       "postgresql-port"},
      {{{"concurrency-driver", "postgresql"}, {"postgresql-ssl-mode", "maybe"}},
       "postgresql-ssl-mode"},
      {{{"concurrency-driver", "postgresql"},
        {"postgresql-max-connections", "0"}},
       "postgresql-max-connections"},
      {{{"concurrency-driver", "postgresql"}, {"postgresql-lease-ttl", "1h30"}},
       "postgresql-lease-ttl"},
      {{{"concurrency-driver", "postgresql"},
        {"postgresql-prepared-statements", "sometimes"}},
       "postgresql-prepared-statements"},
      {{{"postgresql-hots", "typo"}}, "postgresql-hots"},
  };
  for (const auto& c : cases) {
    auto config = LoadConfigFromConfigMap(c.data);
    ASSERT_FALSE(config.ok()) << "accepted a config with bad " << c.field;
    EXPECT_TRUE(absl::IsInvalidArgument(config.status()));
    EXPECT_THAT(Msg(config.status()), HasSubstr(c.field));
  }
}

// Endpoints as etcdctl and Pipelines-as-Code write them are accepted.
TEST(ConfigMapTest, EndpointsWithSchemesAndIpv6Parse) {
  auto c = LoadConfigFromConfigMap(
      {{"concurrency-driver", "etcd"},
       {"etcd-endpoints",
        "https://etcd-0.example.com:2379, http://10.0.0.1:2379, [::1]:2379"}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->etcd->endpoints.size(), 3u);
}

TEST(ConfigMapTest, SecretsNeverInErrors) {
  // A wrong port next to a password: the error names the port only.
  auto c = LoadConfigFromConfigMap({{"concurrency-driver", "postgresql"},
                                    {"postgresql-password", "hunter2-secret"},
                                    {"postgresql-port", "hunter2-secret"}});
  ASSERT_FALSE(c.ok());
  auto e = LoadConfigFromConfigMap({{"concurrency-driver", "etcd"},
                                    {"etcd-endpoints", "a:1"},
                                    {"etcd-password", "hunter2-secret"}});
  ASSERT_FALSE(e.ok());  // a password without a username
  EXPECT_THAT(Msg(e.status()), Not(HasSubstr("hunter2")));
  auto redacted = RedactSecrets(
      {{"postgresql-password", "hunter2"}, {"postgresql-host", "db"}});
  EXPECT_EQ(redacted["postgresql-password"], "***");
  EXPECT_EQ(redacted["postgresql-host"], "db");
}

TEST(ConfigMapTest, PasswordFromFile) {
  std::string path = ::testing::TempDir() + "/pw.txt";
  {
    std::ofstream out(path);
    out << "from file with spaces\n";
  }
  auto c = LoadConfigFromConfigMap({{"concurrency-driver", "postgresql"},
                                    {"postgresql-password-file", path}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->postgresql->password, "from file with spaces");
  auto both = LoadConfigFromConfigMap({{"concurrency-driver", "postgresql"},
                                       {"postgresql-password", "x"},
                                       {"postgresql-password-file", path}});
  EXPECT_FALSE(both.ok());
  auto missing = LoadConfigFromConfigMap(
      {{"concurrency-driver", "postgresql"},
       {"postgresql-password-file", "/nonexistent/pw"}});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(Msg(missing.status()), HasSubstr("postgresql-password-file"));
  std::remove(path.c_str());
}

TEST(YamlTest, NestedForm) {
  auto c = LoadConfigFromYaml(R"(
driver: etcd
etcd:
  endpoints: [127.0.0.1:2379, 127.0.0.1:22379]
  dialTimeout: 3s
  mode: etcd
  tls:
    ca_file: /ca.pem
    server_name: etcd
memory:
  lease_ttl: 90
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->driver, "etcd");
  EXPECT_EQ(c->etcd->endpoints.size(), 2u);
  EXPECT_EQ(c->etcd->dial_timeout, absl::Seconds(3));
  EXPECT_EQ(c->etcd->tls->ca_file, "/ca.pem");
  EXPECT_EQ(c->memory->lease_ttl, absl::Seconds(90));
}

TEST(YamlTest, ConfigMapManifestAndFlatKeys) {
  auto manifest = LoadConfigFromYaml(R"(
apiVersion: v1
kind: ConfigMap
metadata: {name: pipelines-as-code}
data:
  concurrency-driver: memory
  memory-lease-ttl: 1h
  secret-auto-create: "true"
)");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->memory->lease_ttl, absl::Hours(1));
  auto flat =
      LoadConfigFromYaml("concurrency-driver: memory\nmemory-lease-ttl: 5m\n");
  ASSERT_TRUE(flat.ok()) << flat.status();
  EXPECT_EQ(flat->memory->lease_ttl, absl::Minutes(5));
}

TEST(YamlTest, BrokenYamlAndTyposAreErrors) {
  auto broken = LoadConfigFromYaml("driver: [memory\n");
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(Msg(broken.status()), HasSubstr("line"));
  auto typo = LoadConfigFromYaml("driver: memory\nmemory:\n  lease_tll: 5m\n");
  ASSERT_FALSE(typo.ok());
  EXPECT_THAT(Msg(typo.status()), HasSubstr("memory-lease-tll"));
  auto bad_ttl =
      LoadConfigFromYaml("driver: memory\nmemory:\n  lease_ttl: abc\n");
  ASSERT_FALSE(bad_ttl.ok());
  EXPECT_THAT(Msg(bad_ttl.status()), HasSubstr("memory-lease-ttl"));
  EXPECT_FALSE(LoadConfigFromYamlFile("/nonexistent.yaml").ok());
}

TEST(EnvTest, EnvironmentOverridesFile) {
  std::map<std::string, std::string> env = {
      {"PAC_CONCURRENCY_DRIVER", "postgresql"},
      {"PAC_POSTGRESQL_PASSWORD", "env secret"},
      {"PAC_POSTGRESQL_HOST", "envhost"}};
  auto lookup = [&](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  auto c = ApplyEnvironment(
      {{"postgresql-host", "filehost"}, {"postgresql-port", "5433"}}, lookup);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->driver, "postgresql");
  EXPECT_EQ(c->postgresql->host, "envhost");
  EXPECT_EQ(c->postgresql->port, 5433);
  EXPECT_EQ(c->postgresql->password, "env secret");
}

}  // namespace
}  // namespace pac::concurrency
