// A test fixture shared by the HTTP tests: a memory driver, a Service and
// an HttpServer on an ephemeral loopback port, stopped and closed after
// each test.
#ifndef PAC_SRC_SERVER_HTTP_TEST_FIXTURE_H_
#define PAC_SRC_SERVER_HTTP_TEST_FIXTURE_H_

#include <functional>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "httplib.h"
#include "pac/concurrency/concurrency.h"
#include "src/server/http_server.h"
#include "src/server/metrics.h"
#include "src/server/service.h"

namespace pac::concurrency::server {

class MemoryServerTest : public ::testing::Test {
 protected:
  // Starts the server with a 64 KiB body limit on port 0, after `tweak`.
  void StartServer(const std::function<void(HttpServerOptions&)>& tweak) {
    auto d = NewMemoryDriver(MemoryConfig{absl::Minutes(5)});
    ASSERT_TRUE(d.ok());
    driver_ = *std::move(d);
    service_ = std::make_unique<Service>(driver_.get(), nullptr, &metrics_);
    HttpServerOptions o;
    o.port = 0;
    o.max_body_bytes = 64 * 1024;
    if (tweak) tweak(o);
    server_ = std::make_unique<HttpServer>(service_.get(), &metrics_, o);
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override {
    if (server_) server_->Stop();
    server_.reset();
    service_.reset();
    if (driver_) (void)driver_->Close();
  }
  int port() const { return server_->port(); }

  std::unique_ptr<Driver> driver_;
  Metrics metrics_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<HttpServer> server_;
};

// The HTTP tests' server: the memory driver behind a server of 24 threads
// that runs handlers inline (as `serve` runs the memory driver), and a
// client of it.
class HttpServerTest : public MemoryServerTest {
 protected:
  void Start(const std::string& token = "", int max_watches = 0,
             const std::function<void(HttpServerOptions&)>& tweak = {}) {
    StartServer([&](HttpServerOptions& o) {
      o.token = token;
      o.threads = 24;
      o.max_watches = max_watches;
      o.inline_handlers = true;  // as `serve` runs the memory driver
      if (tweak) tweak(o);
    });
    url_ = "http://127.0.0.1:" + std::to_string(port());
  }
  httplib::Client Client() {
    httplib::Client c(url_);
    c.set_read_timeout(10, 0);
    return c;
  }
  // A gauge's value from /metrics, or -1.
  int Gauge(const std::string& name) {
    auto m = Client().Get("/metrics");
    const std::string key = "\n" + name + " ";
    size_t at = m ? m->body.find(key) : std::string::npos;
    return at == std::string::npos ? -1
                                   : std::stoi(m->body.substr(at + key.size()));
  }
  static Json Body(const httplib::Result& r) {
    return Json::parse(r->body, nullptr, false);
  }

  std::string url_;
  Context ctx_ = Context::Background();
};

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_HTTP_TEST_FIXTURE_H_
