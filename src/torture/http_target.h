// The torture's Target over HTTP: a worker in the mixed mode calls a
// `pac-concurrency serve` of its own (server::RemoteApi) instead of a
// driver, so the service, its JSON and its error mapping are under the
// same faults and checks as the drivers.
#ifndef PAC_SRC_TORTURE_HTTP_TARGET_H_
#define PAC_SRC_TORTURE_HTTP_TARGET_H_

#include <memory>
#include <string>

#include "src/torture/worker.h"

namespace pac::concurrency::torture {

// `url`: "http://127.0.0.1:<port>" of the server.
std::unique_ptr<Target> NewHttpTarget(const std::string& url);

}  // namespace pac::concurrency::torture

#endif  // PAC_SRC_TORTURE_HTTP_TARGET_H_
