// helios_client_core: a small synchronous C++17 client of helios.v1.WorldService.
//
// This is the part an engine plugin (an Unreal module on an FRunnable worker thread, say) would
// reuse as is: connect with a token, TLS and a message-size limit, handshake, create a session,
// reset, step, stream chunks frame by frame, close. Retries are grpc's own, from the service config
// every helios client shares (retry_policy.h): UNAVAILABLE on GetServerInfo, Reset, Step and
// CloseSession only. kAborted means the session was lost with its engine worker: it is never
// retried; create a new session. Its public types are plain C++ (no grpc, protobuf or
// engine headers), as TurboLink does, so a plugin's public headers stay free of third-party
// includes; grpc++ and the generated stubs are used only inside helios_client_core.cc.
//
// Threading: every call blocks the calling thread. A Client may be shared by threads (grpc stubs
// are thread-safe); a WorldStream belongs to one thread, except Cancel(), which any thread may call.
// Contract: proto/helios/v1/world.proto.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace helios_client {

// gRPC status codes, numbered as in grpc/status.h (the wire values).
enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// "OK", "NOT_FOUND", ... (the canonical upper-case names).
const char* StatusCodeName(StatusCode code);

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  bool ok() const { return code == StatusCode::kOk; }
  // "NOT_FOUND: unknown session 'x'".
  std::string ToString() const;
};

enum class FrameEncoding : int { kUnspecified = 0, kRgb24 = 1, kJpeg = 2, kH264 = 3 };
enum class FrameSelection : int { kUnspecified = 0, kAll = 1, kLast = 2, kNone = 3 };
enum class StreamMode : int { kUnspecified = 0, kLockstep = 1, kFreeRun = 2 };

const char* FrameEncodingName(FrameEncoding encoding);

struct ClientOptions {
  // "host:port" (any grpc target string).
  std::string target;
  // Sent as `authorization: Bearer <token>` on every call; empty sends no authorization header.
  std::string token;
  // Receive limit; grpc's default (4 MiB) is below one 1080p RGB24 frame.
  int max_receive_message_bytes = 64 << 20;
  // Deadline of every unary call. Stream reads have none (a game streams for hours).
  double unary_timeout_seconds = 60.0;
  // Reconnect backoff of the channel. grpc's defaults (1 s growing to 120 s) are too slow for a
  // game waiting for a restarted local server.
  int min_reconnect_backoff_ms = 200;
  int max_reconnect_backoff_ms = 2000;
  // grpc's retries per the shared policy (retry_policy.h); false: every call is tried once.
  bool retries = true;
  // TLS: on when `tls` is true or any PEM below is given (`helios serve --tls-cert ...`). Empty
  // roots: grpc's default roots verify the server.
  bool tls = false;
  std::string tls_root_certs_pem;
  // Mutual TLS (`helios serve --tls-client-ca`): this client's certificate chain and private key.
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
};

struct ServerInfo {
  std::string api_version;  // "MAJOR.MINOR"
  std::string server_version;
  std::string model_name;
  std::string sampler;
  uint32_t default_width = 0;
  uint32_t default_height = 0;
  uint32_t size_multiple = 0;
  uint32_t max_width = 0;
  uint32_t max_height = 0;
  std::vector<FrameEncoding> encodings;
  uint32_t frames_per_chunk = 0;
  uint32_t fps = 0;
  uint32_t max_sessions = 0;
  uint64_t max_message_bytes = 0;
  bool auth_required = false;
};

// One decoded frame. `data` holds the frame's bytes: RGB24 rows top to bottom (width * height * 3
// bytes), one JPEG, or one H.264 access unit.
struct Frame {
  std::string session_id;
  uint64_t chunk_index = 0;
  uint64_t frame_index = 0;
  uint32_t index_in_chunk = 0;
  int64_t timestamp_ns = 0;
  uint32_t width = 0;
  uint32_t height = 0;
  FrameEncoding encoding = FrameEncoding::kUnspecified;
  std::string data;
  bool keyframe = false;
  uint64_t action_seq = 0;
};

struct Chunk {
  std::string session_id;
  uint64_t chunk_index = 0;
  std::vector<Frame> frames;
  double denoise_seconds = 0.0;
  double decode_seconds = 0.0;
};

struct ControlInput {
  std::vector<std::string> keys;  // w a s d space shift
  float mouse_dx = 0, mouse_dy = 0;
  float camera_yaw = 0, camera_pitch = 0, camera_zoom = 0;
};

