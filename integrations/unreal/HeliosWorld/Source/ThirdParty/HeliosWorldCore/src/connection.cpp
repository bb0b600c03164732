// helios_world::Connection: the grpc++ side of the calls (see include/helios_world/connection.h).
//
// Everything grpc- and protobuf-specific of the client core is in this file: the channel and its
// arguments, credentials, deadlines and the authorization metadata, and the conversion between the
// generated helios.v1 messages and the plain structs of the header.
#include "helios_world/connection.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "helios/v1/world.grpc.pb.h"
#include "retry_policy.h"

namespace helios_world {

namespace pb = ::helios::v1;

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
    case Encoding::kUnspecified: return "unspecified";
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

const char* StreamEventTypeName(StreamEvent::Type type) {
  switch (type) {
    case StreamEvent::Type::kUnspecified: return "UNSPECIFIED";
    case StreamEvent::Type::kStarted: return "STARTED";
    case StreamEvent::Type::kChunkDone: return "CHUNK_DONE";
    case StreamEvent::Type::kFramesDropped: return "FRAMES_DROPPED";
    case StreamEvent::Type::kActionRejected: return "ACTION_REJECTED";
    case StreamEvent::Type::kClosed: return "CLOSED";
  }
  return "UNSPECIFIED";
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

Action Action::Move(std::string move, std::string pan) {
  Action a;
  a.kind = Kind::kMove;
  a.move = std::move(move);
  a.pan = std::move(pan);
  return a;
}

namespace {
std::string KeyName(const std::string& key) {
  std::string k;
  for (char c : key) k += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return k.rfind("arrow", 0) == 0 ? k.substr(5) : k;  // "ArrowUp" is "up", as the server reads it
}
}  // namespace

bool ActionSpace::HasKey(const std::string& key) const {
  const std::string k = KeyName(key);
  return std::find(keys.begin(), keys.end(), k) != keys.end();
}

bool ActionSpace::HasAxis(const std::string& field) const {
  return std::find(axes.begin(), axes.end(), field) != axes.end();
}

Status WorldStream::ReadChunk(const EncodedFrameCallback& on_frame,
                              const StreamEventCallback& on_event, uint64_t* chunk_index) {
  StreamMessage message;
  while (Read(&message)) {
    if (message.is_frame) {
      if (on_frame && !on_frame(message.frame)) {
        Cancel();
        return Status{StatusCode::kCancelled, "stopped by the frame callback"};
      }
      continue;
    }
    const StreamEvent& event = message.event;
    if (event.type == StreamEvent::Type::kChunkDone) {
      if (chunk_index != nullptr) *chunk_index = event.chunk_index;
      return Status{};
    }
    if (on_event) on_event(event);
    if (event.type == StreamEvent::Type::kClosed) break;
  }
  Status final_status = Finish();
  if (final_status.ok()) {
    return Status{StatusCode::kAborted, "the stream ended before the chunk was done"};
  }
  return final_status;
}

namespace {

Status FromGrpc(const grpc::Status& s) {
  return Status{static_cast<StatusCode>(s.error_code()), s.error_message()};
}

Status Local(StatusCode code, std::string message) { return Status{code, std::move(message)}; }

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
    case Action::Kind::kBlend: {
      auto* b = out->mutable_blend();
      for (const auto& [text, weight] : a.blend) {
        auto* p = b->add_prompts();
        p->set_text(text);
        p->set_weight(weight);
      }
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
    case Action::Kind::kMove: {
      auto* m = out->mutable_move();
      m->set_move(a.move);
      m->set_pan(a.pan);
      break;
    }
  }
}

void ToProto(const FrameOptions& f, pb::FrameOptions* out) {
  out->set_encoding(static_cast<pb::FrameEncoding>(f.encoding));
  out->set_selection(static_cast<pb::FrameSelection>(f.selection));
  out->set_jpeg_quality(f.jpeg_quality);
}

// Moves the frame bytes out of `in` (no copy of the pixels).
void FromProto(pb::Frame* in, EncodedFrame* out) {
  out->session_id = in->session_id();
  out->chunk_index = in->chunk_index();
  out->frame_index = in->frame_index();
  out->index_in_chunk = in->index_in_chunk();
  out->timestamp_ns = in->timestamp_ns();
  out->width = in->width();
  out->height = in->height();
  out->encoding = static_cast<Encoding>(in->encoding());
  out->data.clear();
  out->data.swap(*in->mutable_data());
  out->keyframe = in->keyframe();
  out->action_seq = in->action_seq();
}

void FromProto(pb::Chunk* in, Chunk* out) {
  out->session_id = in->session_id();
  out->chunk_index = in->chunk_index();
  out->denoise_seconds = in->timings().denoise_seconds();
  out->decode_seconds = in->timings().decode_seconds();
  out->encode_seconds = in->timings().encode_seconds();
  out->frames.clear();
  out->frames.resize(static_cast<size_t>(in->frames_size()));
  for (int i = 0; i < in->frames_size(); ++i) FromProto(in->mutable_frames(i), &out->frames[i]);
}

void FromProto(const pb::SessionEvent& in, StreamEvent* e) {
  e->type = static_cast<StreamEvent::Type>(in.type());
  e->session_id = in.session_id();
  e->chunk_index = in.chunk_index();
  e->action_seq = in.action_seq();
  e->dropped_frames = in.dropped_frames();
  e->message = in.message();
  e->denoise_seconds = in.timings().denoise_seconds();
  e->decode_seconds = in.timings().decode_seconds();
  e->encode_seconds = in.timings().encode_seconds();
}

// Reads field 1 (ServingStatus, a varint) of a grpc.health.v1.HealthCheckResponse.
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

constexpr int kHealthServing = 1;

}  // namespace

// -------------------------------------------------------------------------------------------------
// Connection state and its calls in flight
// -------------------------------------------------------------------------------------------------

namespace internal {

struct ConnectionState {
  ConnectionOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::WorldService::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;

