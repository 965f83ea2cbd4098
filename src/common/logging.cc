#include "src/common/logging.h"

#include "spdlog/sinks/null_sink.h"

namespace pac::concurrency::internal {

std::shared_ptr<spdlog::logger> OrNullLogger(
    std::shared_ptr<spdlog::logger> logger) {
  if (logger != nullptr) return logger;
  static const std::shared_ptr<spdlog::logger> null_logger = [] {
    auto l = std::make_shared<spdlog::logger>(
        "pac-null", std::make_shared<spdlog::sinks::null_sink_mt>());
    l->set_level(spdlog::level::off);
    return l;
  }();
  return null_logger;
}

}  // namespace pac::concurrency::internal
