// helios_world/connection.h: one channel to a helios server and its calls, one by one.
//
// The lower layer of the C++ client core (the one core of every C++ client of
// proto/helios/v1/world.proto: the Unreal plugin's WorldClient in client.h is built on it, and the
// interop harness tests/interop/cpp drives it directly). A Connection connects with a bearer token,
// TLS and a message-size limit, and makes each call of helios.v1.WorldService as one blocking
// function: the handshake, the health probe, CreateSession, Reset, Step, CloseSession, and Stream
// (a WorldStream). Retries are grpc's own, from the service config every helios client shares
// (src/retry_policy.h): UNAVAILABLE on GetServerInfo, Reset, Step and CloseSession only. ABORTED
// means the session was lost with its engine worker: it is never retried; create a new session.
//
// This header includes only the C++ standard library: grpc++ and protobuf stay inside the
// library, so an engine module includes it without any third-party include path or macro clash
// (TurboLink's rule).
//
// Threads: every call blocks its thread. A Connection may be shared by threads (grpc stubs are
// thread-safe). A WorldStream may be read by one thread while another sends actions; Cancel()
// from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace helios_world {

namespace internal {
struct ConnectionState;  // the channel, its stubs and the calls in flight (src/connection.cpp)
}  // namespace internal

// gRPC status codes with their wire values (grpc/status.h).
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

// "OK", "UNAUTHENTICATED", ... (the canonical names).
const char* StatusCodeName(StatusCode code);

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;

  bool ok() const { return code == StatusCode::kOk; }
  // "UNAUTHENTICATED: missing or wrong bearer token".
  std::string ToString() const;
};

// helios.v1.FrameEncoding: what travels on the wire (kUnspecified: the server's default).
enum class Encoding : int { kUnspecified = 0, kRgb24 = 1, kJpeg = 2, kH264 = 3 };
// "rgb24", "jpeg", "h264" ("unspecified").
const char* EncodingName(Encoding encoding);
// Accepts the names above (and "raw" for rgb24); false for anything else.
bool ParseEncoding(const std::string& name, Encoding* encoding);

// helios.v1.FrameSelection: which frames of a chunk a unary Reset / Step answers with.
enum class FrameSelection : int { kUnspecified = 0, kAll = 1, kLast = 2, kNone = 3 };

// helios.v1.StreamMode. Lockstep: one chunk per action (agents, tests). Free-run: the world keeps
// generating and the newest action applies at the next chunk boundary (games).
enum class StreamMode : int { kUnspecified = 0, kLockstep = 1, kFreeRun = 2 };

struct ConnectionOptions {
  std::string target = "127.0.0.1:50051";  // any grpc target string
  // Sent as `authorization: Bearer <token>`; empty sends none (a server without a token).
  std::string token;
  // TLS: on when `tls` is true or any PEM below is given (`helios serve --tls-cert ...`). Empty
  // roots: grpc's default roots verify the server.
  bool tls = false;
  std::string tls_root_certs_pem;
  // Mutual TLS (`helios serve --tls-client-ca`): this client's certificate chain and private key.
  std::string tls_client_cert_pem;
  std::string tls_client_key_pem;
  // grpc's retries per the shared policy (src/retry_policy.h); false: every call is tried once.
  bool retries = true;
  // Receive limit. gRPC's default (4 MiB) is below one 1080p RGB24 frame.
  int max_receive_message_bytes = 64 << 20;
  // Deadline of every unary call unless the call says otherwise (a first chunk on a cold server).
  // Stream reads have none (a game streams for hours).
  double unary_timeout_seconds = 60.0;
  // Reconnect backoff of the channel. grpc's defaults (1 s growing to 120 s) are too slow for a
  // game waiting for a restarted local server.
  int min_reconnect_backoff_ms = 200;
  int max_reconnect_backoff_ms = 2000;
};

