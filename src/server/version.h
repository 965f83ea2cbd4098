// The version of this build (the CMake project version), as `--version`,
// `GET /v1/version` and the `pac_build_info` metric report it.
#ifndef PAC_SRC_SERVER_VERSION_H_
#define PAC_SRC_SERVER_VERSION_H_

#include <string_view>

namespace pac::concurrency::server {

// "0.1.0".
[[nodiscard]] std::string_view Version();

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_VERSION_H_
