// JSON request bodies into the Service's operations (memory driver), as
// the HTTP routes hand them over: the first byte picks the operation, the
// rest is the body. Any body is answered with a Status, never a crash.
#include <string>

#include "fuzz/fuzz_util.h"
#include "src/server/api.h"

using namespace pac::concurrency;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  auto& service = *fuzz::SharedBackend().service;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1,
                              size - 1);
  auto body = server::ParseJson(text, "request body");
  if (!body.ok()) return 0;
  Context ctx = Context::Background();
  absl::StatusOr<server::Json> r;
  switch (data[0] % 3) {
    case 0:
      r = service.SetLimit(ctx, "ns/app", *body);
      break;
    case 1:
      r = service.Submit(ctx, "ns/app", *body);
      break;
    default:
      r = service.Import(ctx, *body);
      break;
  }
  // Whatever came back prints.
  if (r.ok()) (void)server::DumpSafe(*r);
  (void)service.Cleanup(ctx, "ns/app");
  return 0;
}
