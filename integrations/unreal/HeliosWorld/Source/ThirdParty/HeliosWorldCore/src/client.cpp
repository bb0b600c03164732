// helios_world::WorldClient: the grpc++ side of the client core (see include/helios_world/client.h).
//
// Run() is a loop of three phases: Connect (a fresh channel, the health probe until SERVING, the
// GetServerInfo handshake), StreamSession (CreateSession, Reset, Stream until it ends), and, when
// the server or the session was lost, a backoff before the next Connect. Everything grpc- and
// protobuf-specific lives in this file.
#include "helios_world/client.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <utility>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "decoder.h"
#include "helios/v1/world.grpc.pb.h"
#include "retry_policy.h"

namespace helios_world {

namespace pb = ::helios::v1;
using Clock = std::chrono::steady_clock;

// -------------------------------------------------------------------------------------------------
// Names and small types
// -------------------------------------------------------------------------------------------------

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  std::string out = StatusCodeName(code);
  if (!message.empty()) out += ": " + message;
  return out;
}

const char* EncodingName(Encoding encoding) {
  switch (encoding) {
    case Encoding::kRgb24: return "rgb24";
    case Encoding::kJpeg: return "jpeg";
    case Encoding::kH264: return "h264";
  }
  return "unknown";
}

bool ParseEncoding(const std::string& name, Encoding* encoding) {
  if (name == "rgb24" || name == "raw") {
    *encoding = Encoding::kRgb24;
  } else if (name == "jpeg") {
    *encoding = Encoding::kJpeg;
  } else if (name == "h264") {
    *encoding = Encoding::kH264;
  } else {
    return false;
  }
  return true;
}

int BytesPerPixel(PixelFormat format) { return format == PixelFormat::kRgb8 ? 3 : 4; }

const char* EventTypeName(Event::Type type) {
  switch (type) {
    case Event::Type::kConnecting: return "CONNECTING";
    case Event::Type::kConnected: return "CONNECTED";
    case Event::Type::kSessionStarted: return "SESSION_STARTED";
    case Event::Type::kChunkDone: return "CHUNK_DONE";
    case Event::Type::kFramesDropped: return "FRAMES_DROPPED";
    case Event::Type::kActionRejected: return "ACTION_REJECTED";
    case Event::Type::kSessionLost: return "SESSION_LOST";
    case Event::Type::kStopped: return "STOPPED";
    case Event::Type::kFatal: return "FATAL";
  }
  return "UNKNOWN";
}

Action Action::Prompt(std::string text) {
  Action a;
  a.kind = Kind::kPrompt;
  a.text = std::move(text);
  return a;
}

Action Action::Transition(std::string text, uint32_t chunks) {
  Action a;
  a.kind = Kind::kTransition;
  a.text = std::move(text);
  a.transition_chunks = chunks;
  return a;
}

Action Action::Control(ControlInput control) {
  Action a;
  a.kind = Kind::kControl;
  a.control = std::move(control);
  return a;
}

