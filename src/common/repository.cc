#include "pac/concurrency/repository.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "src/common/escape.h"
#include "src/common/strings.h"

namespace pac::concurrency {
namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// Describes what is wrong with a DNS-1123 label, or returns "".
std::string LabelProblem(std::string_view label) {
  if (label.empty()) return "is empty";
  if (label.size() > 63) return "is longer than 63 characters";
  for (size_t i = 0; i < label.size(); ++i) {
    const char c = label[i];
    if (!IsAlnum(c) && c != '-') {
      if (c == '\0') return "contains a NUL byte";
      if (c >= 'A' && c <= 'Z') return "contains an uppercase letter";
      // The whole character when the bytes from here are UTF-8 ('é'), else
      // the byte escaped ('\xff').
      std::string_view rest = label.substr(i);
      size_t n = 1;
      while (n < rest.size() && n < 4 &&
             !internal::IsValidUtf8(rest.substr(0, n))) {
        ++n;
      }
      if (!internal::IsValidUtf8(rest.substr(0, n))) n = 1;
      return internal::Cat("contains the character '",
                           internal::EscapeBytes(rest.substr(0, n)), "'");
    }
  }
  if (!IsAlnum(label.front()) || !IsAlnum(label.back())) {
    return "must start and end with a lowercase letter or digit";
  }
  return "";
}

}  // namespace

namespace {

// Character classes for the fast check.
enum : uint8_t { kBad = 0, kAlnum = 1, kDash = 2, kDot = 3, kSlash = 4 };
struct CharTable {
  uint8_t cls[256] = {};
  constexpr CharTable() {
    for (int c = 'a'; c <= 'z'; ++c) cls[c] = kAlnum;
    for (int c = '0'; c <= '9'; ++c) cls[c] = kAlnum;
    cls[static_cast<int>('-')] = kDash;
    cls[static_cast<int>('.')] = kDot;
    cls[static_cast<int>('/')] = kSlash;
  }
};
constexpr CharTable kChars;

// One pass over the key: true if it is certainly valid. Keys that fail it
// go through the slow path, which says what is wrong.
bool FastValid(std::string_view key) {
  const size_t n = key.size();
  if (n < 3 || n > 63 + 1 + 253) return false;
  size_t slash = 0;
  size_t label = 0;       // length of the current name label
  uint8_t prev = kSlash;  // a label starts after '/' or '.'
  for (size_t i = 0; i < n; ++i) {
    uint8_t c = kChars.cls[static_cast<unsigned char>(key[i])];
    switch (c) {
      case kAlnum:
        ++label;
        break;
      case kDash:
        if (prev != kAlnum && prev != kDash) return false;
        ++label;
        break;
      case kDot:
        if (slash == 0 || prev != kAlnum) return false;
        label = 0;
        break;
      case kSlash:
        if (slash != 0 || prev != kAlnum) return false;
        slash = i;
        label = 0;
        break;
      default:
        return false;
    }
    if (label > 63) return false;
    prev = c;
  }
  return slash != 0 && slash <= 63 && prev == kAlnum && n - slash - 1 <= 253;
}

}  // namespace

absl::Status ValidateKey(std::string_view key, std::string_view field) {
  if (FastValid(key)) return absl::OkStatus();
  auto bad = [&](std::string_view what) {
    return absl::InvalidArgumentError(
        internal::Cat(field, ": key must be 'namespace/name' (", what, ")"));
  };
  if (key.empty()) return bad("it is empty");
  if (key.size() > 63 + 1 + 253) return bad("it is too long");
  size_t slash = key.find('/');
  if (slash == std::string_view::npos) return bad("no '/' in it");
  if (key.find('/', slash + 1) != std::string_view::npos) {
    return bad("more than one '/'");
  }
  std::string_view ns = key.substr(0, slash);
  std::string_view name = key.substr(slash + 1);
  if (std::string p = LabelProblem(ns); !p.empty()) {
    return bad(internal::Cat("namespace ", p));
  }
  if (name.empty()) return bad("name is empty");
  if (name.size() > 253) return bad("name is longer than 253 characters");
  size_t start = 0;
  while (true) {
    size_t dot = name.find('.', start);
    std::string_view label = name.substr(start, dot == std::string_view::npos
                                                    ? std::string_view::npos
                                                    : dot - start);
    if (label.empty()) return bad("name has an empty '.'-separated part");
    if (std::string p = LabelProblem(label); !p.empty()) {
      return bad(internal::Cat("name ", p));
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return absl::OkStatus();
}

absl::Status ValidateNamespace(std::string_view ns, std::string_view field) {
  if (std::string p = LabelProblem(ns); !p.empty()) {
    return absl::InvalidArgumentError(
        internal::Cat(field, ": namespace name ", p));
  }
  return absl::OkStatus();
}

absl::Status ValidateState(std::string_view state, std::string_view field) {
  if (state.empty()) {
    return absl::InvalidArgumentError(internal::Cat(field, ": is empty"));
  }
  size_t bad_at = 0;
  if (!internal::IsValidUtf8(state, &bad_at)) {
    return absl::InvalidArgumentError(
        internal::Cat(field, ": is not valid UTF-8 (byte ", bad_at, " of \"",
                      internal::EscapeBytes(state), "\")"));
  }
  size_t chars = 0;
  for (unsigned char c : state) {
    if ((c & 0xC0) != 0x80) ++chars;  // not a continuation byte
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          internal::Cat(field, ": \"", internal::EscapeBytes(state),
                        "\" holds a control character"));
    }
  }
  if (chars > kMaxStateLength) {
    return absl::InvalidArgumentError(internal::Cat(
        field, ": ", chars, " characters; at most ", kMaxStateLength));
  }
  return absl::OkStatus();
}

absl::Status ValidateRepository(const Repository& repo) {
  if (repo.concurrency_limit.has_value() && *repo.concurrency_limit < 0) {
    return absl::InvalidArgumentError(
        internal::Cat("repository.concurrency_limit: must be 0 (unlimited) or "
                      "positive, got ",
                      *repo.concurrency_limit));
  }
  if (repo.ns.find('/') != std::string::npos ||
      repo.name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        "repository: namespace and name must not contain '/'");
  }
  return ValidateKey(repo.Key(), "repository");
}

absl::StatusOr<Repository> Repository::FromKey(std::string_view key,
                                               std::optional<int32_t> limit) {
  if (absl::Status s = ValidateKey(key, "repository"); !s.ok()) return s;
  size_t slash = key.find('/');
  Repository repo{std::string(key.substr(0, slash)),
                  std::string(key.substr(slash + 1)), limit};
  if (absl::Status s = ValidateRepository(repo); !s.ok()) return s;
  return repo;
}

}  // namespace pac::concurrency
