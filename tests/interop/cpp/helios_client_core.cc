// helios_client_core: the grpc++ side of the client (see helios_client_core.h).
//
// Everything grpc- and protobuf-specific stays in this file: conversion between the generated
// helios.v1 messages and the plain structs of the header, the channel and its options, deadlines
// and the authorization metadata.
#include "helios_client_core.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "helios/v1/world.grpc.pb.h"
#include "retry_policy.h"

namespace helios_client {

namespace pb = ::helios::v1;

// -------------------------------------------------------------------------------------------------
// Names and small conversions
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

const char* FrameEncodingName(FrameEncoding encoding) {
  switch (encoding) {
    case FrameEncoding::kUnspecified: return "UNSPECIFIED";
    case FrameEncoding::kRgb24: return "RGB24";
    case FrameEncoding::kJpeg: return "JPEG";
    case FrameEncoding::kH264: return "H264";
  }
  return "UNSPECIFIED";
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

namespace {

Status FromGrpc(const grpc::Status& s) {
  return Status{static_cast<StatusCode>(s.error_code()), s.error_message()};
}

Status Local(StatusCode code, std::string message) { return Status{code, std::move(message)}; }

void ToProto(const Action& a, pb::Action* out) {
  switch (a.kind) {
    case Action::Kind::kContinue:
      break;  // no oneof member set: "continue as before"
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
  }
}

void ToProto(const FrameOptions& f, pb::FrameOptions* out) {
  out->set_encoding(static_cast<pb::FrameEncoding>(f.encoding));
  out->set_selection(static_cast<pb::FrameSelection>(f.selection));
  out->set_jpeg_quality(f.jpeg_quality);
}

// Moves the frame bytes out of `in` (no copy of the pixels).
void FromProto(pb::Frame* in, Frame* out) {
  out->session_id = in->session_id();
  out->chunk_index = in->chunk_index();
  out->frame_index = in->frame_index();
  out->index_in_chunk = in->index_in_chunk();
  out->timestamp_ns = in->timestamp_ns();
  out->width = in->width();
  out->height = in->height();
  out->encoding = static_cast<FrameEncoding>(in->encoding());
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
  out->frames.clear();
  out->frames.resize(static_cast<size_t>(in->frames_size()));
  for (int i = 0; i < in->frames_size(); ++i) FromProto(in->mutable_frames(i), &out->frames[i]);
}

StreamEvent FromProto(const pb::SessionEvent& in) {
  StreamEvent e;
  e.type = static_cast<StreamEvent::Type>(in.type());
  e.session_id = in.session_id();
  e.chunk_index = in.chunk_index();
  e.action_seq = in.action_seq();
  e.dropped_frames = in.dropped_frames();
  e.message = in.message();
  return e;
}

// -------------------------------------------------------------------------------------------------
// Stream
// -------------------------------------------------------------------------------------------------

class GrpcWorldStream final : public WorldStream {
 public:
  GrpcWorldStream(pb::WorldService::Stub* stub, const std::string& token) {
    if (!token.empty()) context_.AddMetadata("authorization", "Bearer " + token);
    stream_ = stub->Stream(&context_);
  }

  ~GrpcWorldStream() override {
    if (!finished_) {
      context_.TryCancel();
      Finish();
    }
  }

  // Sends the StreamStart and waits for STARTED.
  Status Start(const std::string& session_id, StreamMode mode, FrameEncoding encoding) {
    pb::StreamRequest request;
    auto* start = request.mutable_start();
    start->set_session_id(session_id);
    start->set_mode(static_cast<pb::StreamMode>(mode));
    start->mutable_frames()->set_encoding(static_cast<pb::FrameEncoding>(encoding));
    pb::StreamResponse response;
    if (!stream_->Write(request) || !stream_->Read(&response)) {
      Status status = Finish();
      if (status.ok()) {
        return Local(StatusCode::kInternal, "the stream ended before its STARTED event");
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

  Status ReadChunk(const FrameCallback& on_frame, const EventCallback& on_event,
                   uint64_t* chunk_index) override {
    pb::StreamResponse response;
    Frame frame;
    while (stream_->Read(&response)) {
      if (response.has_frame()) {
        FromProto(response.mutable_frame(), &frame);
        if (on_frame && !on_frame(frame)) {
          Cancel();
          return Local(StatusCode::kCancelled, "stopped by the frame callback");
        }
        continue;
      }
      StreamEvent event = FromProto(response.event());
      if (event.type == StreamEvent::Type::kChunkDone) {
        if (chunk_index != nullptr) *chunk_index = event.chunk_index;
        return Status{};
      }
      if (on_event) on_event(event);
      if (event.type == StreamEvent::Type::kClosed) break;
    }
    Status final_status = Finish();
    if (final_status.ok()) {
      return Local(StatusCode::kAborted, "the stream ended before the chunk was done");
    }
    return final_status;
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

  void Cancel() override { context_.TryCancel(); }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<pb::StreamRequest, pb::StreamResponse>> stream_;
  bool finished_ = false;
  Status final_;
};

}  // namespace

// -------------------------------------------------------------------------------------------------
// Client
// -------------------------------------------------------------------------------------------------

struct Client::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::WorldService::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  std::mutex seq_mu;
  std::map<std::string, uint64_t> last_seq;  // per session: the highest action_seq sent

  // The action_seq of a Step: `given`, or the session's next number.
  uint64_t NextSeq(const std::string& session_id, uint64_t given) {
    std::lock_guard<std::mutex> lock(seq_mu);
    uint64_t& last = last_seq[session_id];
    const uint64_t seq = given != 0 ? given : last + 1;
    last = std::max(last, seq);
    return seq;
  }

  // A fresh context per unary call: metadata plus deadline (0: the configured unary timeout).
  void Prepare(grpc::ClientContext* context, double timeout_seconds = 0.0) const {
    if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
    if (timeout_seconds <= 0.0) timeout_seconds = options.unary_timeout_seconds;
    auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::duration<double>(timeout_seconds));
    context->set_deadline(std::chrono::system_clock::now() + timeout);
  }

  Status GetServerInfo(double timeout_seconds, ServerInfo* info);
};

Client::Client(ClientOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(impl_->options.max_receive_message_bytes);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, impl_->options.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, impl_->options.min_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, impl_->options.max_reconnect_backoff_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // keep pinging an idle connection
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, impl_->options.retries ? 1 : 0);
  if (impl_->options.retries) args.SetServiceConfigJSON(kRetryPolicyJson);
  const ClientOptions& o = impl_->options;
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
  impl_->health = grpc::health::v1::Health::NewStub(impl_->channel);
}

Client::~Client() = default;

const ClientOptions& Client::options() const { return impl_->options; }

Status Client::GetServerInfo(ServerInfo* info) { return impl_->GetServerInfo(0.0, info); }

Status Client::Impl::GetServerInfo(double timeout_seconds, ServerInfo* info) {
  grpc::ClientContext context;
  Prepare(&context, timeout_seconds);
  pb::GetServerInfoResponse response;
  grpc::Status s = stub->GetServerInfo(&context, pb::GetServerInfoRequest{}, &response);
  if (!s.ok()) return FromGrpc(s);
  info->api_version = response.api_version();
  info->server_version = response.server_version();
  info->model_name = response.model().name();
  info->sampler = response.model().sampler();
  info->default_width = response.default_width();
  info->default_height = response.default_height();
  info->size_multiple = response.size_multiple();
  info->max_width = response.max_width();
  info->max_height = response.max_height();
  info->encodings.clear();
  for (int e : response.encodings()) info->encodings.push_back(static_cast<FrameEncoding>(e));
  info->frames_per_chunk = response.frames_per_chunk();
  info->fps = response.fps();
  info->max_sessions = response.max_sessions();
  info->max_message_bytes = response.max_message_bytes();
  info->auth_required = response.auth_required();
  const std::string& v = info->api_version;
  const int major = std::atoi(v.substr(0, v.find('.')).c_str());
  if (v.empty() || major != kApiMajorVersion) {
    return Local(StatusCode::kFailedPrecondition,
                 "server speaks helios API '" + v + "', this client speaks major version " +
                     std::to_string(kApiMajorVersion));
  }
  return Status{};
}

Status Client::CheckHealth(bool* serving) {
  grpc::ClientContext context;
  // Health is exempt from auth; a short deadline, as a readiness probe should have.
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = impl_->health->Check(&context, grpc::health::v1::HealthCheckRequest{}, &response);
  *serving = s.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  return FromGrpc(s);
}

// Written by hand, not in the retry policy: this waits for a state (health SERVING), which a
// service config cannot express; each probe is one call.
Status Client::WaitForServer(double timeout_seconds, ServerInfo* info, int* attempts) {
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
      status = impl_->GetServerInfo(0.0, info);
      break;
    }
    if (status.ok()) status = Local(StatusCode::kUnavailable, "the server is not SERVING yet");
    const bool retryable = status.code == StatusCode::kUnavailable ||
                           status.code == StatusCode::kDeadlineExceeded;
    if (!retryable || Clock::now() + backoff >= give_up) break;
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
  if (attempts != nullptr) *attempts = calls;
  return status;
}

Status Client::CreateSession(uint32_t width, uint32_t height, std::string* session_id,
                             uint32_t* out_width, uint32_t* out_height) {
  grpc::ClientContext context;
  impl_->Prepare(&context);
  pb::CreateSessionRequest request;
  request.set_width(width);
  request.set_height(height);
  pb::CreateSessionResponse response;
  grpc::Status s = impl_->stub->CreateSession(&context, request, &response);
  if (!s.ok()) return FromGrpc(s);
  *session_id = response.session_id();
  if (out_width != nullptr) *out_width = response.width();
  if (out_height != nullptr) *out_height = response.height();
  return Status{};
}

Status Client::Reset(const std::string& session_id, const std::string& prompt, uint64_t seed,
                     const FrameOptions& frames, Chunk* chunk) {
  grpc::ClientContext context;
  impl_->Prepare(&context);
  pb::ResetRequest request;
  request.set_session_id(session_id);
  request.set_prompt(prompt);
  request.set_seed(seed);
  ToProto(frames, request.mutable_frames());
  pb::ResetResponse response;
  grpc::Status s = impl_->stub->Reset(&context, request, &response);
  if (!s.ok()) return FromGrpc(s);
  FromProto(response.mutable_chunk(), chunk);
  return Status{};
}

Status Client::Step(const std::string& session_id, const Action& action, uint64_t action_seq,
                    const FrameOptions& frames, Chunk* chunk) {
  grpc::ClientContext context;
  impl_->Prepare(&context);
  pb::StepRequest request;
  request.set_session_id(session_id);
  ToProto(action, request.mutable_action());
  ToProto(frames, request.mutable_frames());
  request.set_action_seq(impl_->NextSeq(session_id, action_seq));
  pb::StepResponse response;
  grpc::Status s = impl_->stub->Step(&context, request, &response);
  if (!s.ok()) return FromGrpc(s);
  FromProto(response.mutable_chunk(), chunk);
  return Status{};
}

Status Client::CloseSession(const std::string& session_id) {
  grpc::ClientContext context;
  impl_->Prepare(&context);
  pb::CloseSessionRequest request;
  request.set_session_id(session_id);
  pb::CloseSessionResponse response;
  Status status = FromGrpc(impl_->stub->CloseSession(&context, request, &response));
  if (status.ok()) {
    std::lock_guard<std::mutex> lock(impl_->seq_mu);
    impl_->last_seq.erase(session_id);
  }
  return status;
}

Status Client::OpenStream(const std::string& session_id, StreamMode mode, FrameEncoding encoding,
                          std::unique_ptr<WorldStream>* stream) {
  auto s = std::make_unique<GrpcWorldStream>(impl_->stub.get(), impl_->options.token);
  Status status = s->Start(session_id, mode, encoding);
  if (!status.ok()) return status;
  *stream = std::move(s);
  return Status{};
}

}  // namespace helios_client