// The structured actions the server's model understands (helios.v1.ActionSpace): a ControlInput
// may press only `keys` and set only the fields named in `axes` ("mouse_dx", "camera_yaw", ...); a
// Move action names entries of `moves` and `pans` (empty: the model has no moves). Anything else is
// refused with INVALID_ARGUMENT, never ignored. `prompts`: when not empty, the only form of prompt
// the model knows (the toy world's grammar), by example.
struct ActionSpace {
  std::vector<std::string> keys;
  std::vector<std::string> axes;
  std::vector<std::string> moves;
  std::vector<std::string> pans;
  std::vector<std::string> prompts;

  bool HasKey(const std::string& key) const;  // case-insensitive, "arrowup" read as "up"
  bool HasAxis(const std::string& field) const;
};

struct ServerInfo {
  std::string api_version;  // "MAJOR.MINOR"
  std::string server_version;
  std::string model_name;
  std::string sampler;
  // Frames at the start of each chunk the server eases from the last frame shown (API 1.2; 0: the
  // model's own frames, as the reference pipeline decodes them).
  uint32_t seam_blend_frames = 0;
  // The model's actions (API 1.1); `has_actions` false from an older server, which does not say.
  ActionSpace actions;
  bool has_actions = false;
  uint32_t default_width = 0;
  uint32_t default_height = 0;
  uint32_t size_multiple = 0;
  uint32_t max_width = 0;
  uint32_t max_height = 0;
  std::vector<Encoding> encodings;
  uint32_t frames_per_chunk = 0;
  uint32_t fps = 0;
  uint32_t max_sessions = 0;
  uint64_t max_message_bytes = 0;
  bool auth_required = false;
};

// One frame as it travelled (helios.v1.Frame): `data` holds RGB24 rows top to bottom
// (width * height * 3 bytes), one JPEG, or one H.264 access unit.
struct EncodedFrame {
  std::string session_id;
  uint64_t chunk_index = 0;
  uint64_t frame_index = 0;  // since the session's Reset, frames_per_chunk per chunk
  uint32_t index_in_chunk = 0;
  int64_t timestamp_ns = 0;  // Unix wall clock, when the server built the message
  uint32_t width = 0;
  uint32_t height = 0;
  Encoding encoding = Encoding::kUnspecified;
  std::string data;
  bool keyframe = false;
  uint64_t action_seq = 0;  // the latest action applied to this frame's chunk (0: none)
};

// A chunk answered by a unary Reset or Step, with the server's timings (helios.v1.ChunkTimings).
struct Chunk {
  std::string session_id;
  uint64_t chunk_index = 0;
  std::vector<EncodedFrame> frames;
  double denoise_seconds = 0.0;
  double decode_seconds = 0.0;
  double encode_seconds = 0.0;
};

// Keyboard, mouse and camera input (helios.v1.ControlAction): keys among those the server's model
// knows (GetServerInfo); mouse motion in pixels since the last action (x right, y down); camera in
// degrees.
struct ControlInput {
  std::vector<std::string> keys;
  float mouse_dx = 0.0f;
  float mouse_dy = 0.0f;
  float camera_yaw = 0.0f;
  float camera_pitch = 0.0f;
  float camera_zoom = 0.0f;
};

// What a step does to the world (helios.v1.Action). kContinue changes nothing; in lockstep it still
// advances the world by one chunk.
struct Action {
  enum class Kind { kContinue, kPrompt, kBlend, kTransition, kControl, kMove };
  Kind kind = Kind::kContinue;
  std::string text;                                  // kPrompt, kTransition
  uint32_t transition_chunks = 0;                    // kTransition: 1..64, 0 = the server's default
  std::vector<std::pair<std::string, float>> blend;  // kBlend: (prompt, weight >= 0)
  ControlInput control;                              // kControl
  std::string move, pan;  // kMove (helios.v1.MoveAction): names from ActionSpace moves / pans; "": stay

  static Action Continue() { return Action{}; }
  static Action Prompt(std::string text);
  static Action Transition(std::string text, uint32_t chunks);
  static Action Control(ControlInput control);
  static Action Move(std::string move, std::string pan = "");
};

