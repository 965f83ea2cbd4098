// HttpRequest and HttpResponse: what the HTTP transport (http_transport.h)
// hands the service's routes and gets back, free of any HTTP library's
// types; and the helpers that turn raw request bytes into them (percent
// decoding, query strings) and user bytes into safe messages (EscapeBytes).
//
// Plain values; not thread-safe by themselves.
#ifndef PAC_SRC_SERVER_HTTP_MESSAGE_H_
#define PAC_SRC_SERVER_HTTP_MESSAGE_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "src/common/escape.h"

namespace pac::concurrency::server {

struct HttpRequest {
  std::string method;  // as sent, e.g. "GET"
  std::string target;  // as sent: path and query, still percent-encoded
  std::string path;    // the target without its query, still encoded
  // The path's segments, percent-decoded ("/v1/a%2Fb" → {"v1", "a/b"}).
  std::vector<std::string> segments;
  // The query's parameters, decoded ('+' is a space); the last one wins.
  std::map<std::string, std::string> query;
  std::string authorization;  // the Authorization header, or empty
  std::string body;
  std::string remote_addr;
  // Set before the body is read (HttpTransport's precheck) when the
  // handler may block for long (a long poll): it then never runs on an
  // I/O thread.
  bool long_running = false;
  // Who sent it, set by the server's token check (auth.h): a role name,
  // and the namespaces the token is limited to (empty: all).
  std::string role;
  std::vector<std::string> namespaces;
  // The segments a route's wildcards matched, in order (set by the router).
  std::vector<std::string> params;

  [[nodiscard]] bool has_param(const std::string& name) const {
    return query.count(name) != 0;
  }
  [[nodiscard]] std::string get_param_value(const std::string& name) const {
    auto it = query.find(name);
    return it == query.end() ? "" : it->second;
  }
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  // When set, the answer is a stream (chunked encoding) instead of `body`:
  // the transport sends the head, then calls `stream` on a worker thread
  // with a writer that sends one piece and returns false once the client
  // is gone or reads too slowly. The answer ends when `stream` returns.
  std::function<void(const std::function<bool(std::string_view)>& write)>
      stream;
};

using internal::EscapeBytes;

// Percent-decodes `s` ('+' stays unless `plus_is_space`); nullopt when an
// escape is malformed ("%g1", a lone "%").
[[nodiscard]] std::optional<std::string> PercentDecode(std::string_view s,
                                                       bool plus_is_space);

// Fills path, segments and query from `target`. False (with `error` set to a
// message naming the problem) when the target is not an origin-form path or
// an escape is malformed.
[[nodiscard]] bool ParseTarget(HttpRequest& req, std::string* error);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_HTTP_MESSAGE_H_
