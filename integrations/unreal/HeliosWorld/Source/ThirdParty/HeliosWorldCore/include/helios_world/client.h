// helios_world: the engine-free C++17 client core of the Helios world plugins.
//
// One WorldClient is one world on a helios server (proto/helios/v1/world.proto): it connects with a
// bearer token, handshakes (GetServerInfo), creates a session, resets it from a prompt and keeps a
// bidirectional Stream open, delivering every frame decoded to RGB / RGBA / BGRA pixels to a
// callback on its reader thread. Actions (prompt, transition, keyboard / mouse / camera) can be
// sent from any thread. When the server goes away (UNAVAILABLE, or a CLOSED event) or the session is
// lost with its engine worker (ABORTED) the client reports the lost session, backs off, opens a new
// channel and a new session with the last prompt, and streams again; a call that failed is never
// repeated on the old session. A wrong or missing token (UNAUTHENTICATED) ends Run() at once with
// that status. Single calls are retried by grpc itself, per the service config every helios client
// shares (src/retry_policy.h: UNAVAILABLE on GetServerInfo and Reset here). TLS: ClientOptions.
//
// This header includes only the C++ standard library: grpc++, protobuf and the decoders
// (libturbojpeg, libavcodec) stay inside the library, so an engine module (Unreal's HeliosWorld,
// a custom one) includes this file without any third-party include path or macro clash.
//
// Threads: Run() blocks the calling thread (an Unreal FRunnable, or the std::thread of Start())
// and calls both callbacks on it; it starts one writer thread per stream for the actions.
// Send*, Stop() and the accessors are safe from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace helios_world {

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

// helios.v1.FrameEncoding: what travels on the wire.
enum class Encoding : int { kRgb24 = 1, kJpeg = 2, kH264 = 3 };
// "rgb24", "jpeg", "h264".
const char* EncodingName(Encoding encoding);
// Accepts the names above (and "raw" for rgb24); false for anything else.
bool ParseEncoding(const std::string& name, Encoding* encoding);
// Whether this build can decode the encoding: RGB24 always; JPEG with libturbojpeg
// (HELIOS_WITH_TURBOJPEG), H.264 with libavcodec + libswscale (HELIOS_WITH_FFMPEG).
bool DecoderAvailable(Encoding encoding);

// helios.v1.StreamMode. Lockstep: one chunk per action (agents, tests). Free-run: the world keeps
// generating and the newest action applies at the next chunk boundary (games).
enum class StreamMode : int { kLockstep = 1, kFreeRun = 2 };

// Layout of decoded pixels, rows top to bottom, tightly packed. RGBA/BGRA carry alpha 255.
// Unreal's PF_B8G8R8A8 takes kBgra8; Unity's TextureFormat.RGBA32 takes kRgba8.
enum class PixelFormat : int { kRgb8 = 0, kRgba8 = 1, kBgra8 = 2 };
int BytesPerPixel(PixelFormat format);

// Keyboard, mouse and camera input (helios.v1.ControlAction): keys among w a s d space shift;
// mouse motion in pixels since the last action (x right, y down); camera in degrees.
struct ControlInput {
  std::vector<std::string> keys;
  float mouse_dx = 0.0f;
  float mouse_dy = 0.0f;
  float camera_yaw = 0.0f;
  float camera_pitch = 0.0f;
  float camera_zoom = 0.0f;
};

// What an action does to the world (helios.v1.Action). kContinue changes nothing; in lockstep it
// still advances the world by one chunk.
struct Action {
  enum class Kind { kContinue, kPrompt, kTransition, kControl };
  Kind kind = Kind::kContinue;
  std::string text;                // kPrompt, kTransition
  uint32_t transition_chunks = 0;  // kTransition: 1..64, 0 = the server's default (3)
  ControlInput control;            // kControl

  static Action Continue() { return Action{}; }
  static Action Prompt(std::string text);
  static Action Transition(std::string text, uint32_t chunks);
  static Action Control(ControlInput control);
};