  std::mutex mu;  // guards the fields below
  std::set<grpc::ClientContext*> live;
  bool cancelled = false;
  std::map<std::string, uint64_t> last_seq;  // per session: the highest action_seq sent

  // The action_seq of a Step: `given`, or the session's next number.
  uint64_t NextSeq(const std::string& session_id, uint64_t given) {
    std::lock_guard<std::mutex> lock(mu);
    uint64_t& last = last_seq[session_id];
    const uint64_t seq = given != 0 ? given : last + 1;
    last = std::max(last, seq);
    return seq;
  }

  // Metadata and a deadline for a unary call (0: the configured unary timeout).
  void Prepare(grpc::ClientContext* context, double timeout_seconds = 0.0) const {
    if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
    if (timeout_seconds <= 0.0) timeout_seconds = options.unary_timeout_seconds;
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::duration<double>(timeout_seconds)));
  }

  // A context registered for Cancel() while the call runs. grpc applies a TryCancel made before the
  // call starts once it starts, so a cancelled connection's new calls end at once.
  class Call {
   public:
    explicit Call(ConnectionState* impl) : impl_(impl) {
      std::lock_guard<std::mutex> lock(impl_->mu);
      impl_->live.insert(&context);
      if (impl_->cancelled) context.TryCancel();
    }
    ~Call() {
      std::lock_guard<std::mutex> lock(impl_->mu);
      impl_->live.erase(&context);
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;

    grpc::ClientContext context;

   private:
    ConnectionState* impl_;
  };
};

}  // namespace internal

using internal::ConnectionState;

namespace {

class GrpcWorldStream final : public WorldStream {
 public:
  GrpcWorldStream(std::shared_ptr<ConnectionState> impl)
      : impl_(std::move(impl)), call_(impl_.get()) {
    if (!impl_->options.token.empty()) {
      call_.context.AddMetadata("authorization", "Bearer " + impl_->options.token);
    }
    stream_ = impl_->stub->Stream(&call_.context);
  }

  ~GrpcWorldStream() override {
    if (!finished_) {
      call_.context.TryCancel();
      Finish();
    }
  }

  // Sends the StreamStart and waits for STARTED.
  Status Start(const std::string& session_id, StreamMode mode, const FrameOptions& frames) {
    pb::StreamRequest request;
    auto* start = request.mutable_start();
    start->set_session_id(session_id);
    start->set_mode(static_cast<pb::StreamMode>(mode));
    start->mutable_frames()->set_encoding(static_cast<pb::FrameEncoding>(frames.encoding));
    start->mutable_frames()->set_jpeg_quality(frames.jpeg_quality);
    pb::StreamResponse response;
    if (!stream_->Write(request) || !stream_->Read(&response)) {
      Status status = Finish();
      if (status.ok()) {
        return Local(StatusCode::kUnavailable, "the stream ended before its STARTED event");
      }
      return status;
    }
    if (!response.has_event() || response.event().type() != pb::SESSION_EVENT_TYPE_STARTED) {
      Cancel();
      Finish();
      return Local(StatusCode::kInternal,
                   "expected a STARTED event as the first stream message, got: " +
                       response.ShortDebugString());
    }
    return Status{};
  }