// What a step does to the world. The default (kContinue) leaves the conditioning as it is.
struct Action {
  enum class Kind { kContinue, kPrompt, kBlend, kTransition, kControl };
  Kind kind = Kind::kContinue;
  std::string text;                                    // kPrompt, kTransition
  uint32_t transition_chunks = 0;                      // kTransition: 1..64, 0 = server default
  std::vector<std::pair<std::string, float>> blend;    // kBlend: (prompt, weight >= 0)
  ControlInput control;                                // kControl

  static Action Continue() { return Action{}; }
  static Action Prompt(std::string text);
  static Action Transition(std::string text, uint32_t chunks);
  static Action Control(ControlInput control);
};

struct FrameOptions {
  FrameEncoding encoding = FrameEncoding::kRgb24;
  FrameSelection selection = FrameSelection::kAll;
  uint32_t jpeg_quality = 0;  // 0: server default
};

// Session events of a stream, mirroring helios.v1.SessionEventType.
struct StreamEvent {
  enum class Type : int {
    kUnspecified = 0,
    kStarted = 1,
    kChunkDone = 2,
    kFramesDropped = 3,
    kActionRejected = 4,
    kClosed = 5,
  };
  Type type = Type::kUnspecified;
  std::string session_id;
  uint64_t chunk_index = 0;
  uint64_t action_seq = 0;
  uint64_t dropped_frames = 0;
  std::string message;
};

const char* StreamEventTypeName(StreamEvent::Type type);

// Called once per streamed frame, on the thread that reads the stream. Move `frame.data` out if
// it must outlive the call (e.g. to post it to a game thread). Return false to stop reading.
using FrameCallback = std::function<bool(Frame& frame)>;
// Called for every event other than STARTED and CHUNK_DONE (dropped frames, rejected actions...).
using EventCallback = std::function<void(const StreamEvent& event)>;

// One Stream call (helios.v1.WorldService/Stream) attached to one session.
class WorldStream {
 public:
  virtual ~WorldStream() = default;
  // Send an action; in lockstep mode every action produces one chunk. False: the stream is broken
  // (Finish() says why).
  virtual bool SendAction(uint64_t seq, const Action& action) = 0;
  // Read frames until the next CHUNK_DONE; `chunk_index` (optional) receives its index. Returns a
  // non-OK status if the stream ended or broke first, or the callback asked to stop (CANCELLED).
  virtual Status ReadChunk(const FrameCallback& on_frame, const EventCallback& on_event,
                           uint64_t* chunk_index) = 0;
  // Half-close, read until the server ends the call and return its final status. To stop at once
  // (e.g. a free-run stream with frames still coming), Cancel() first; Finish() then says CANCELLED.
  virtual Status Finish() = 0;
  // Abort the call from any thread; blocked reads return CANCELLED.
  virtual void Cancel() = 0;
};

class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const ClientOptions& options() const;

  // Handshake: GetServerInfo, then refuse a server of another API major version
  // (FAILED_PRECONDITION, locally).
  Status GetServerInfo(ServerInfo* info);
  // grpc.health.v1 Check of the whole server (no token needed): `serving` is true once it reports
  // SERVING, i.e. its engine workers are ready. The front may answer other calls before that.
  Status CheckHealth(bool* serving);
  // Probe until the server is SERVING, then handshake, for up to `timeout_seconds`. Not reachable
  // (UNAVAILABLE), no answer in time (DEADLINE_EXCEEDED) and NOT_SERVING (still loading) are
  // retried with backoff from 0.2 s to 2 s on the same channel; anything else ends the wait.
  // `attempts` (optional) counts the probes.
  Status WaitForServer(double timeout_seconds, ServerInfo* info, int* attempts = nullptr);
  Status CreateSession(uint32_t width, uint32_t height, std::string* session_id,
                       uint32_t* out_width = nullptr, uint32_t* out_height = nullptr);
  Status Reset(const std::string& session_id, const std::string& prompt, uint64_t seed,
               const FrameOptions& frames, Chunk* chunk);
  // `action_seq` 0 takes this client's next number for the session (1, 2, 3, ...; never reused,
  // not even after a Reset); every attempt of one Step carries the same number, so the server
  // answers a retried Step with the chunk it already made instead of stepping twice.
  Status Step(const std::string& session_id, const Action& action, uint64_t action_seq,
              const FrameOptions& frames, Chunk* chunk);
  Status CloseSession(const std::string& session_id);
  // Open a Stream on a session that has been Reset and wait for its STARTED event.
  Status OpenStream(const std::string& session_id, StreamMode mode, FrameEncoding encoding,
                    std::unique_ptr<WorldStream>* stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The API major version this client speaks.
constexpr int kApiMajorVersion = 1;

}  // namespace helios_client