namespace {

Status FromGrpc(const grpc::Status& s) {
  return Status{static_cast<StatusCode>(s.error_code()), s.error_message()};
}

Status Make(StatusCode code, std::string message) { return Status{code, std::move(message)}; }

int64_t UnixNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Errors after which a new channel and a new session may succeed: the server restarted, is still
// loading or draining, lost the worker holding the session (ABORTED: that session is gone for good,
// so nothing is retried on it), or is full for now. Anything else (a bad token, a bad size, another
// API version, a bug) would fail again the same way.
bool Retryable(StatusCode code) {
  return code == StatusCode::kUnavailable || code == StatusCode::kNotFound ||
         code == StatusCode::kAborted || code == StatusCode::kDeadlineExceeded ||
         code == StatusCode::kResourceExhausted;
}

// A fatal status with advice a game developer can act on.
Status Explain(Status s) {
  if (s.code == StatusCode::kUnauthenticated) {
    s.message = "the server refused the token (" + s.message +
                "): set the token the server was started with (helios serve --token, or "
                "$HELIOS_TOKEN on the server)";
  }
  return s;
}

void ToProto(const Action& a, pb::Action* out) {
  switch (a.kind) {
    case Action::Kind::kContinue:
      break;  // no member of the oneof: "continue as before"
    case Action::Kind::kPrompt:
      out->mutable_prompt()->set_text(a.text);
      break;
    case Action::Kind::kTransition: {
      auto* t = out->mutable_transition();
      t->set_text(a.text);
      t->set_chunks(a.transition_chunks);
      break;
    }
    case Action::Kind::kControl: {
      auto* c = out->mutable_control();
      for (const auto& key : a.control.keys) c->add_keys(key);
      c->set_mouse_dx(a.control.mouse_dx);
      c->set_mouse_dy(a.control.mouse_dy);
      c->set_camera_yaw(a.control.camera_yaw);
      c->set_camera_pitch(a.control.camera_pitch);
      c->set_camera_zoom(a.control.camera_zoom);
      break;
    }
  }
}

// Reads field 1 (ServingStatus, a varint) of a grpc.health.v1.HealthCheckResponse. The health
// check goes through the generic stub, so no health.proto is compiled into the library (and none
// can clash with a copy the game links for itself).
int HealthStatus(const grpc::ByteBuffer& buffer) {
  grpc::Slice slice;
  if (!buffer.DumpToSingleSlice(&slice).ok()) return -1;
  const uint8_t* p = slice.begin();
  const uint8_t* end = slice.end();
  auto varint = [&](uint64_t* value) {
    *value = 0;
    for (int shift = 0; p < end && shift < 64; shift += 7) {
      const uint8_t byte = *p++;
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  };
  int status = 0;  // absent field: UNKNOWN
  while (p < end) {
    uint64_t tag = 0, value = 0;
    if (!varint(&tag)) return -1;
    const int wire_type = static_cast<int>(tag & 7);
    if (wire_type == 0) {
      if (!varint(&value)) return -1;
      if ((tag >> 3) == 1) status = static_cast<int>(value);
    } else if (wire_type == 2) {  // a length-delimited field of a newer server: skip it
      if (!varint(&value) || value > static_cast<uint64_t>(end - p)) return -1;
      p += value;
    } else {
      return -1;
    }
  }
  return status;
}

Event MakeEvent(Event::Type type, Status status = Status{}) {
  Event event;
  event.type = type;
  event.status = std::move(status);
  return event;
}

constexpr int kHealthServing = 1;
constexpr size_t kMaxPendingActions = 16;  // the server queues at most 16 lockstep actions

}  // namespace

// -------------------------------------------------------------------------------------------------
// Connection and outbox
// -------------------------------------------------------------------------------------------------

// One channel with its stubs. A new one is made for every reconnect attempt: a channel that saw
// its server die sits in its own reconnect backoff, which a fresh channel does not have.
struct WorldClient::Connection {
  Connection(const ClientOptions& options, int max_receive_bytes)
      : token(options.token), unary_timeout(options.unary_timeout_seconds),
        max_receive(max_receive_bytes) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(max_receive_bytes);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // keep pinging an idle connection
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, options.retries ? 1 : 0);
    if (options.retries) args.SetServiceConfigJSON(kRetryPolicyJson);
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (options.tls || !options.tls_root_certs_pem.empty() || !options.tls_client_cert_pem.empty()) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = options.tls_root_certs_pem;
      ssl.pem_cert_chain = options.tls_client_cert_pem;
      ssl.pem_private_key = options.tls_client_key_pem;
      credentials = grpc::SslCredentials(ssl);
    }
    channel = grpc::CreateCustomChannel(options.target, credentials, args);
    stub = pb::WorldService::NewStub(channel);
    generic = std::make_unique<grpc::GenericStub>(channel);
  }

  // Metadata and a deadline for a unary call (0: the configured unary timeout).
  void Prepare(grpc::ClientContext* context, double timeout_seconds = 0.0) const {
    if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
    if (timeout_seconds <= 0.0) timeout_seconds = unary_timeout;
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::duration<double>(timeout_seconds)));
  }

  // grpc.health.v1.Health/Check of the whole server; no token needed. `serving`: SERVING.
  Status CheckHealth(grpc::ClientContext* context, bool* serving) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::Slice empty;  // HealthCheckRequest{service: ""}: zero bytes on the wire
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer response;
    std::mutex mu;
    std::condition_variable done;
    bool finished = false;
    grpc::Status result;
    generic->UnaryCall(context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                       &response, [&](grpc::Status s) {
                         std::lock_guard<std::mutex> lock(mu);
                         result = std::move(s);
                         finished = true;
                         done.notify_one();
                       });
    std::unique_lock<std::mutex> lock(mu);
    done.wait(lock, [&] { return finished; });
    *serving = result.ok() && HealthStatus(response) == kHealthServing;
    return FromGrpc(result);
  }

  const std::string token;
  const double unary_timeout;
  const int max_receive;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::WorldService::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;
};