  bool SendAction(uint64_t seq, const Action& action) override {
    pb::StreamRequest request;
    request.mutable_action()->set_seq(seq);
    ToProto(action, request.mutable_action()->mutable_action());
    return stream_->Write(request);
  }

  bool Read(StreamMessage* message) override {
    if (finished_ || !stream_->Read(&response_)) return false;
    message->is_frame = response_.has_frame();
    if (message->is_frame) {
      FromProto(response_.mutable_frame(), &message->frame);
    } else {
      FromProto(response_.event(), &message->event);
    }
    return true;
  }

  Status Finish() override {
    if (finished_) return final_;
    finished_ = true;
    stream_->WritesDone();
    pb::StreamResponse drain;
    while (stream_->Read(&drain)) {
    }
    final_ = FromGrpc(stream_->Finish());
    return final_;
  }

  void Cancel() override { call_.context.TryCancel(); }

 private:
  std::shared_ptr<ConnectionState> impl_;  // the stub outlives the call
  ConnectionState::Call call_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::StreamRequest, pb::StreamResponse>> stream_;
  pb::StreamResponse response_;
  bool finished_ = false;
  Status final_;
};

}  // namespace

// -------------------------------------------------------------------------------------------------
// Connection
// -------------------------------------------------------------------------------------------------

Connection::Connection(ConnectionOptions options) : impl_(std::make_shared<ConnectionState>()) {
  impl_->options = std::move(options);
  const ConnectionOptions& o = impl_->options;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(o.max_receive_message_bytes);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, o.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, o.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, o.max_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // keep pinging an idle connection
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, o.retries ? 1 : 0);
  if (o.retries) args.SetServiceConfigJSON(kRetryPolicyJson);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (o.tls || !o.tls_root_certs_pem.empty() || !o.tls_client_cert_pem.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = o.tls_root_certs_pem;
    ssl.pem_cert_chain = o.tls_client_cert_pem;
    ssl.pem_private_key = o.tls_client_key_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  impl_->channel = grpc::CreateCustomChannel(o.target, credentials, args);
  impl_->stub = pb::WorldService::NewStub(impl_->channel);
  impl_->generic = std::make_unique<grpc::GenericStub>(impl_->channel);
}

Connection::~Connection() = default;

const ConnectionOptions& Connection::options() const { return impl_->options; }

void Connection::Cancel() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->cancelled = true;
  for (grpc::ClientContext* context : impl_->live) context->TryCancel();
}

bool Connection::cancelled() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->cancelled;
}

Status Connection::GetServerInfo(ServerInfo* info, double timeout_seconds) {
  ConnectionState::Call call(impl_.get());
  impl_->Prepare(&call.context, timeout_seconds);
  pb::GetServerInfoResponse response;
  grpc::Status s = impl_->stub->GetServerInfo(&call.context, pb::GetServerInfoRequest{}, &response);
  if (!s.ok()) return FromGrpc(s);
  *info = ServerInfo{};
  info->api_version = response.api_version();
  info->server_version = response.server_version();
  info->model_name = response.model().name();
  info->sampler = response.model().sampler();
  info->seam_blend_frames = response.model().seam_blend_frames();
  info->has_actions = response.model().has_actions();
  const auto& space = response.model().actions();
  info->actions.keys.assign(space.keys().begin(), space.keys().end());
  info->actions.axes.assign(space.axes().begin(), space.axes().end());
  info->actions.moves.assign(space.moves().begin(), space.moves().end());
  info->actions.pans.assign(space.pans().begin(), space.pans().end());
  info->actions.prompts.assign(space.prompts().begin(), space.prompts().end());
  info->default_width = response.default_width();
  info->default_height = response.default_height();
  info->size_multiple = response.size_multiple();
  info->max_width = response.max_width();
  info->max_height = response.max_height();
  for (int e : response.encodings()) info->encodings.push_back(static_cast<Encoding>(e));
  info->frames_per_chunk = response.frames_per_chunk();
  info->fps = response.fps();
  info->max_sessions = response.max_sessions();
  info->max_message_bytes = response.max_message_bytes();
  info->auth_required = response.auth_required();
  const std::string& v = info->api_version;
  if (v.empty() || std::atoi(v.substr(0, v.find('.')).c_str()) != kApiMajorVersion) {
    return Local(StatusCode::kFailedPrecondition,
                 "the server speaks helios API '" + v + "', this client speaks major version " +
                     std::to_string(kApiMajorVersion));
  }
  return Status{};
}

