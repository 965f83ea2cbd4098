// A Driver that connects in the background (internal): what `serve` runs
// while its backend is unreachable at start, so that a controller's sidecar
// can start before its database. Until a connection attempt succeeds every
// call answers Unavailable naming the last attempt's error (so /readyz is
// 503 at once, never blocked); attempts repeat with a pause that doubles
// from 250 ms to 5 s. Once connected, every call goes to the real driver.
// Thread-safe; Close() stops the attempts and closes the real driver.
#ifndef PAC_SRC_CORE_DEFERRED_DRIVER_H_
#define PAC_SRC_CORE_DEFERRED_DRIVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "pac/concurrency/driver.h"

namespace pac::concurrency::internal {

using DriverConnector =
    std::function<absl::StatusOr<std::unique_ptr<Driver>>()>;

// `type` and `lease_ttl` are answered before the connection (from the
// configuration); `first_error` is the failure of the attempt made by the
// caller. `connect` is called on a thread of the driver's own.
[[nodiscard]] std::unique_ptr<Driver> NewDeferredDriver(
    std::string type, absl::Duration lease_ttl, absl::Status first_error,
    DriverConnector connect);

}  // namespace pac::concurrency::internal

#endif  // PAC_SRC_CORE_DEFERRED_DRIVER_H_
