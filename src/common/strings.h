// String helpers. Debian's abseil is built with its own absl::string_view
// (ABSL_OPTION_USE_STD_STRING_VIEW 0), distinct from std::string_view, so the
// project joins strings with fmt and converts views explicitly at the few
// places where an abseil API wants one.
#ifndef PAC_SRC_COMMON_STRINGS_H_
#define PAC_SRC_COMMON_STRINGS_H_

#include <iterator>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "fmt/format.h"

namespace pac::concurrency::internal {

inline absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view SV(absl::string_view s) { return {s.data(), s.size()}; }

// Concatenates the arguments as fmt's "{}" prints them.
template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  (fmt::format_to(std::back_inserter(out), "{}", args), ...);
  return out;
}

}  // namespace pac::concurrency::internal

// Lets fmt (and so spdlog) print absl::string_view, e.g. Status::message().
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(
        std::string_view(s.data(), s.size()), ctx);
  }
};

#endif  // PAC_SRC_COMMON_STRINGS_H_
