#include <memory>

#include "absl/strings/str_cat.h"
#include "pac/concurrency/driver.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_driver.h"
#include "src/etcd/grpc_etcd.h"
#include "src/etcd/txn_batcher.h"
#include "src/memory/memory_driver.h"
#include "src/postgresql/postgresql_driver.h"

namespace pac::concurrency {

absl::StatusOr<std::unique_ptr<Driver>> NewMemoryDriver(
    const MemoryConfig& config, const DriverOptions& options) {
  if (config.lease_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "config: memory-lease-ttl: must be positive");
  }
  return std::unique_ptr<Driver>(
      std::make_unique<internal::MemoryDriver>(config, options));
}

absl::StatusOr<std::unique_ptr<Driver>> NewPostgreSQLDriver(
    const PostgreSQLConfig& config, const DriverOptions& options) {
  return internal::PostgreSQLDriver::Create(config, options);
}

absl::StatusOr<std::unique_ptr<Driver>> NewEtcdDriver(
    const EtcdConfig& config, const DriverOptions& options) {
  DriverConfig whole;
  whole.driver = "etcd";
  whole.etcd = config;
  if (absl::Status s = ValidateConfig(whole); !s.ok()) return s;
  std::shared_ptr<internal::EtcdKV> kv;
  if (config.mode == "etcd") {
    auto grpc = internal::NewGrpcEtcd(config, options.logger);
    if (!grpc.ok()) return grpc.status();
    kv = std::move(*grpc);
  } else {
    kv = internal::SharedMockEtcd(options.clock != nullptr ? options.clock
                                                           : Clock::Real());
  }
  // Concurrent Txns on different repositories share one etcd request.
  return internal::EtcdDriver::Create(internal::NewTxnBatcher(std::move(kv)),
                                      config, options);
}

absl::StatusOr<std::unique_ptr<Driver>> NewDriver(
    const DriverConfig& config, const DriverOptions& options) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (config.driver == "memory") {
    return NewMemoryDriver(config.memory.value_or(MemoryConfig{}), options);
  }
  if (config.driver == "postgresql") {
    return NewPostgreSQLDriver(*config.postgresql, options);
  }
  if (config.driver == "etcd") {
    return NewEtcdDriver(*config.etcd, options);
  }
  return absl::UnimplementedError(
      internal::Cat("config: concurrency-driver: the ", config.driver,
                    " driver is not built into this version"));
}

}  // namespace pac::concurrency
