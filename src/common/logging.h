// Logging helpers: every component logs through an injected spdlog logger.
#ifndef PAC_SRC_COMMON_LOGGING_H_
#define PAC_SRC_COMMON_LOGGING_H_

#include <memory>

#include "spdlog/spdlog.h"

namespace pac::concurrency::internal {

// `logger` if not null, else a logger that drops everything.
std::shared_ptr<spdlog::logger> OrNullLogger(
    std::shared_ptr<spdlog::logger> logger);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_COMMON_LOGGING_H_
