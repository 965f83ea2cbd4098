// HttpTransport's implementation: binding and the TLS context, the
// acceptor with the connection caps and idle eviction, the deadline sweep,
// and closing. A connection's own work is in http_connection.h.
#include "src/server/http_transport.h"

#include <sys/resource.h>

#include "src/server/http_connection.h"

namespace pac::concurrency::server {

absl::Status HttpTransport::Impl::Start() {
  // Each connection is a descriptor: take what the hard limit allows.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (!options_.tls_cert_file.empty() || !options_.tls_key_file.empty()) {
    if (absl::Status s = MakeTlsContext(); !s.ok()) return s;
  }
  asio::io_context& ioc = loops_[0]->ioc;
  const std::string where = fmt::format("{}:{}", options_.host, options_.port);
  beast::error_code ec;
  asio::ip::address addr = asio::ip::make_address(options_.host, ec);
  if (ec) {
    tcp::resolver resolver(ioc);
    auto results =
        resolver.resolve(options_.host, std::to_string(options_.port), ec);
    if (ec || results.empty()) {
      return absl::UnavailableError(
          fmt::format("cannot listen on {}: {}", where, ec.message()));
    }
    addr = results.begin()->endpoint().address();
  }
  tcp::endpoint ep(addr, static_cast<unsigned short>(options_.port));
  acceptor_.emplace(ioc);
  acceptor_->open(ep.protocol(), ec);
  // SO_REUSEADDR (not SO_REUSEPORT): a restarted server binds while old
  // connections linger, and a second server cannot share the port.
  if (!ec) acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(ep, ec);
  if (ec) {
    return absl::UnavailableError(fmt::format(
        "cannot listen on {} (address in use?): {}", where, ec.message()));
  }
  acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot listen on {}: {}", where, ec.message()));
  }
  port_ = acceptor_->local_endpoint().port();
  sweep_.emplace(ioc);
  DoAccept();
  Sweep();
  for (auto& l : loops_) {
    l->thread = std::thread([loop = l.get()] { loop->ioc.run(); });
  }
  return absl::OkStatus();
}

absl::Status HttpTransport::Impl::MakeTlsContext() {
  const Options& o = options_;
  if (o.tls_cert_file.empty() || o.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key: give both, or neither");
  }
  tls_.emplace(ssl::context::tls_server);
  beast::error_code ec;
  tls_->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                        ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                        ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                    ec);
  SSL_CTX_set_min_proto_version(tls_->native_handle(), TLS1_2_VERSION);
  tls_->use_certificate_chain_file(o.tls_cert_file, ec);
  if (ec) {
    return absl::InvalidArgumentError(fmt::format(
        "--tls-cert {}: {}", EscapeBytes(o.tls_cert_file), ec.message()));
  }
  tls_->use_private_key_file(o.tls_key_file, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        fmt::format("--tls-key {}: {} (or it does not match --tls-cert)",
                    EscapeBytes(o.tls_key_file), ec.message()));
  }
  if (!o.tls_client_ca_file.empty()) {
    tls_->load_verify_file(o.tls_client_ca_file, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          fmt::format("--tls-client-ca {}: {}",
                      EscapeBytes(o.tls_client_ca_file), ec.message()));
    }
    tls_->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert,
                          ec);
  }
  return absl::OkStatus();
}

void HttpTransport::Impl::Sweep() {
  sweep_->expires_after(std::chrono::milliseconds(100));
  sweep_->async_wait([this](const beast::error_code& ec) {
    if (ec || closed_) return;
    const int64_t now = MonoNanos();
    std::vector<std::shared_ptr<Conn>> due;
    {
      internal::MutexLock lock(&mu_);
      for (auto& [id, e] : conns_) {
        auto c = e.conn.lock();
        if (!c) continue;
        const int64_t d = c->deadline_ns_;
        if (d != 0 && d <= now) due.push_back(std::move(c));
      }
    }
    for (auto& c : due) c->PostDeadline();
    Sweep();
  });
}

void HttpTransport::Impl::DoAccept() {
  asio::io_context& target = loops_[next_loop_++ % loops_.size()]->ioc;
  acceptor_->async_accept(
      target, [this](const beast::error_code& ec, tcp::socket socket) {
        if (closed_) return;
        if (ec == asio::error::operation_aborted) return;
        if (!ec) {
          OnAccept(std::move(socket));
          DoAccept();
          return;
        }
        // Out of descriptors or the like: try again shortly.
        auto timer = std::make_shared<asio::steady_timer>(loops_[0]->ioc);
        timer->expires_after(std::chrono::milliseconds(50));
        timer->async_wait([this, timer](const beast::error_code&) {
          if (!closed_) DoAccept();
        });
      });
}