// One frame, decoded. `pixels` holds width * height * BytesPerPixel(format) bytes.
struct Frame {
  std::string session_id;
  uint64_t chunk_index = 0;
  uint64_t frame_index = 0;  // since the session's Reset, frames_per_chunk per chunk
  uint32_t index_in_chunk = 0;
  uint64_t action_seq = 0;  // the latest action applied to this frame's chunk (0: none)
  uint32_t width = 0;
  uint32_t height = 0;
  PixelFormat format = PixelFormat::kRgba8;
  std::vector<uint8_t> pixels;
  Encoding encoding = Encoding::kRgb24;  // how it travelled
  size_t encoded_bytes = 0;              // its size on the wire (the Frame's data field)
  bool keyframe = false;
  // Timings, on the Unix wall clock (same machine: comparable with the server's).
  int64_t server_timestamp_ns = 0;  // Frame.timestamp_ns: when the server built the message
  int64_t received_unix_ns = 0;     // when this client's Read() returned it
  double decode_seconds = 0.0;      // client-side decode into `pixels`
};

struct ServerInfo {
  std::string api_version;  // "MAJOR.MINOR"
  std::string server_version;
  std::string model_name;
  uint32_t default_width = 0;
  uint32_t default_height = 0;
  uint32_t size_multiple = 0;
  uint32_t frames_per_chunk = 0;
  uint32_t fps = 0;
  uint64_t max_message_bytes = 0;
  bool auth_required = false;
  std::vector<Encoding> encodings;
};

// What happens to the connection and the session, in order, on the Run() thread.
struct Event {
  enum class Type {
    kConnecting,      // waiting for the server (health SERVING); `attempt` counts the tries
    kConnected,       // handshake done: server_info() is filled
    kSessionStarted,  // a session was created, reset and its stream opened: `session_id`
    kChunkDone,       // all frames of `chunk_index` were delivered; server timings filled
    kFramesDropped,   // the server dropped `dropped_frames` frames for this slow reader
    kActionRejected,  // the server refused action `action_seq`: `message` says why
    kSessionLost,     // `session_id` is gone: server restart or drain (UNAVAILABLE), worker lost
                      // (ABORTED); a new session follows
    kStopped,         // Stop() was honoured; Run() returns OK next
    kFatal,           // Run() returns `status` next (bad token, API mismatch, bad options...)
  };
  Type type = Type::kConnecting;
  Status status;
  std::string session_id;
  std::string message;
  uint64_t chunk_index = 0;
  uint64_t action_seq = 0;
  uint64_t dropped_frames = 0;
  int attempt = 0;
  // kChunkDone: the server's per-chunk timings (helios.v1.ChunkTimings).
  double denoise_seconds = 0.0;
  double decode_seconds = 0.0;
  double encode_seconds = 0.0;
};
const char* EventTypeName(Event::Type type);

struct ClientOptions {
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
  uint32_t width = 640;  // 0: the server's default; multiples of size_multiple
  uint32_t height = 384;
  std::string prompt = "a quiet harbour town at dusk, boats on the water";
  uint64_t seed = 0;
  StreamMode mode = StreamMode::kFreeRun;
  Encoding encoding = Encoding::kJpeg;
  uint32_t jpeg_quality = 0;  // 1..100; 0: the server's default (90)
  PixelFormat pixel_format = PixelFormat::kRgba8;
  // Receive limit before the handshake. gRPC's default (4 MiB) is below one 1080p RGB24 frame; after
  // GetServerInfo the channel is rebuilt with the server's max_message_bytes when that is larger.
  int max_receive_message_bytes = 64 << 20;
  double unary_timeout_seconds = 60.0;  // CreateSession / Reset (a first chunk on a cold server)
  // Lockstep only: keep one chunk in flight by sending an empty action whenever none is pending,
  // so a game sees frames without stepping by hand. Off: every Send() is one chunk.
  bool auto_advance = false;
  // Deliver the last frame of the Reset chunk (chunk 0) before the stream's frames.
  bool deliver_reset_frame = true;
  // Reconnect after a lost server or session; off: Run() returns the error instead.
  bool reconnect = true;
  double reconnect_min_backoff_seconds = 0.2;
  double reconnect_max_backoff_seconds = 5.0;
  // Give up (Run() returns UNAVAILABLE) after this long without a server; 0: never.
  double reconnect_give_up_seconds = 0.0;
};