// Actions waiting for the stream's writer thread.
struct WorldClient::Outbox {
  std::mutex mu;
  std::condition_variable ready;
  std::deque<std::pair<uint64_t, Action>> actions;
  bool closed = false;
  int in_flight = 0;  // lockstep: actions written whose chunk has not been done (or rejected)

  void Push(uint64_t seq, Action action) {
    std::lock_guard<std::mutex> lock(mu);
    if (closed) return;
    actions.emplace_back(seq, std::move(action));
    ready.notify_one();
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu);
    closed = true;
    ready.notify_all();
  }
};

// -------------------------------------------------------------------------------------------------
// WorldClient
// -------------------------------------------------------------------------------------------------

WorldClient::WorldClient(ClientOptions options, FrameCallback on_frame, EventCallback on_event)
    : options_(std::move(options)), on_frame_(std::move(on_frame)), on_event_(std::move(on_event)) {
  prompt_ = options_.prompt;
}

WorldClient::~WorldClient() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

void WorldClient::Start() {
  thread_ = std::thread([this] {
    Status status = Run();
    std::lock_guard<std::mutex> lock(mu_);
    thread_status_ = std::move(status);
  });
}

Status WorldClient::Join() {
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  return thread_status_;
}

void WorldClient::Stop() {
  {
    // Under the lock: the context behind cancel_ lives until its CancelScope takes the lock.
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    if (outbox_) outbox_->Close();
    if (cancel_) cancel_();
  }
  wake_.notify_all();
}

std::string WorldClient::session_id() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_id_;
}

bool WorldClient::streaming() const { return streaming_; }

ServerInfo WorldClient::server_info() const {
  std::lock_guard<std::mutex> lock(mu_);
  return info_;
}

uint64_t WorldClient::Send(const Action& action) {
  const uint64_t seq = next_seq_++;
  std::lock_guard<std::mutex> lock(mu_);
  // A session started after a reconnect begins from the latest prompt, not the first one.
  if (action.kind == Action::Kind::kPrompt || action.kind == Action::Kind::kTransition) {
    prompt_ = action.text;
  }
  if (outbox_ && streaming_) {
    outbox_->Push(seq, action);
    return seq;
  }
  if (options_.mode == StreamMode::kFreeRun) pending_.clear();  // only the newest would apply
  if (pending_.size() >= kMaxPendingActions) pending_.pop_front();
  pending_.emplace_back(seq, action);
  return seq;
}

void WorldClient::Emit(Event event) {
  if (on_event_) on_event_(event);
}

bool WorldClient::WaitBackoff(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  return !wake_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stop_.load(); });
}

// Registers `context` so that Stop() can cancel the call it carries; unregisters on destruction.
class WorldClient::CancelScope {
 public:
  CancelScope(WorldClient* client, grpc::ClientContext* context) : client_(client) {
    std::lock_guard<std::mutex> lock(client_->mu_);
    client_->cancel_ = [context] { context->TryCancel(); };
    if (client_->stop_) context->TryCancel();
  }
  ~CancelScope() {
    std::lock_guard<std::mutex> lock(client_->mu_);
    client_->cancel_ = nullptr;
  }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  WorldClient* client_;
};

