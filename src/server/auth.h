// Bearer tokens and what each may do (docs/api.md, "Tokens and roles").
//
// A token file is either one token alone, the shared token of earlier
// versions (it may do everything; reads need no token), or lines of
//
//   <token> <role> [<namespace>,<namespace>...]
//
// with roles `read` (status, queue, watch, metrics; lease ids hidden),
// `controller` (read, and submit, release, renew) and `admin` (everything:
// limits, adopting running runs, import, cleanup). A token limited to
// namespaces acts only on repositories in them. With such a file every
// request but /healthz and /readyz needs a token. Blank lines and lines
// starting with '#' are skipped.
//
// Immutable after Parse; thread-safe to share.
#ifndef PAC_SRC_SERVER_AUTH_H_
#define PAC_SRC_SERVER_AUTH_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pac::concurrency::server {

enum class Role { kRead = 1, kController = 2, kAdmin = 3 };

[[nodiscard]] std::string_view RoleName(Role role);
[[nodiscard]] std::optional<Role> RoleFromName(std::string_view name);

struct Principal {
  Role role = Role::kAdmin;
  std::vector<std::string> namespaces;  // empty: every namespace

  [[nodiscard]] bool AllowsNamespace(std::string_view ns) const;
};

class TokenTable {
 public:
  // No token: every request is allowed.
  TokenTable() = default;
  // The one shared token of earlier versions.
  [[nodiscard]] static TokenTable Single(std::string token);
  // A token file's text; InvalidArgument naming `what`, the line and the
  // problem (never the token itself).
  [[nodiscard]] static absl::StatusOr<TokenTable> Parse(std::string_view text,
                                                        std::string_view what);

  // No token configured.
  [[nodiscard]] bool open() const { return entries_.empty(); }
  // One shared token: reads need none, and the token may do everything.
  [[nodiscard]] bool single() const { return single_; }

  enum class Failure { kMissing, kUnknown };
  // Whom an Authorization header value ("Bearer <token>"; the scheme in
  // any case) stands for, or why nobody. Compares in constant time with
  // every token.
  [[nodiscard]] std::optional<Principal> Authenticate(
      std::string_view authorization, Failure* why) const;

 private:
  struct Entry {
    std::string token;
    Principal principal;
  };
  std::vector<Entry> entries_;
  bool single_ = false;
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_AUTH_H_
