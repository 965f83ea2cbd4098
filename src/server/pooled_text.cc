#include "src/server/pooled_text.h"

#include <string>

#include "absl/container/node_hash_set.h"
#include "src/common/mutex.h"
#include "src/common/strings.h"

namespace pac::concurrency::server {
namespace {

struct Pool {
  internal::Mutex mu;
  // Node-based: a value's address stays put while the set grows.
  absl::node_hash_set<std::string> values PAC_GUARDED_BY(mu);
  size_t overflowed PAC_GUARDED_BY(mu) = 0;
};

Pool& ThePool() {
  static Pool* pool = new Pool();  // never destroyed: values outlive exit
  return *pool;
}

const std::string& Empty() {
  static const std::string* empty = new std::string();
  return *empty;
}

}  // namespace

PooledText::PooledText() : s_(&Empty()) {}

PooledText::PooledText(std::string_view s) : s_(&Empty()) {
  if (s.empty()) return;
  Pool& pool = ThePool();
  internal::MutexLock lock(&pool.mu);
  auto it = pool.values.find(internal::AV(s));
  if (it == pool.values.end()) {
    it = pool.values.emplace(s).first;
    if (pool.values.size() > kMaxPooled) ++pool.overflowed;
  }
  s_ = &*it;
}

void PooledText::clear() { s_ = &Empty(); }

size_t PooledText::Overflowed() {
  Pool& pool = ThePool();
  internal::MutexLock lock(&pool.mu);
  return pool.overflowed;
}

}  // namespace pac::concurrency::server