// helios.v1.FrameOptions.
struct FrameOptions {
  Encoding encoding = Encoding::kRgb24;
  FrameSelection selection = FrameSelection::kAll;
  uint32_t jpeg_quality = 0;  // 1..100; 0: the server's default
};

// A session event of a stream (helios.v1.SessionEvent).
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
  // kChunkDone: the server's timings of the chunk.
  double denoise_seconds = 0.0;
  double decode_seconds = 0.0;
  double encode_seconds = 0.0;
};
// "STARTED", "CHUNK_DONE", ...
const char* StreamEventTypeName(StreamEvent::Type type);

// One message of a stream: a frame or an event.
struct StreamMessage {
  bool is_frame = false;
  EncodedFrame frame;  // is_frame
  StreamEvent event;   // otherwise
};

// Called once per streamed frame, on the reading thread. Move `frame.data` out if it must outlive
// the call. Return false to stop reading.
using EncodedFrameCallback = std::function<bool(EncodedFrame& frame)>;
// Called for every event other than STARTED and CHUNK_DONE (dropped frames, rejected actions...).
using StreamEventCallback = std::function<void(const StreamEvent& event)>;

// One Stream call (helios.v1.WorldService/Stream) attached to one session, after its STARTED event.
class WorldStream {
 public:
  virtual ~WorldStream() = default;
  // Send an action; in lockstep mode every action produces one chunk. False: the stream is broken
  // (Finish() says why). One thread may send while another reads.
  virtual bool SendAction(uint64_t seq, const Action& action) = 0;
  // The next message. False: the server ended the call or it broke; Finish() says why.
  virtual bool Read(StreamMessage* message) = 0;
  // Half-close, read until the server ends the call and return its final status. To stop at once
  // (e.g. a free-run stream with frames still coming), Cancel() first; Finish() then says CANCELLED.
  virtual Status Finish() = 0;
  // Abort the call from any thread; a blocked Read returns false.
  virtual void Cancel() = 0;

  // Reads frames until the next CHUNK_DONE; `chunk_index` (optional) receives its index. Returns a
  // non-OK status if the stream ended or broke first, or the callback asked to stop (CANCELLED).
  Status ReadChunk(const EncodedFrameCallback& on_frame, const StreamEventCallback& on_event,
                   uint64_t* chunk_index);
};

class Connection {
 public:
  explicit Connection(ConnectionOptions options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const ConnectionOptions& options() const;

  // Handshake: GetServerInfo, then refuse a server of another API major version
  // (FAILED_PRECONDITION, locally). `timeout_seconds` 0: the unary timeout.
  Status GetServerInfo(ServerInfo* info, double timeout_seconds = 0.0);
  // grpc.health.v1 Check of the whole server (no token needed, 2 s deadline): `serving` is true
  // once it reports SERVING, i.e. its engine workers are ready. The front may answer other calls
  // before that. Sent through grpc's generic stub: no health.proto is compiled into the library
  // (none can clash with a copy the game links for itself).
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
  // `action_seq` 0 takes this connection's next number for the session (1, 2, 3, ...; never
  // reused, not even after a Reset); every attempt of one Step carries the same number, so the
  // server answers a retried Step with the chunk it already made instead of stepping twice.
  Status Step(const std::string& session_id, const Action& action, uint64_t action_seq,
              const FrameOptions& frames, Chunk* chunk);
  Status CloseSession(const std::string& session_id, double timeout_seconds = 0.0);
  // Open a Stream on a session that has been Reset and wait for its STARTED event. Frames come in
  // `frames` (its encoding and JPEG quality; the selection does not apply to streams).
  Status OpenStream(const std::string& session_id, StreamMode mode, const FrameOptions& frames,
                    std::unique_ptr<WorldStream>* stream);

  // Cancels every call of this connection in flight (streams included) and every later one: they
  // end CANCELLED. For shutting down from another thread; a cancelled connection stays cancelled.
  void Cancel();
  bool cancelled() const;

 private:
  std::shared_ptr<internal::ConnectionState> impl_;
};

// The API major version this client speaks; GetServerInfo with another major fails.
constexpr int kApiMajorVersion = 1;

}  // namespace helios_world