void HttpTransport::Impl::OnAccept(tcp::socket socket) {
  beast::error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  auto remote = socket.remote_endpoint(ec);
  if (ec) return;  // already gone
  std::string peer = remote.address().to_string();
  std::shared_ptr<Conn> victim;
  std::shared_ptr<Conn> conn;
  bool refused = false;
  {
    internal::MutexLock lock(&mu_);
    const bool over_total = options_.max_connections > 0 &&
                            int(conns_.size()) >= options_.max_connections;
    auto peer_count = per_peer_.find(peer);
    const bool over_peer =
        options_.max_connections_per_peer > 0 &&
        peer_count != per_peer_.end() &&
        peer_count->second >= options_.max_connections_per_peer;
    if (over_total || over_peer) {
      // The oldest idle connection (of this peer when that is the cap hit).
      uint64_t oldest = 0;
      int64_t when = std::numeric_limits<int64_t>::max();
      for (const auto& [id, e] : conns_) {
        if (over_peer && e.peer != peer) continue;
        auto c = e.conn.lock();
        if (!c || c->state_ != int(ConnState::kIdle)) continue;
        if (c->since_ns_ < when) {
          when = c->since_ns_;
          oldest = id;
          victim = std::move(c);
        }
      }
      if (oldest == 0) {
        refused = true;
        refusals_["capacity"] += 1;
      } else {
        EraseLocked(oldest);
        refusals_["evicted_idle"] += 1;
      }
    }
    if (!refused) {
      const uint64_t id = next_id_++;
      conn = std::make_shared<Conn>(this, std::move(socket), id, peer);
      conns_[id] = Entry{conn, peer};
      per_peer_[peer] += 1;
    }
  }
  if (victim) victim->PostShutdown();
  if (refused) {
    // Best effort, never blocking: one write on a non-blocking socket.
    std::string body =
        Json{{"error",
              {{"code", "RESOURCE_EXHAUSTED"},
               {"message", fmt::format("too many open connections: this "
                                       "server keeps at most {} ({} per peer; "
                                       "serve --max-connections, "
                                       "--max-connections-per-peer); retry "
                                       "later",
                                       options_.max_connections,
                                       options_.max_connections_per_peer)}}}}
            .dump() +
        "\n";
    std::string bytes = fmt::format(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{}",
        body.size(), body);
    socket.non_blocking(true, ec);
    (void)socket.write_some(asio::buffer(bytes), ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
    return;
  }
  conn->Begin();
}

void HttpTransport::Impl::Close() {
  if (closed_.exchange(true)) return;
  if (acceptor_) {
    asio::post(loops_[0]->ioc, [this] {
      beast::error_code ec;
      acceptor_->close(ec);
      sweep_->cancel();
    });
  }
  std::vector<std::shared_ptr<Conn>> all;
  {
    internal::MutexLock lock(&mu_);
    for (auto& [id, e] : conns_) {
      if (auto c = e.conn.lock()) all.push_back(std::move(c));
    }
  }
  for (auto& c : all) c->PostShutdown();
}

HttpTransport::HttpTransport(Options options,
                             std::shared_ptr<ElasticThreadPool> pool,
                             Handler handler, Precheck precheck,
                             Observer observer)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(pool),
                                   std::move(handler), std::move(precheck),
                                   std::move(observer))) {}

HttpTransport::~HttpTransport() {
  Close();
  Join();
}

absl::Status HttpTransport::Start() { return impl_->Start(); }
int HttpTransport::port() const { return impl_->port_; }
void HttpTransport::Close() { impl_->Close(); }
void HttpTransport::Join() { impl_->Join(); }

int HttpTransport::open_connections() const {
  internal::MutexLock lock(&impl_->mu_);
  return int(impl_->conns_.size());
}
int HttpTransport::max_connections() const {
  return impl_->options_.max_connections;
}

std::vector<std::pair<std::string, double>> HttpTransport::Refusals() const {
  internal::MutexLock lock(&impl_->mu_);
  return {impl_->refusals_.begin(), impl_->refusals_.end()};
}

}  // namespace pac::concurrency::server
