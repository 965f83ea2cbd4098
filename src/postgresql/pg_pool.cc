#include "src/postgresql/pg_pool.h"

namespace pac::concurrency::internal {

absl::StatusOr<PgPool::Handle> PgPool::Get(const Context& ctx) {
  {
    MutexLock lock(&mu_);
    while (true) {
      if (closed_) {
        return absl::FailedPreconditionError("postgresql driver is closed");
      }
      if (!idle_.empty()) {
        std::unique_ptr<PgConnection> conn = std::move(idle_.back());
        idle_.pop_back();
        return Handle(this, std::move(conn));
      }
      if (open_ < config_.max_connections) {
        ++open_;
        break;  // open one outside the lock
      }
      if (absl::Status s = ctx.Err(); !s.ok()) return s;
      // Wake at least every 50 ms to notice a cancelled context.
      cv_.WaitUntil(
          &mu_, std::min(ctx.deadline(), absl::Now() + absl::Milliseconds(50)));
    }
  }
  auto conn = PgConnection::Open(config_, ctx);
  if (!conn.ok()) {
    {
      MutexLock lock(&mu_);
      --open_;
    }
    cv_.NotifyOne();
    return conn.status();
  }
  return Handle(this, std::move(*conn));
}

void PgPool::Return(std::unique_ptr<PgConnection> conn) {
  {
    MutexLock lock(&mu_);
    if (closed_ || !conn->healthy()) {
      --open_;
      conn.reset();
    } else {
      idle_.push_back(std::move(conn));
    }
  }
  cv_.NotifyOne();
}

void PgPool::Close() {
  std::vector<std::unique_ptr<PgConnection>> idle;
  {
    MutexLock lock(&mu_);
    closed_ = true;
    idle.swap(idle_);
    open_ -= static_cast<int>(idle.size());
  }
  cv_.NotifyAll();
}

}  // namespace pac::concurrency::internal