Status WorldClient::Run() {
  if (!DecoderAvailable(options_.encoding)) {
    Status status;
    internal::FrameDecoder::Create(options_.encoding, options_.pixel_format, &status);
    Emit(MakeEvent(Event::Type::kFatal, status));
    return status;
  }
  if (options_.mode == StreamMode::kFreeRun && options_.auto_advance) {
    Status status = Make(StatusCode::kInvalidArgument,
                         "auto_advance is for lockstep streams; a free-run world advances by itself");
    Emit(MakeEvent(Event::Type::kFatal, status));
    return status;
  }
  int attempt = 0;
  while (!stop_) {
    Status connected = Connect(&attempt);
    if (stop_) break;
    if (!connected.ok()) {
      connected = Explain(std::move(connected));
      Emit(MakeEvent(Event::Type::kFatal, connected));
      return connected;
    }
    attempt = 0;
    Status ended = StreamSession();
    if (stop_) break;
    if (!Retryable(ended.code) || !options_.reconnect) {
      ended = Explain(std::move(ended));
      Emit(MakeEvent(Event::Type::kFatal, ended));
      return ended;
    }
    std::lock_guard<std::mutex> lock(mu_);
    connection_.reset();  // reconnect on a fresh channel
  }
  Emit(MakeEvent(Event::Type::kStopped));
  return Status{};
}

Status WorldClient::Connect(int* attempt) {
  const auto outage_start = Clock::now();
  double backoff = options_.reconnect_min_backoff_seconds;
  while (!stop_) {
    ++*attempt;
    Event connecting = MakeEvent(Event::Type::kConnecting);
    connecting.attempt = *attempt;
    Emit(connecting);
    std::shared_ptr<Connection> conn;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!connection_) {
        connection_ = std::make_shared<Connection>(options_, options_.max_receive_message_bytes);
      }
      conn = connection_;
    }
    bool serving = false;
    Status status;
    {
      grpc::ClientContext context;
      CancelScope scope(this, &context);
      status = conn->CheckHealth(&context, &serving);
    }
    if (serving) {
      pb::GetServerInfoResponse response;
      {
        grpc::ClientContext context;
        CancelScope scope(this, &context);
        conn->Prepare(&context, 10.0);
        status = FromGrpc(conn->stub->GetServerInfo(&context, pb::GetServerInfoRequest{}, &response));
      }
      if (status.ok()) {
        ServerInfo info;
        info.api_version = response.api_version();
        info.server_version = response.server_version();
        info.model_name = response.model().name();
        info.default_width = response.default_width();
        info.default_height = response.default_height();
        info.size_multiple = response.size_multiple();
        info.frames_per_chunk = response.frames_per_chunk();
        info.fps = response.fps();
        info.max_message_bytes = response.max_message_bytes();
        info.auth_required = response.auth_required();
        for (int e : response.encodings()) info.encodings.push_back(static_cast<Encoding>(e));
        const std::string& v = info.api_version;
        if (v.empty() || std::atoi(v.substr(0, v.find('.')).c_str()) != kApiMajorVersion) {
          return Make(StatusCode::kFailedPrecondition,
                      "the server speaks helios API '" + v + "', this client speaks major version " +
                          std::to_string(kApiMajorVersion));
        }
        if (std::find(info.encodings.begin(), info.encodings.end(), options_.encoding) ==
            info.encodings.end()) {
          return Make(StatusCode::kFailedPrecondition,
                      std::string("the server does not offer ") + EncodingName(options_.encoding) +
                          " frames");
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          // The server may send messages up to max_message_bytes: accept as much.
          if (info.max_message_bytes > static_cast<uint64_t>(conn->max_receive) &&
              info.max_message_bytes <= static_cast<uint64_t>(INT32_MAX)) {
            connection_ =
                std::make_shared<Connection>(options_, static_cast<int>(info.max_message_bytes));
          }
          info_ = std::move(info);
        }
        Emit(MakeEvent(Event::Type::kConnected));  // callbacks never run under mu_
        return Status{};
      }
    } else if (status.ok()) {
      status = Make(StatusCode::kUnavailable, "the server is not SERVING yet (loading or warming up)");
    }
    if (stop_) break;
    if (!Retryable(status.code) || status.code == StatusCode::kNotFound) return status;
    if (!options_.reconnect) return status;
    const double waited = std::chrono::duration<double>(Clock::now() - outage_start).count();
    if (options_.reconnect_give_up_seconds > 0 && waited >= options_.reconnect_give_up_seconds) {
      return Make(StatusCode::kUnavailable, "no server at " + options_.target + " after " +
                                                std::to_string(static_cast<int>(waited)) +
                                                " s: " + status.ToString());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      connection_.reset();
    }
    if (!WaitBackoff(backoff)) break;
    backoff = std::min(backoff * 2, options_.reconnect_max_backoff_seconds);
  }
  return Make(StatusCode::kCancelled, "stopped");
}

