// PooledText: a short text that an export repeats run after run (a label's
// value, a state, a status), kept once per process and eight bytes per
// use. An import of 100,000 PipelineRuns holds seven such fields per run;
// as std::string they cost 32 bytes each, and a value longer than the
// small-string buffer (app.kubernetes.io/managed-by's) a heap block more.
//
// Values are never freed: use it only for fields with few distinct values
// (bounded by the kinds of state and the repositories of a cluster). Past
// kMaxPooled distinct values a new one is still kept, and counted as such
// (Overflowed), which a long-running server can watch. Thread-safe.
#ifndef PAC_SRC_SERVER_POOLED_TEXT_H_
#define PAC_SRC_SERVER_POOLED_TEXT_H_

#include <cstddef>
#include <ostream>
#include <string>
#include <string_view>

#include "fmt/format.h"

namespace pac::concurrency::server {

class PooledText {
 public:
  static constexpr size_t kMaxPooled = 1'000'000;

  PooledText();
  PooledText(std::string_view s);  // NOLINT: implicit, as a string is
  PooledText(const char* s) : PooledText(std::string_view(s)) {}  // NOLINT
  PooledText(const std::string& s)
      : PooledText(std::string_view(s)) {}  // NOLINT
  PooledText& operator=(std::string_view s) { return *this = PooledText(s); }
  PooledText& operator=(const char* s) { return *this = PooledText(s); }
  PooledText& operator=(const std::string& s) { return *this = PooledText(s); }
  PooledText(const PooledText&) = default;
  PooledText& operator=(const PooledText&) = default;

  const std::string& str() const { return *s_; }
  operator std::string_view() const { return *s_; }    // NOLINT
  operator const std::string&() const { return *s_; }  // NOLINT
  bool empty() const { return s_->empty(); }
  size_t size() const { return s_->size(); }
  void clear();

  friend bool operator==(const PooledText& a, const PooledText& b) {
    return a.s_ == b.s_;  // one copy of each value
  }
  friend bool operator==(const PooledText& a, std::string_view b) {
    return *a.s_ == b;
  }
  friend bool operator==(const PooledText& a, const char* b) {
    return *a.s_ == b;
  }
  friend bool operator==(const PooledText& a, const std::string& b) {
    return *a.s_ == b;
  }
  friend std::ostream& operator<<(std::ostream& os, const PooledText& t) {
    return os << *t.s_;
  }

  // Distinct values kept past kMaxPooled (0 in any sane use).
  static size_t Overflowed();

 private:
  const std::string* s_;
};

}  // namespace pac::concurrency::server

template <>
struct fmt::formatter<pac::concurrency::server::PooledText>
    : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(const pac::concurrency::server::PooledText& t,
              FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(t.str()),
                                                    ctx);
  }
};

#endif  // PAC_SRC_SERVER_POOLED_TEXT_H_
