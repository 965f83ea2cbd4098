#include "src/etcd/grpc_etcd.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/etcd/etcd_rpc.grpc.pb.h"

namespace pac::concurrency::internal {
namespace {

// etcd's "require leader" metadata (clientv3's WithRequireLeader): a member
// that has no leader refuses the call, or ends the watch stream, with
// Unavailable instead of holding it.
constexpr char kRequireLeaderKey[] = "hasleader";
constexpr char kRequireLeaderValue[] = "true";

// How long one attempt of a call may take before it is sent again, to the
// next endpoint. A member forwards a write to its leader; when the leader
// dies, the write is lost and the member answers only after its own request
// timeout (5 s plus two election timeouts), while a new leader is usually
// elected within one or two seconds. Sending again is safe: every guarded
// Txn compares `meta`, so at most one of the two commits, and the driver
// finds its commit id if the first one did (docs/etcd.md); the other calls
// are reads, idempotent puts, or grants whose spare lease expires.
constexpr absl::Duration kAttemptTimeout = absl::Seconds(2);
// A call whose context has no deadline: all attempts together, and how
// long it keeps retrying an unavailable etcd.
constexpr absl::Duration kNoDeadlineLimit = absl::Seconds(30);
constexpr absl::Duration kNoDeadlineRetries = absl::Seconds(4);
// The longest pause between two attempts of a call that found etcd
// unavailable (pauses double from 50 ms up to it).
constexpr absl::Duration kMaxRetryPause = absl::Milliseconds(250);

absl::Status FromGrpc(const grpc::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  // error_message() returns a copy: keep it alive for the view below.
  const std::string text = s.error_message();
  std::string msg = Cat("etcd: ", what, ": ", text);
  absl::string_view m = AV(text);
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      if (absl::StrContains(m, "ssl") || absl::StrContains(m, "SSL") ||
          absl::StrContains(m, "handshake") ||
          absl::StrContains(m, "certificate")) {
        return absl::UnavailableError(Cat(msg, " (TLS handshake failed?)"));
      }
      return absl::UnavailableError(msg);
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(msg);
    case grpc::StatusCode::CANCELLED:
      return absl::CancelledError(msg);
    case grpc::StatusCode::UNAUTHENTICATED:
      return absl::UnauthenticatedError(msg);
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::PermissionDeniedError(msg);
    case grpc::StatusCode::INVALID_ARGUMENT:
      if (absl::StrContains(m, "authentication failed") ||
          absl::StrContains(m, "invalid auth token") ||
          absl::StrContains(m, "user name is empty")) {
        return absl::UnauthenticatedError(msg);
      }
      return absl::InvalidArgumentError(msg);
    case grpc::StatusCode::NOT_FOUND:
      return absl::NotFoundError(msg);
    case grpc::StatusCode::OUT_OF_RANGE:
      return absl::OutOfRangeError(msg);
    case grpc::StatusCode::FAILED_PRECONDITION:
      return absl::FailedPreconditionError(msg);
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::StatusOr<std::string> ReadFile(const std::string& key,
                                     const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::FailedPreconditionError(
        Cat("config: ", key, ": cannot read ", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class GrpcEtcd final : public EtcdKV,
                       public std::enable_shared_from_this<GrpcEtcd> {
 public:
  GrpcEtcd(EtcdConfig config, std::shared_ptr<spdlog::logger> logger)
      : config_(std::move(config)), logger_(OrNullLogger(std::move(logger))) {}

  absl::Status Init() {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    // After an outage the channel dials again within half a second of the
    // server being back (gRPC's default backoff grows to 120 s).
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    // gRPC reads its "min reconnect backoff" as the time each connection
    // attempt gets to finish its TCP, TLS and HTTP/2 handshakes, not as a
    // pause: at 100 ms a slow or distant link never connected. Each attempt
    // gets the dial timeout (at least 1 s); refused attempts still fail at
    // once and are retried after the pauses above.
    args.SetInt(
        GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
        static_cast<int>(absl::ToInt64Milliseconds(std::clamp(
            config_.dial_timeout, absl::Seconds(1), absl::Seconds(60)))));
    if (config_.tls.has_value()) {
      grpc::SslCredentialsOptions ssl;
      const TLSConfig& t = *config_.tls;
      if (!t.ca_file.empty()) {
        auto ca = ReadFile("etcd-ca-file", t.ca_file);
        if (!ca.ok()) return ca.status();
        ssl.pem_root_certs = *ca;
      }
      if (!t.cert_file.empty()) {
        auto cert = ReadFile("etcd-cert-file", t.cert_file);
        if (!cert.ok()) return cert.status();
        auto key = ReadFile("etcd-key-file", t.key_file);
        if (!key.ok()) return key.status();
        ssl.pem_cert_chain = *cert;
        ssl.pem_private_key = *key;
      }
      if (!t.server_name.empty()) {
        args.SetSslTargetNameOverride(t.server_name);
      }
      creds = grpc::SslCredentials(ssl);
    } else {
      creds = grpc::InsecureChannelCredentials();
    }
    for (const std::string& ep : config_.endpoints) {
      std::string target = ep;
      for (const char* scheme : {"http://", "https://"}) {
        if (absl::StartsWith(AV(target), scheme)) {
          target = target.substr(std::string(scheme).size());
        }
      }
      channels_.push_back(grpc::CreateCustomChannel(target, creds, args));
    }
    // Dial every endpoint at once and take the first in the list that is
    // connected, as soon as one is: a dead endpoint listed first costs
    // nothing (dialled one after another, it held each call for its share
    // of the dial timeout).
    const absl::Time deadline = absl::Now() + config_.dial_timeout;
    bool any = false;
    while (!any) {
      std::vector<grpc_connectivity_state> states;
      for (size_t i = 0; i < channels_.size() && !any; ++i) {
        states.push_back(channels_[i]->GetState(/*try_to_connect=*/true));
        if (states.back() == GRPC_CHANNEL_READY) {
          current_ = i;
          any = true;
        }
      }
      if (any || absl::Now() >= deadline) break;
      // A channel's connection makes progress while somebody waits on it
      // (else only gRPC's backup poller moves it, every 5 s): wait on each
      // in turn, briefly.
      for (size_t i = 0; i < channels_.size(); ++i) {
        channels_[i]->WaitForStateChange(
            states[i], absl::ToChronoTime(std::min(
                           deadline, absl::Now() + absl::Milliseconds(5))));
      }
    }
    if (!any) {
      return absl::UnavailableError(
          Cat("etcd: no endpoint of [", Join(config_.endpoints),
              "] answered within ", absl::FormatDuration(config_.dial_timeout),
              config_.tls.has_value() ? " (check the TLS settings too)" : ""));
    }
    if (!config_.username.empty()) {
      Context ctx =
          Context::WithTimeout(Context::Background(), config_.dial_timeout);
      if (absl::Status s = Authenticate(ctx); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<etcdpb::RangeResponse> Range(
      const Context& ctx, const etcdpb::RangeRequest& req) override {
    return Unary<etcdpb::RangeResponse>(
        ctx, "range",
        [&](grpc::ClientContext* c, etcdpb::RangeResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::KV::NewStub(ch)->Range(c, req, r);
        });
  }
  absl::StatusOr<etcdpb::TxnResponse> Txn(
      const Context& ctx, const etcdpb::TxnRequest& req) override {
    return Unary<etcdpb::TxnResponse>(
        ctx, "txn",
        [&](grpc::ClientContext* c, etcdpb::TxnResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::KV::NewStub(ch)->Txn(c, req, r);
        });
  }
  absl::StatusOr<etcdpb::PutResponse> Put(
      const Context& ctx, const etcdpb::PutRequest& req) override {
    return Unary<etcdpb::PutResponse>(
        ctx, "put",
        [&](grpc::ClientContext* c, etcdpb::PutResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::KV::NewStub(ch)->Put(c, req, r);
        });
  }
  absl::StatusOr<int64_t> LeaseGrant(const Context& ctx,
                                     int64_t ttl_seconds) override {
    etcdpb::LeaseGrantRequest req;
    req.set_ttl(ttl_seconds);
    auto r = Unary<etcdpb::LeaseGrantResponse>(
        ctx, "lease grant",
        [&](grpc::ClientContext* c, etcdpb::LeaseGrantResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::Lease::NewStub(ch)->LeaseGrant(c, req, r);
        });
    if (!r.ok()) return r.status();
    if (!r->error().empty()) {
      return absl::UnavailableError(Cat("etcd: lease grant: ", r->error()));
    }
    return r->id();
  }
  absl::Status LeaseRevoke(const Context& ctx, int64_t id) override {
    etcdpb::LeaseRevokeRequest req;
    req.set_id(id);
    auto r = Unary<etcdpb::LeaseRevokeResponse>(
        ctx, "lease revoke",
        [&](grpc::ClientContext* c, etcdpb::LeaseRevokeResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::Lease::NewStub(ch)->LeaseRevoke(c, req, r);
        });
    return r.status();
  }
  absl::StatusOr<int64_t> LeaseKeepAlive(const Context& ctx,
                                         int64_t id) override {
    auto r = Unary<etcdpb::LeaseKeepAliveResponse>(
        ctx, "lease keepalive",
        [&](grpc::ClientContext* c, etcdpb::LeaseKeepAliveResponse* r,
            const ChannelPtr& ch) {
          auto stream = etcdpb::Lease::NewStub(ch)->LeaseKeepAlive(c);
          etcdpb::LeaseKeepAliveRequest req;
          req.set_id(id);
          if (!stream->Write(req)) return stream->Finish();
          stream->WritesDone();
          if (!stream->Read(r)) {
            grpc::Status s = stream->Finish();
            return s.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                         "keepalive stream closed")
                          : s;
          }
          c->TryCancel();
          return grpc::Status::OK;
        });
    if (!r.ok()) return r.status();
    return r->ttl();
  }
  absl::StatusOr<int64_t> LeaseTimeToLive(const Context& ctx,
                                          int64_t id) override {
    etcdpb::LeaseTimeToLiveRequest req;
    req.set_id(id);
    auto r = Unary<etcdpb::LeaseTimeToLiveResponse>(
        ctx, "lease ttl",
        [&](grpc::ClientContext* c, etcdpb::LeaseTimeToLiveResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::Lease::NewStub(ch)->LeaseTimeToLive(c, req, r);
        });
    if (!r.ok()) return r.status();
    return r->ttl();
  }
  absl::Status Compact(const Context& ctx, int64_t revision) override {
    etcdpb::CompactionRequest req;
    req.set_revision(revision);
    req.set_physical(true);
    // A physical compaction of a large store may take long: one attempt.
    auto r = Unary<etcdpb::CompactionResponse>(
        ctx, "compact",
        [&](grpc::ClientContext* c, etcdpb::CompactionResponse* r,
            const ChannelPtr& ch) {
          return etcdpb::KV::NewStub(ch)->Compact(c, req, r);
        },
        absl::InfiniteDuration());
    return r.status();
  }

  absl::StatusOr<std::unique_ptr<EtcdWatch>> Watch(const std::string& key,
                                                   const std::string& range_end,
                                                   int64_t start_revision,
                                                   WatchFn fn) override;

 private:
  class StreamWatch;

  static std::string Join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
  }

  using ChannelPtr = std::shared_ptr<grpc::Channel>;

  // Waits up to `pause` for `ch` to connect, returning early once it is
  // ready. A failing call does not wait for the connection (it fails at
  // once while the channel is in TRANSIENT_FAILURE), and a connection
  // attempt makes progress only while somebody waits on its channel (else
  // gRPC's backup poller moves it every 5 s, past its connect deadline):
  // an idle pause left a driver that had lost its connection failing every
  // call for good after its server came back (seen by pac-torture).
  static void PauseDriving(const ChannelPtr& ch, absl::Duration pause) {
    const absl::Time until = absl::Now() + pause;
    grpc_connectivity_state state = ch->GetState(/*try_to_connect=*/true);
    while (state != GRPC_CHANNEL_READY && absl::Now() < until) {
      ch->WaitForStateChange(state, absl::ToChronoTime(until));
      state = ch->GetState(/*try_to_connect=*/true);
    }
  }
  ChannelPtr Channel(size_t* index = nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    if (index != nullptr) *index = current_;
    return channels_[current_];
  }
  // Moves away from endpoint `failed`, unless another caller already did
  // (several threads failing on one dead endpoint move once, not in circles
  // that may land on it again).
  void Failover(size_t failed) {
    std::lock_guard<std::mutex> lock(mu_);
    if (current_ == failed) current_ = (current_ + 1) % channels_.size();
  }
  void Prepare(grpc::ClientContext* c, absl::Time deadline) {
    c->set_deadline(absl::ToChronoTime(deadline));
    // A member without a leader answers at once (Unavailable, "no
    // leader"), so the call moves on to the next endpoint instead of
    // waiting there for its deadline.
    c->AddMetadata(kRequireLeaderKey, kRequireLeaderValue);
    std::lock_guard<std::mutex> lock(mu_);
    if (!token_.empty()) c->AddMetadata("token", token_);
  }

  absl::Status Authenticate(const Context& ctx) {
    etcdpb::AuthenticateRequest req;
    req.set_name(config_.username);
    req.set_password(config_.password);
    for (size_t attempt = 0; attempt < channels_.size(); ++attempt) {
      grpc::ClientContext c;
      size_t index = 0;
      const ChannelPtr ch = Channel(&index);
      absl::Time deadline = ctx.deadline() == absl::InfiniteFuture()
                                ? absl::Now() + config_.dial_timeout
                                : ctx.deadline();
      c.set_deadline(absl::ToChronoTime(deadline));
      etcdpb::AuthenticateResponse resp;
      grpc::Status s = etcdpb::Auth::NewStub(ch)->Authenticate(&c, req, &resp);
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        token_ = resp.token();
        return absl::OkStatus();
      }
      absl::Status st = FromGrpc(s, "authenticate");
      if (!absl::IsUnavailable(st)) {
        // Never echo the password; the server's message does not hold it.
        return absl::IsInvalidArgument(st) || absl::IsUnauthenticated(st)
                   ? absl::UnauthenticatedError(
                         Cat("etcd: authentication of user ", config_.username,
                             " failed: ", s.error_message()))
                   : st;
      }
      Failover(index);
    }
    return absl::UnavailableError("etcd: authenticate: no endpoint answered");
  }

  template <typename Resp, typename Call>
  absl::StatusOr<Resp> Unary(const Context& ctx, std::string_view what,
                             Call call,
                             absl::Duration attempt_timeout = kAttemptTimeout) {
    bool reauthenticated = false;
    const absl::Time started = absl::Now();
    absl::Duration backoff = absl::Milliseconds(50);
    const absl::Time deadline = ctx.deadline() == absl::InfiniteFuture()
                                    ? absl::Now() + kNoDeadlineLimit
                                    : ctx.deadline();
    while (true) {
      if (absl::Status s = ctx.Err(); !s.ok()) return s;
      grpc::ClientContext c;
      // The endpoint and its channel under one lock: a failure is charged
      // to the endpoint the call went to.
      size_t index = 0;
      const ChannelPtr ch = Channel(&index);
      const absl::Time attempt_deadline =
          std::min(deadline, absl::Now() + attempt_timeout);
      Prepare(&c, attempt_deadline);
      int64_t cancel_id = ctx.AddCancelCallback([&c] { c.TryCancel(); });
      Resp resp;
      grpc::Status gs = call(&c, &resp, ch);
      ctx.RemoveCancelCallback(cancel_id);
      if (gs.ok()) return resp;
      absl::Status s = FromGrpc(gs, what);
      if (absl::IsUnauthenticated(s) && !config_.username.empty() &&
          !reauthenticated &&
          absl::StrContains(AV(gs.error_message()), "token")) {
        // The auth token expired (or the server restarted): refresh once.
        reauthenticated = true;
        if (absl::Status a = Authenticate(ctx); !a.ok()) return a;
        continue;
      }
      if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)) {
        if (absl::Status cs = ctx.Err(); !cs.ok()) return cs;
        if (absl::IsDeadlineExceeded(s)) {
          if (attempt_deadline >= deadline) return s;
          // Only this attempt timed out: most likely a write forwarded to a
          // leader that died. Sent again, to the next endpoint, at once.
          logger_->warn(
              "etcd endpoint did not answer a {} within {}, failing over", what,
              absl::FormatDuration(attempt_timeout));
          Failover(index);
          continue;
        }
        logger_->warn("etcd endpoint unavailable, failing over: {}",
                      s.ToString());
        Failover(index);
        if (ctx.deadline() != absl::InfiniteFuture() &&
            absl::Now() + backoff >= ctx.deadline()) {
          return s;
        }
        if (ctx.deadline() == absl::InfiniteFuture() &&
            absl::Now() - started > kNoDeadlineRetries) {
          return s;  // no deadline: give up after a few seconds of retries
        }
        // Pauses stay short, so that a call waiting out an outage is sent
        // again within kMaxRetryPause of the server being back.
        PauseDriving(Channel(), backoff);
        backoff = std::min(backoff * 2, kMaxRetryPause);
        continue;
      }
      return s;
    }
  }

  const EtcdConfig config_;
  const std::shared_ptr<spdlog::logger> logger_;
  std::mutex mu_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  size_t current_ = 0;
  std::string token_;
};

// A Watch stream on its own thread. Ends with a `broken` or `compacted`
// batch; destroying it cancels the stream and joins the thread.
class GrpcEtcd::StreamWatch final : public EtcdWatch {
 public:
  StreamWatch(std::shared_ptr<GrpcEtcd> etcd, etcdpb::WatchRequest create,
              WatchFn fn)
      : etcd_(std::move(etcd)), create_(std::move(create)), fn_(std::move(fn)) {
    // A member that loses its leader ends the stream (Unavailable), where
    // it would otherwise stay open and silent, its member cut off.
    ctx_.AddMetadata(kRequireLeaderKey, kRequireLeaderValue);
    {
      std::lock_guard<std::mutex> lock(etcd_->mu_);
      if (!etcd_->token_.empty()) ctx_.AddMetadata("token", etcd_->token_);
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~StreamWatch() override {
    stopping_ = true;
    ctx_.TryCancel();
    thread_.join();
  }

 private:
  void Run() {
    size_t index = 0;
    auto stream = etcdpb::Watch::NewStub(etcd_->Channel(&index))->Watch(&ctx_);
    WatchBatch end;
    end.broken = true;
    if (!stream->Write(create_)) {
      Broken(stream->Finish(), index);
      if (!stopping_) fn_(end);
      return;
    }
    etcdpb::WatchResponse resp;
    while (stream->Read(&resp)) {
      if (resp.compact_revision() > 0) {
        WatchBatch b;
        b.compact_revision = resp.compact_revision();
        if (!stopping_) fn_(b);
        ctx_.TryCancel();
        stream->Finish();
        return;
      }
      if (resp.canceled()) break;
      if (resp.events_size() == 0) continue;
      WatchBatch b;
      b.revision = resp.header().revision();
      b.events.assign(resp.events().begin(), resp.events().end());
      if (!stopping_) fn_(b);
    }
    Broken(stream->Finish(), index);
    if (!stopping_) fn_(end);
  }

  // A stream that its endpoint ended as unavailable (gone, or without a
  // leader) is resumed on the next endpoint, as unary calls move on.
  void Broken(const grpc::Status& s, size_t index) {
    if (stopping_ || s.error_code() != grpc::StatusCode::UNAVAILABLE) return;
    etcd_->logger_->warn("etcd watch stream unavailable, failing over: {}",
                         s.error_message());
    etcd_->Failover(index);
  }

  std::shared_ptr<GrpcEtcd> etcd_;
  etcdpb::WatchRequest create_;
  WatchFn fn_;
  grpc::ClientContext ctx_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<EtcdWatch>> GrpcEtcd::Watch(
    const std::string& key, const std::string& range_end,
    int64_t start_revision, WatchFn fn) {
  etcdpb::WatchRequest req;
  auto* c = req.mutable_create_request();
  c->set_key(key);
  c->set_range_end(range_end);
  c->set_start_revision(start_revision);
  // Each event carries the key's previous value: a seat's deletion names
  // the run that held it (etcd_watch.cc).
  c->set_prev_kv(true);
  return std::unique_ptr<EtcdWatch>(
      new StreamWatch(shared_from_this(), std::move(req), std::move(fn)));
}

}  // namespace

absl::StatusOr<std::shared_ptr<EtcdKV>> NewGrpcEtcd(
    const EtcdConfig& config, std::shared_ptr<spdlog::logger> logger) {
  auto etcd = std::make_shared<GrpcEtcd>(config, std::move(logger));
  if (absl::Status s = etcd->Init(); !s.ok()) return s;
  return std::shared_ptr<EtcdKV>(etcd);
}

}  // namespace pac::concurrency::internal
