#include "src/postgresql/pg_common.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>

namespace pac::concurrency::internal {

// The time `at` in Unix microseconds, then 64 random bits, in hex. The
// generator is seeded again in a forked child (its copy of the state would
// repeat the parent's next ids, and a parent's acquire would get the
// child's kept release answer back: seen in
// BM_PG_ReleaseToWatcherAcrossProcesses), from 128 bits of the system's
// randomness.
std::string NewRequestId(absl::Time at) {
  static thread_local std::mt19937_64 rng;
  static thread_local pid_t seeded_for = 0;
  if (seeded_for != getpid()) {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd()};
    rng.seed(seq);
    seeded_for = getpid();
  }
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx",
                static_cast<unsigned long long>(
                    std::max<int64_t>(0, absl::ToUnixMicros(at))),
                static_cast<unsigned long long>(rng()));
  return buf;
}

std::string ArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (const std::string& item : items) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char c : item) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

std::vector<PgParam> WithRetryFlag(std::vector<PgParam> params, bool retry) {
  params.back() = retry ? "true" : "false";
  return params;
}

std::optional<std::string> OptText(std::string_view s) {
  if (s.empty()) return std::nullopt;
  return std::string(s);
}

}  // namespace pac::concurrency::internal
