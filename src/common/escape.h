// Showing bytes that came from a user (a path, a key, a file) in a message,
// a log line or a JSON string without trusting them: EscapeBytes never
// throws and its output is printable ASCII or valid UTF-8.
#ifndef PAC_SRC_COMMON_ESCAPE_H_
#define PAC_SRC_COMMON_ESCAPE_H_

#include <string>
#include <string_view>

namespace pac::concurrency::internal {

// `s` with every byte that is not printable ASCII or part of valid UTF-8
// shown as \xNN, and backslashes doubled.
[[nodiscard]] std::string EscapeBytes(std::string_view s);

// Whether `s` is valid UTF-8 (no overlong forms, surrogates or code points
// past U+10FFFF); if not, `*bad_at` (when given) is the first bad byte's
// index.
[[nodiscard]] bool IsValidUtf8(std::string_view s, size_t* bad_at = nullptr);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_COMMON_ESCAPE_H_
