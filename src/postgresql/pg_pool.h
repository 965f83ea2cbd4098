// A connection pool bounded by PostgreSQLConfig::max_connections. A borrowed
// connection goes back when its handle is destroyed, or is dropped if it
// broke. Thread-safe.
#ifndef PAC_SRC_POSTGRESQL_PG_POOL_H_
#define PAC_SRC_POSTGRESQL_PG_POOL_H_

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "pac/concurrency/config.h"
#include "pac/concurrency/context.h"
#include "src/common/mutex.h"
#include "src/postgresql/pg_connection.h"

namespace pac::concurrency::internal {

class PgPool {
 public:
  explicit PgPool(PostgreSQLConfig config) : config_(std::move(config)) {}

  class Handle {
   public:
    Handle(PgPool* pool, std::unique_ptr<PgConnection> conn)
        : pool_(pool), conn_(std::move(conn)) {}
    Handle(Handle&&) = default;
    ~Handle() {
      if (conn_ != nullptr) pool_->Return(std::move(conn_));
    }
    PgConnection* operator->() { return conn_.get(); }
    PgConnection& operator*() { return *conn_; }

   private:
    PgPool* pool_;
    std::unique_ptr<PgConnection> conn_;
  };

  // Borrows a connection, opening one if fewer than max_connections exist,
  // else waiting for one until the context ends.
  absl::StatusOr<Handle> Get(const Context& ctx);

  // Closes idle connections and refuses new borrowers.
  void Close();

 private:
  void Return(std::unique_ptr<PgConnection> conn);

  const PostgreSQLConfig config_;
  Mutex mu_;
  CondVar cv_;
  std::vector<std::unique_ptr<PgConnection>> idle_ PAC_GUARDED_BY(mu_);
  int open_ PAC_GUARDED_BY(mu_) = 0;
  bool closed_ PAC_GUARDED_BY(mu_) = false;
};

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_POSTGRESQL_PG_POOL_H_
