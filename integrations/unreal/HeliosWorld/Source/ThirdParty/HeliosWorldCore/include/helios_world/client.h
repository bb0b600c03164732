// helios_world/client.h: the engine-free C++17 client core of the Helios world plugins, upper layer.
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
// It is built on the lower layer, helios_world/connection.h (one channel, one function a call),
// which also holds the types both layers share (Status, Action, ServerInfo...).
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

#include "helios_world/connection.h"

namespace helios_world {

// Whether this build can decode the encoding: RGB24 always; JPEG with libturbojpeg
// (HELIOS_WITH_TURBOJPEG), H.264 with libavcodec + libswscale (HELIOS_WITH_FFMPEG).
bool DecoderAvailable(Encoding encoding);

// Layout of decoded pixels, rows top to bottom, tightly packed. RGBA/BGRA carry alpha 255.
// Unreal's PF_B8G8R8A8 takes kBgra8; Unity's TextureFormat.RGBA32 takes kRgba8.
enum class PixelFormat : int { kRgb8 = 0, kRgba8 = 1, kBgra8 = 2 };
int BytesPerPixel(PixelFormat format);

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

// The connection's options (target, token, TLS, retries, receive limit, unary timeout) and the
// world's. The receive limit applies before the handshake: after GetServerInfo the channel is
// rebuilt with the server's max_message_bytes when that is larger.
struct ClientOptions : ConnectionOptions {
  uint32_t width = 0;  // 0: the server's default; multiples of size_multiple
  uint32_t height = 0;
  // The default world (`toy`) knows prompts of its grammar: 'a BIOME at TIME [in WEATHER]
  // [with OBJECTS]'; a pretrained Helios takes free text.
  std::string prompt = "a meadow at noon with trees and sheep";
  uint64_t seed = 0;
  StreamMode mode = StreamMode::kFreeRun;
  Encoding encoding = Encoding::kJpeg;
  uint32_t jpeg_quality = 0;  // 1..100; 0: the server's default (90)
  PixelFormat pixel_format = PixelFormat::kRgba8;
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
  uint64_t SendMove(const std::string& move, const std::string& pan = "") {
    return Send(Action::Move(move, pan));
  }

  std::string session_id() const;  // the current session ("" between sessions)
  bool streaming() const;
  ServerInfo server_info() const;
  const ClientOptions& options() const { return options_; }

 private:
  struct Outbox;

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
  std::shared_ptr<Connection> connection_;  // Stop() cancels its calls
  std::shared_ptr<Outbox> outbox_;          // the open stream's writer queue
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

}  // namespace helios_world
