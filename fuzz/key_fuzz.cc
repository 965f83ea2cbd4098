// Key validation and the helpers that show and decode user bytes: a key
// that validates is "namespace/name"; EscapeBytes always gives valid UTF-8
// without control bytes; a request target parses or is refused.
#include <string>

#include "fuzz/fuzz_util.h"
#include "src/common/escape.h"
#include "src/server/http_message.h"

using namespace pac::concurrency;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  if (ValidateKey(s, "key").ok()) {
    const size_t slash = s.find('/');
    fuzz::Check(slash != std::string_view::npos && slash > 0 &&
                    slash + 1 < s.size() &&
                    s.find('/', slash + 1) == std::string_view::npos,
                "a valid key is namespace/name");
  }
  const std::string shown = internal::EscapeBytes(s);
  fuzz::Check(internal::IsValidUtf8(shown), "escaped bytes are UTF-8");
  for (unsigned char c : shown) {
    fuzz::Check(c >= 0x20 && c != 0x7F, "no control bytes once escaped");
  }
  server::HttpRequest req;
  req.target = std::string(s);
  std::string error;
  if (server::ParseTarget(req, &error)) {
    fuzz::Check(!req.segments.empty(), "a parsed path has segments");
  } else {
    fuzz::Check(!error.empty(), "a refusal says why");
  }
  return 0;
}
