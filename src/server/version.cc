#include "src/server/version.h"

#include "src/server/version_config.h"

namespace pac::concurrency::server {

std::string_view Version() { return PAC_VERSION; }

}  // namespace pac::concurrency::server