Status WorldClient::StreamSession() {
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conn = connection_;
  }
  // --- CreateSession and Reset -------------------------------------------------------------------
  std::string session;
  {
    grpc::ClientContext context;
    CancelScope scope(this, &context);
    conn->Prepare(&context);
    pb::CreateSessionRequest request;
    request.set_width(options_.width);
    request.set_height(options_.height);
    pb::CreateSessionResponse response;
    Status s = FromGrpc(conn->stub->CreateSession(&context, request, &response));
    if (!s.ok()) return s;
    session = response.session_id();
  }
  std::string prompt;
  {
    std::lock_guard<std::mutex> lock(mu_);
    session_id_ = session;
    prompt = prompt_;
  }
  // Lost after this point: report the session, so the caller knows the world it showed is gone.
  auto lost = [&](Status why) {
    Event event = MakeEvent(Event::Type::kSessionLost, why);
    event.session_id = session;
    event.message = why.ToString();
    {
      std::lock_guard<std::mutex> lock(mu_);
      session_id_.clear();
    }
    Emit(event);
    return why;
  };
  auto close_quietly = [&] {
    grpc::ClientContext context;
    conn->Prepare(&context, 2.0);
    pb::CloseSessionRequest request;
    request.set_session_id(session);
    pb::CloseSessionResponse response;
    conn->stub->CloseSession(&context, request, &response);
    std::lock_guard<std::mutex> lock(mu_);
    session_id_.clear();
  };
  {
    grpc::ClientContext context;
    CancelScope scope(this, &context);
    conn->Prepare(&context);
    pb::ResetRequest request;
    request.set_session_id(session);
    request.set_prompt(prompt);
    request.set_seed(options_.seed);
    // The Reset chunk's last frame, so the texture fills before the stream's first chunk. H.264
    // needs its stream's decoder state, so that frame comes as JPEG (or RGB24) instead.
    Encoding reset_encoding = options_.encoding;
    if (reset_encoding == Encoding::kH264) {
      reset_encoding = DecoderAvailable(Encoding::kJpeg) ? Encoding::kJpeg : Encoding::kRgb24;
    }
    auto* frames = request.mutable_frames();
    frames->set_selection(options_.deliver_reset_frame ? pb::FRAME_SELECTION_LAST
                                                       : pb::FRAME_SELECTION_NONE);
    frames->set_encoding(static_cast<pb::FrameEncoding>(reset_encoding));
    frames->set_jpeg_quality(options_.jpeg_quality);
    pb::ResetResponse response;
    Status s = FromGrpc(conn->stub->Reset(&context, request, &response));
    if (stop_) {
      close_quietly();
      return Make(StatusCode::kCancelled, "stopped");
    }
    if (!s.ok()) return lost(s);
    for (int i = 0; i < response.chunk().frames_size(); ++i) {
      const pb::Frame& f = response.chunk().frames(i);
      Status made;
      auto decoder = internal::FrameDecoder::Create(reset_encoding, options_.pixel_format, &made);
      Frame frame;
      const auto t0 = Clock::now();
      if (decoder) made = decoder->Decode(f.data(), f.width(), f.height(), true, &frame.pixels);
      if (!made.ok()) return lost(made);
      frame.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      frame.session_id = session;
      frame.chunk_index = f.chunk_index();
      frame.frame_index = f.frame_index();
      frame.index_in_chunk = f.index_in_chunk();
      frame.action_seq = f.action_seq();
      frame.width = f.width();
      frame.height = f.height();
      frame.format = options_.pixel_format;
      frame.encoding = reset_encoding;
      frame.encoded_bytes = f.data().size();
      frame.keyframe = true;
      frame.server_timestamp_ns = f.timestamp_ns();
      frame.received_unix_ns = UnixNanos();
      if (on_frame_) on_frame_(std::move(frame));
    }
  }

  // --- the Stream ---------------------------------------------------------------------------------
  grpc::ClientContext context;
  if (!conn->token.empty()) context.AddMetadata("authorization", "Bearer " + conn->token);
  CancelScope scope(this, &context);
  auto stream = conn->stub->Stream(&context);
  pb::StreamRequest start;
  start.mutable_start()->set_session_id(session);
  start.mutable_start()->set_mode(static_cast<pb::StreamMode>(options_.mode));
  start.mutable_start()->mutable_frames()->set_encoding(
      static_cast<pb::FrameEncoding>(options_.encoding));
  start.mutable_start()->mutable_frames()->set_jpeg_quality(options_.jpeg_quality);
  pb::StreamResponse response;
  if (!stream->Write(start) || !stream->Read(&response)) {
    stream->WritesDone();
    Status s = FromGrpc(stream->Finish());
    if (stop_) {
      close_quietly();
      return Make(StatusCode::kCancelled, "stopped");
    }
    if (s.ok()) s = Make(StatusCode::kUnavailable, "the stream ended before its STARTED event");
    return lost(s);
  }
  if (!response.has_event() || response.event().type() != pb::SESSION_EVENT_TYPE_STARTED) {
    context.TryCancel();
    stream->Finish();
    return lost(Make(StatusCode::kInternal,
                     "expected a STARTED event first, got " + response.ShortDebugString()));
  }

  auto outbox = std::make_shared<Outbox>();
  const bool lockstep = options_.mode == StreamMode::kLockstep;
  std::thread writer([&stream, outbox, lockstep] {
    while (true) {
      std::pair<uint64_t, Action> next;
      {
        std::unique_lock<std::mutex> lock(outbox->mu);
        outbox->ready.wait(lock, [&] { return outbox->closed || !outbox->actions.empty(); });
        if (outbox->closed) return;
        next = std::move(outbox->actions.front());
        outbox->actions.pop_front();
        if (lockstep) ++outbox->in_flight;
      }
      pb::StreamRequest request;
      request.mutable_action()->set_seq(next.first);
      ToProto(next.second, request.mutable_action()->mutable_action());
      if (!stream->Write(request)) return;  // the call is over; the reader sees why
    }
  });
  {
    std::lock_guard<std::mutex> lock(mu_);
    outbox_ = outbox;
    streaming_ = true;
    for (auto& pending : pending_) outbox->Push(pending.first, std::move(pending.second));
    pending_.clear();
    if (stop_) outbox->Close();
  }
  Event started = MakeEvent(Event::Type::kSessionStarted);
  started.session_id = session;
  Emit(started);

  // Lockstep with auto_advance: keep one chunk requested while nothing else is.
  auto advance = [&] {
    if (!lockstep || !options_.auto_advance) return;
    bool idle = false;
    {
      std::lock_guard<std::mutex> lock(outbox->mu);
      idle = outbox->in_flight == 0 && outbox->actions.empty();
    }
    if (idle) outbox->Push(next_seq_++, Action::Continue());
  };
  advance();

  Status decoder_status;
  auto decoder =
      internal::FrameDecoder::Create(options_.encoding, options_.pixel_format, &decoder_status);
  std::string closed_reason;
  Status broken;
  while (stream->Read(&response)) {
    const int64_t received = UnixNanos();
    if (response.has_frame()) {
      pb::Frame* f = response.mutable_frame();
      Frame frame;
      const auto t0 = Clock::now();
      Status s = decoder->Decode(f->data(), f->width(), f->height(), f->keyframe(), &frame.pixels);
      frame.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (!s.ok()) {
        broken = s;
        context.TryCancel();
        break;
      }
      frame.session_id = session;
      frame.chunk_index = f->chunk_index();
      frame.frame_index = f->frame_index();
      frame.index_in_chunk = f->index_in_chunk();
      frame.action_seq = f->action_seq();
      frame.width = f->width();
      frame.height = f->height();
      frame.format = options_.pixel_format;
      frame.encoding = static_cast<Encoding>(f->encoding());
      frame.encoded_bytes = f->data().size();
      frame.keyframe = f->keyframe();
      frame.server_timestamp_ns = f->timestamp_ns();
      frame.received_unix_ns = received;
      if (on_frame_) on_frame_(std::move(frame));
      continue;
    }
    const pb::SessionEvent& e = response.event();
    Event event;
    event.session_id = session;
    event.chunk_index = e.chunk_index();
    event.action_seq = e.action_seq();
    event.dropped_frames = e.dropped_frames();
    event.message = e.message();
    switch (e.type()) {
      case pb::SESSION_EVENT_TYPE_CHUNK_DONE:
        event.type = Event::Type::kChunkDone;
        event.denoise_seconds = e.timings().denoise_seconds();
        event.decode_seconds = e.timings().decode_seconds();
        event.encode_seconds = e.timings().encode_seconds();
        break;
      case pb::SESSION_EVENT_TYPE_FRAMES_DROPPED:
        event.type = Event::Type::kFramesDropped;
        break;
      case pb::SESSION_EVENT_TYPE_ACTION_REJECTED:
        event.type = Event::Type::kActionRejected;
        break;
      case pb::SESSION_EVENT_TYPE_CLOSED:
        closed_reason = e.message().empty() ? "the server closed the session" : e.message();
        continue;  // reported as SESSION_LOST once the call has ended
      default:
        continue;
    }
    if (lockstep && (event.type == Event::Type::kChunkDone ||
                     event.type == Event::Type::kActionRejected)) {
      std::lock_guard<std::mutex> lock(outbox->mu);
      if (outbox->in_flight > 0) --outbox->in_flight;
    }
    Emit(event);
    advance();
  }

  {
    std::lock_guard<std::mutex> lock(mu_);
    streaming_ = false;
    outbox_.reset();
  }
  outbox->Close();
  writer.join();
  stream->WritesDone();
  Status finished = FromGrpc(stream->Finish());
  if (stop_) {
    close_quietly();
    return Make(StatusCode::kCancelled, "stopped");
  }
  if (!broken.ok()) return lost(broken);
  if (!closed_reason.empty()) {
    // A CLOSED event: the session was lost with its engine worker (ABORTED, as the unary calls
    // answer then), or the server is draining (UNAVAILABLE).
    const bool worker_lost = finished.code == StatusCode::kAborted ||
                             closed_reason.find("lost with its engine worker") != std::string::npos;
    return lost(Make(worker_lost ? StatusCode::kAborted : StatusCode::kUnavailable, closed_reason));
  }
  if (finished.ok()) finished = Make(StatusCode::kUnavailable, "the server ended the stream");
  return lost(finished);
}