Status Connection::CheckHealth(bool* serving) {
  ConnectionState::Call call(impl_.get());
  // Health is exempt from auth; a short deadline, as a readiness probe should have.
  call.context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::Slice empty;  // HealthCheckRequest{service: ""}: zero bytes on the wire
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  std::mutex mu;
  std::condition_variable done;
  bool finished = false;
  grpc::Status result;
  impl_->generic->UnaryCall(&call.context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                            &request, &response, [&](grpc::Status s) {
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

// Written by hand, not in the retry policy: this waits for a state (health SERVING), which a
// service config cannot express; each probe is one call.
Status Connection::WaitForServer(double timeout_seconds, ServerInfo* info, int* attempts) {
  using Clock = std::chrono::steady_clock;
  const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(timeout_seconds));
  auto backoff = std::chrono::milliseconds(200);
  int calls = 0;
  Status status;
  while (true) {
    ++calls;
    bool serving = false;
    status = CheckHealth(&serving);
    if (serving) {
      status = GetServerInfo(info);
      break;
    }
    if (status.ok()) status = Local(StatusCode::kUnavailable, "the server is not SERVING yet");
    const bool retryable = status.code == StatusCode::kUnavailable ||
                           status.code == StatusCode::kDeadlineExceeded;
    if (!retryable || cancelled() || Clock::now() + backoff >= give_up) break;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
  if (attempts != nullptr) *attempts = calls;
  return status;
}

Status Connection::CreateSession(uint32_t width, uint32_t height, std::string* session_id,
                                 uint32_t* out_width, uint32_t* out_height) {
  ConnectionState::Call call(impl_.get());
  impl_->Prepare(&call.context);
  pb::CreateSessionRequest request;
  request.set_width(width);
  request.set_height(height);
  pb::CreateSessionResponse response;
  grpc::Status s = impl_->stub->CreateSession(&call.context, request, &response);
  if (!s.ok()) return FromGrpc(s);
  *session_id = response.session_id();
  if (out_width != nullptr) *out_width = response.width();
  if (out_height != nullptr) *out_height = response.height();
  return Status{};
}

Status Connection::Reset(const std::string& session_id, const std::string& prompt, uint64_t seed,
                         const FrameOptions& frames, Chunk* chunk) {
  ConnectionState::Call call(impl_.get());
  impl_->Prepare(&call.context);
  pb::ResetRequest request;
  request.set_session_id(session_id);
  request.set_prompt(prompt);
  request.set_seed(seed);
  ToProto(frames, request.mutable_frames());
  pb::ResetResponse response;
  grpc::Status s = impl_->stub->Reset(&call.context, request, &response);
  if (!s.ok()) return FromGrpc(s);
  FromProto(response.mutable_chunk(), chunk);
  return Status{};
}

Status Connection::Step(const std::string& session_id, const Action& action, uint64_t action_seq,
                        const FrameOptions& frames, Chunk* chunk) {
  ConnectionState::Call call(impl_.get());
  impl_->Prepare(&call.context);
  pb::StepRequest request;
  request.set_session_id(session_id);
  ToProto(action, request.mutable_action());
  ToProto(frames, request.mutable_frames());
  request.set_action_seq(impl_->NextSeq(session_id, action_seq));
  pb::StepResponse response;
  grpc::Status s = impl_->stub->Step(&call.context, request, &response);
  if (!s.ok()) return FromGrpc(s);
  FromProto(response.mutable_chunk(), chunk);
  return Status{};
}

Status Connection::CloseSession(const std::string& session_id, double timeout_seconds) {
  ConnectionState::Call call(impl_.get());
  impl_->Prepare(&call.context, timeout_seconds);
  pb::CloseSessionRequest request;
  request.set_session_id(session_id);
  pb::CloseSessionResponse response;
  Status status = FromGrpc(impl_->stub->CloseSession(&call.context, request, &response));
  if (status.ok()) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->last_seq.erase(session_id);
  }
  return status;
}

Status Connection::OpenStream(const std::string& session_id, StreamMode mode,
                              const FrameOptions& frames, std::unique_ptr<WorldStream>* stream) {
  auto s = std::make_unique<GrpcWorldStream>(impl_);
  Status status = s->Start(session_id, mode, frames);
  if (!status.ok()) return status;
  *stream = std::move(s);
  return Status{};
}

}  // namespace helios_world