using FrameCallback = std::function<void(Frame&& frame)>;
using EventCallback = std::function<void(const Event& event)>;

class WorldClient {
 public:
  WorldClient(ClientOptions options, FrameCallback on_frame, EventCallback on_event);
  ~WorldClient();  // Stop(), then waits for a Start()ed thread
  WorldClient(const WorldClient&) = delete;
  WorldClient& operator=(const WorldClient&) = delete;

  // Connect, stream, reconnect, until Stop() (returns OK) or a fatal error (returns it).
  Status Run();
  // Run() on a std::thread owned by the client; Join() waits for it and returns its status.
  void Start();
  Status Join();
  // Ends Run() soon from any thread: cancels the stream, wakes a backoff, closes the session.
  void Stop();

  // Queue an action; returns its sequence number (echoed in frames as action_seq). Actions sent
  // while no stream is open wait for the next one (in free-run only the newest is kept).
  uint64_t Send(const Action& action);
  uint64_t SendPrompt(const std::string& text) { return Send(Action::Prompt(text)); }
  uint64_t SendControl(const ControlInput& input) { return Send(Action::Control(input)); }

  std::string session_id() const;  // the current session ("" between sessions)
  bool streaming() const;
  ServerInfo server_info() const;
  const ClientOptions& options() const { return options_; }

 private:
  struct Connection;
  struct Outbox;
  class CancelScope;

  Status Connect(int* attempt);
  Status StreamSession();
  bool WaitBackoff(double seconds);
  void Emit(Event event);

  const ClientOptions options_;
  FrameCallback on_frame_;
  EventCallback on_event_;

  std::atomic<bool> stop_{false};
  std::atomic<bool> streaming_{false};
  std::atomic<uint64_t> next_seq_{1};
  mutable std::mutex mu_;           // guards the fields below
  std::condition_variable wake_;    // Stop() wakes backoff sleeps
  std::string session_id_;
  std::string prompt_;              // the prompt a new session starts from (latest prompt action)
  ServerInfo info_;
  std::shared_ptr<Connection> connection_;
  std::shared_ptr<Outbox> outbox_;  // the open stream's writer queue
  std::function<void()> cancel_;    // cancels the call in progress (Stop())
  std::deque<std::pair<uint64_t, Action>> pending_;  // actions sent while no stream was open
  std::thread thread_;
  Status thread_status_;
};

// A bounded, thread-safe hand-off of frames from the reader thread to a consumer (a game thread):
// when full, the oldest frame is dropped (a game wants the newest frame, not a backlog).
class FrameQueue {
 public:
  explicit FrameQueue(size_t capacity = 4);
  // Adds a frame; returns false when an older frame had to be dropped for it.
  bool Push(Frame&& frame);
  // The oldest waiting frame, if any.
  bool TryPop(Frame* frame);
  // The newest waiting frame, dropping the older ones (counted in dropped()).
  bool PopLatest(Frame* frame);
  // Waits up to `timeout_seconds` for a frame; false on timeout or after Close().
  bool WaitPop(Frame* frame, double timeout_seconds);
  void Close();
  size_t size() const;
  uint64_t dropped() const;

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<Frame> frames_;
  uint64_t dropped_ = 0;
  bool closed_ = false;
};

// The API major version this client speaks; GetServerInfo with another major is fatal.
constexpr int kApiMajorVersion = 1;

}  // namespace helios_world