// -------------------------------------------------------------------------------------------------
// FrameQueue
// -------------------------------------------------------------------------------------------------

FrameQueue::FrameQueue(size_t capacity) : capacity_(std::max<size_t>(1, capacity)) {}

bool FrameQueue::Push(Frame&& frame) {
  std::lock_guard<std::mutex> lock(mu_);
  bool kept_all = true;
  if (frames_.size() >= capacity_) {
    frames_.pop_front();
    ++dropped_;
    kept_all = false;
  }
  frames_.push_back(std::move(frame));
  ready_.notify_one();
  return kept_all;
}

bool FrameQueue::TryPop(Frame* frame) {
  std::lock_guard<std::mutex> lock(mu_);
  if (frames_.empty()) return false;
  *frame = std::move(frames_.front());
  frames_.pop_front();
  return true;
}

bool FrameQueue::PopLatest(Frame* frame) {
  std::lock_guard<std::mutex> lock(mu_);
  if (frames_.empty()) return false;
  dropped_ += frames_.size() - 1;
  *frame = std::move(frames_.back());
  frames_.clear();
  return true;
}

bool FrameQueue::WaitPop(Frame* frame, double timeout_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  ready_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                  [this] { return closed_ || !frames_.empty(); });
  if (frames_.empty()) return false;
  *frame = std::move(frames_.front());
  frames_.pop_front();
  return true;
}

void FrameQueue::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  ready_.notify_all();
}

size_t FrameQueue::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return frames_.size();
}

uint64_t FrameQueue::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

}  // namespace helios_world
