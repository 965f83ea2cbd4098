#include "src/server/auth.h"

#include "absl/strings/ascii.h"
#include "pac/concurrency/repository.h"
#include "src/common/strings.h"
#include "src/server/http_server.h"

namespace pac::concurrency::server {

using internal::Cat;

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kRead:
      return "read";
    case Role::kController:
      return "controller";
    case Role::kAdmin:
      return "admin";
  }
  return "?";
}

std::optional<Role> RoleFromName(std::string_view name) {
  if (name == "read") return Role::kRead;
  if (name == "controller") return Role::kController;
  if (name == "admin") return Role::kAdmin;
  return std::nullopt;
}

bool Principal::AllowsNamespace(std::string_view ns) const {
  if (namespaces.empty()) return true;
  for (const std::string& n : namespaces) {
    if (n == ns) return true;
  }
  return false;
}

TokenTable TokenTable::Single(std::string token) {
  TokenTable t;
  if (!token.empty()) {
    t.entries_.push_back({std::move(token), Principal{}});
    t.single_ = true;
  }
  return t;
}

namespace {

std::vector<std::string_view> Fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t at = 0;
  while (at < line.size()) {
    while (at < line.size() && (line[at] == ' ' || line[at] == '\t')) ++at;
    size_t end = at;
    while (end < line.size() && line[end] != ' ' && line[end] != '\t') ++end;
    if (end > at) out.push_back(line.substr(at, end - at));
    at = end;
  }
  return out;
}

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(std::string_view text,
                                             std::string_view what) {
  std::vector<std::pair<int, std::string_view>> lines;
  int number = 0;
  while (!text.empty()) {
    ++number;
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    while (!line.empty() &&
           (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.remove_suffix(1);
    }
    std::vector<std::string_view> f = Fields(line);
    if (f.empty() || f[0][0] == '#') continue;
    lines.emplace_back(number, line);
  }
  if (lines.empty()) {
    return absl::InvalidArgumentError(Cat(what, ": no token in the file"));
  }
  if (lines.size() == 1 && Fields(lines[0].second).size() == 1) {
    return Single(std::string(Fields(lines[0].second)[0]));
  }
  TokenTable t;
  for (const auto& [n, line] : lines) {
    std::vector<std::string_view> f = Fields(line);
    if (f.size() < 2 || f.size() > 3) {
      return absl::InvalidArgumentError(
          Cat(what, ": line ", n,
              ": expected \"<token> <role> [<namespace>,...]\" (roles: read, "
              "controller, admin)"));
    }
    auto role = RoleFromName(f[1]);
    if (!role) {
      return absl::InvalidArgumentError(
          Cat(what, ": line ", n, ": unknown role \"", f[1],
              "\" (use read, controller or admin)"));
    }
    Principal p{*role, {}};
    if (f.size() == 3) {
      std::string_view list = f[2];
      while (!list.empty()) {
        size_t comma = list.find(',');
        std::string_view ns = list.substr(0, comma);
        if (absl::Status s = ValidateNamespace(ns, "namespace"); !s.ok()) {
          return absl::InvalidArgumentError(
              Cat(what, ": line ", n, ": ", s.message()));
        }
        p.namespaces.emplace_back(ns);
        list.remove_prefix(comma == std::string_view::npos ? list.size()
                                                           : comma + 1);
      }
    }
    for (const Entry& e : t.entries_) {
      if (e.token == f[0]) {
        return absl::InvalidArgumentError(
            Cat(what, ": line ", n, ": the same token as an earlier line"));
      }
    }
    t.entries_.push_back({std::string(f[0]), std::move(p)});
  }
  return t;
}

std::optional<Principal> TokenTable::Authenticate(std::string_view auth,
                                                  Failure* why) const {
  std::string_view token;
  if (auth.size() > 7 &&
      absl::AsciiStrToLower(std::string(auth.substr(0, 7))) == "bearer ") {
    token = auth.substr(7);
    while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  }
  if (token.empty()) {
    *why = Failure::kMissing;
    return std::nullopt;
  }
  // Every entry is compared, so the time does not tell which matched.
  const Entry* found = nullptr;
  for (const Entry& e : entries_) {
    if (ConstantTimeEquals(token, e.token) && found == nullptr) found = &e;
  }
  if (found == nullptr) {
    *why = Failure::kUnknown;
    return std::nullopt;
  }
  return found->principal;
}

}  // namespace pac::concurrency::server
