#include "src/server/http_message.h"

#include "fmt/format.h"

namespace pac::concurrency::server {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::optional<std::string> PercentDecode(std::string_view s,
                                         bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      const int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += char(hi * 16 + lo);
      i += 2;
    } else if (s[i] == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

bool ParseTarget(HttpRequest& req, std::string* error) {
  const std::string& t = req.target;
  if (t.empty() || t[0] != '/') {
    *error = "request target: must be a path starting with '/'";
    return false;
  }
  const size_t q = t.find('?');
  req.path = t.substr(0, q);
  req.segments.clear();
  req.query.clear();
  std::string_view rest = std::string_view(req.path).substr(1);
  while (true) {
    const size_t slash = rest.find('/');
    std::string_view seg = rest.substr(0, slash);
    auto decoded = PercentDecode(seg, /*plus_is_space=*/false);
    if (!decoded) {
      *error = "request path: malformed percent-encoding in '" +
               EscapeBytes(seg) + "'";
      return false;
    }
    req.segments.push_back(*std::move(decoded));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  if (q == std::string::npos) return true;
  std::string_view query = std::string_view(t).substr(q + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    const size_t eq = pair.find('=');
    auto name = PercentDecode(pair.substr(0, eq), true);
    auto value = PercentDecode(
        eq == std::string_view::npos ? "" : pair.substr(eq + 1), true);
    if (!name || !value) {
      *error = "request query: malformed percent-encoding in '" +
               EscapeBytes(pair) + "'";
      return false;
    }
    if (!name->empty()) req.query[*name] = *value;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return true;
}

}  // namespace pac::concurrency::server
