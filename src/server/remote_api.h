// RemoteApi: the Api over HTTP, talking to `pac-concurrency serve`.
//
// Thread-safe: every call opens its own connection (the CLI makes few).
// Transport failures are Unavailable naming the server; error documents
// from the server come back as the Status they encode.
#ifndef PAC_SRC_SERVER_REMOTE_API_H_
#define PAC_SRC_SERVER_REMOTE_API_H_

#include <string>

#include "src/server/api.h"

namespace pac::concurrency::server {

// OK when `url` is an http:// or https:// URL with a host; else
// InvalidArgument naming --server and what is wrong.
absl::Status ValidateServerUrl(std::string_view url);

// HTTPS settings of a client (all optional).
struct ClientTls {
  std::string ca_file;    // the server's CA; empty: the system's CAs
  std::string cert_file;  // a client certificate for mutual TLS
  std::string key_file;   // its key
  // OK when the files are readable, given together where they must be, and
  // only with an https:// URL; else InvalidArgument naming the flag.
  [[nodiscard]] absl::Status Validate(std::string_view url) const;
};

class RemoteApi final : public Api {
 public:
  // `base_url`: "http://host:port". `token` (may be empty) is sent as a
  // bearer token.
  RemoteApi(std::string base_url, std::string token, ClientTls tls = {});

  absl::StatusOr<Json> SetLimit(const Context& ctx, std::string_view repo_key,
                                const Json& body) override;
  absl::StatusOr<Json> ApplyManifests(const Context& ctx,
                                      std::string_view yaml) override;
  absl::StatusOr<Json> Submit(const Context& ctx, std::string_view repo_key,
                              const Json& body) override;
  absl::StatusOr<Json> Release(const Context& ctx, std::string_view repo_key,
                               std::string_view run_key,
                               std::string_view lease_id) override;
  absl::StatusOr<Json> Renew(const Context& ctx,
                             std::string_view lease_id) override;
  absl::StatusOr<Json> Status(const Context& ctx,
                              std::string_view repo_key) override;
  absl::StatusOr<Json> ListRepositories(const Context& ctx,
                                        std::string_view namespace_name,
                                        const ListPage& page) override;
  absl::StatusOr<Json> Version(const Context& ctx) override;
  absl::StatusOr<Json> SetState(const Context& ctx, StateOf of,
                                std::string_view key,
                                const Json& body) override;
  absl::StatusOr<Json> GetState(const Context& ctx, StateOf of,
                                std::string_view key) override;
  absl::StatusOr<Json> ClearQueue(const Context& ctx,
                                  std::string_view repo_key) override;
  absl::StatusOr<Json> SetPolicy(const Context& ctx, std::string_view repo_key,
                                 const Json& body) override;
  absl::StatusOr<Json> GetPolicy(const Context& ctx,
                                 std::string_view repo_key) override;
  absl::StatusOr<Json> SetSharedLimit(const Context& ctx, std::string_view name,
                                      const Json& body) override;
  absl::StatusOr<Json> DeleteSharedLimit(const Context& ctx,
                                         std::string_view name) override;
  absl::StatusOr<Json> ListSharedLimits(const Context& ctx) override;
  absl::StatusOr<Json> Cleanup(const Context& ctx,
                               std::string_view repo_key) override;
  absl::StatusOr<Json> Import(const Context& ctx, const Json& body) override;
  absl::Status Watch(const Context& ctx, std::string_view repo_key,
                     const std::function<bool(const Json&)>& on_event,
                     const std::function<bool()>& on_ready) override;

 private:
  absl::StatusOr<Json> Call(const Context& ctx, const std::string& method,
                            const std::string& path, const std::string& body,
                            const std::string& content_type);
  const std::string base_url_;
  std::string origin_;  // scheme://host:port of base_url_
  std::string prefix_;  // its path, without the trailing slash
  const std::string token_;
  const ClientTls tls_;
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_REMOTE_API_H_
