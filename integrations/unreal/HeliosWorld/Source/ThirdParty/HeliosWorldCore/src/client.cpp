// helios_world::WorldClient: a world that reconnects, on top of helios_world::Connection (see
// include/helios_world/client.h).
//
// Run() is a loop of three phases: Connect (a fresh Connection, the health probe until SERVING, the
// GetServerInfo handshake), StreamSession (CreateSession, Reset, Stream until it ends), and, when
// the server or the session was lost, a backoff before the next Connect. No grpc or protobuf here:
// every call goes through the Connection.
#include "helios_world/client.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "decoder.h"

namespace helios_world {

using Clock = std::chrono::steady_clock;

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

namespace {

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

Event MakeEvent(Event::Type type, Status status = Status{}) {
  Event event;
  event.type = type;
  event.status = std::move(status);
  return event;
}

// The decoded frame of an encoded one (pixels left to the caller).
Frame Describe(const EncodedFrame& f, const std::string& session, PixelFormat format) {
  Frame frame;
  frame.session_id = session;
  frame.chunk_index = f.chunk_index;
  frame.frame_index = f.frame_index;
  frame.index_in_chunk = f.index_in_chunk;
  frame.action_seq = f.action_seq;
  frame.width = f.width;
  frame.height = f.height;
  frame.format = format;
  frame.encoding = f.encoding;
  frame.encoded_bytes = f.data.size();
  frame.keyframe = f.keyframe;
  frame.server_timestamp_ns = f.timestamp_ns;
  return frame;
}

constexpr size_t kMaxPendingActions = 16;  // the server queues at most 16 lockstep actions
constexpr double kHandshakeTimeoutSeconds = 10.0;
constexpr double kCloseTimeoutSeconds = 2.0;

}  // namespace

// -------------------------------------------------------------------------------------------------
// Outbox
// -------------------------------------------------------------------------------------------------

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
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    if (outbox_) outbox_->Close();
    // Every call in flight ends CANCELLED (the stream's too), and so does every later call.
    if (connection_) connection_->Cancel();
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

// A new Connection for `options` with a receive limit of `max_receive` bytes, made current; it
// starts cancelled if Stop() came first. A channel that saw its server die sits in its own
// reconnect backoff, which a fresh one does not have: every reconnect attempt makes a new one.
static std::shared_ptr<Connection> Reconnect(const ClientOptions& options, int max_receive) {
  ConnectionOptions o = options;
  o.max_receive_message_bytes = max_receive;
  return std::make_shared<Connection>(std::move(o));
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
      if (!connection_) connection_ = Reconnect(options_, options_.max_receive_message_bytes);
      if (stop_) connection_->Cancel();
      conn = connection_;
    }
    bool serving = false;
    Status status = conn->CheckHealth(&serving);
    if (serving) {
      ServerInfo info;
      status = conn->GetServerInfo(&info, kHandshakeTimeoutSeconds);
      if (status.ok()) {
        if (std::find(info.encodings.begin(), info.encodings.end(), options_.encoding) ==
            info.encodings.end()) {
          return Make(StatusCode::kFailedPrecondition,
                      std::string("the server does not offer ") + EncodingName(options_.encoding) +
                          " frames");
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          // The server may send messages up to max_message_bytes: accept as much.
          if (info.max_message_bytes > static_cast<uint64_t>(options_.max_receive_message_bytes) &&
              info.max_message_bytes <= static_cast<uint64_t>(INT32_MAX)) {
            connection_ = Reconnect(options_, static_cast<int>(info.max_message_bytes));
            if (stop_) connection_->Cancel();
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
  Status created = conn->CreateSession(options_.width, options_.height, &session);
  if (!created.ok()) return created;
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
  // After Stop(): the connection is cancelled, so the session is closed over a fresh one.
  auto stopped = [&] {
    Reconnect(options_, options_.max_receive_message_bytes)->CloseSession(session, kCloseTimeoutSeconds);
    std::lock_guard<std::mutex> lock(mu_);
    session_id_.clear();
    return Make(StatusCode::kCancelled, "stopped");
  };
  {
    // The Reset chunk's last frame, so the texture fills before the stream's first chunk. H.264
    // needs its stream's decoder state, so that frame comes as JPEG (or RGB24) instead.
    FrameOptions frames;
    frames.encoding = options_.encoding;
    if (frames.encoding == Encoding::kH264) {
      frames.encoding = DecoderAvailable(Encoding::kJpeg) ? Encoding::kJpeg : Encoding::kRgb24;
    }
    frames.selection = options_.deliver_reset_frame ? FrameSelection::kLast : FrameSelection::kNone;
    frames.jpeg_quality = options_.jpeg_quality;
    Chunk chunk;
    Status s = conn->Reset(session, prompt, options_.seed, frames, &chunk);
    if (stop_) return stopped();
    if (!s.ok()) return lost(s);
    for (const EncodedFrame& f : chunk.frames) {
      Status made;
      auto decoder = internal::FrameDecoder::Create(frames.encoding, options_.pixel_format, &made);
      Frame frame = Describe(f, session, options_.pixel_format);
      const auto t0 = Clock::now();
      if (decoder) made = decoder->Decode(f.data, f.width, f.height, true, &frame.pixels);
      if (!made.ok()) return lost(made);
      frame.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      frame.keyframe = true;
      frame.received_unix_ns = UnixNanos();
      if (on_frame_) on_frame_(std::move(frame));
    }
  }

  // --- the Stream ---------------------------------------------------------------------------------
  std::unique_ptr<WorldStream> stream;
  {
    FrameOptions frames;
    frames.encoding = options_.encoding;
    frames.jpeg_quality = options_.jpeg_quality;
    Status s = conn->OpenStream(session, options_.mode, frames, &stream);
    if (stop_) return stopped();
    if (!s.ok()) return lost(s);
  }

  auto outbox = std::make_shared<Outbox>();
  const bool lockstep = options_.mode == StreamMode::kLockstep;
  WorldStream* writing = stream.get();
  std::thread writer([writing, outbox, lockstep] {
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
      if (!writing->SendAction(next.first, next.second)) return;  // the reader sees why
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
  StreamMessage message;
  while (stream->Read(&message)) {
    const int64_t received = UnixNanos();
    if (message.is_frame) {
      const EncodedFrame& f = message.frame;
      Frame frame = Describe(f, session, options_.pixel_format);
      const auto t0 = Clock::now();
      Status s = decoder->Decode(f.data, f.width, f.height, f.keyframe, &frame.pixels);
      frame.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (!s.ok()) {
        broken = s;
        stream->Cancel();
        break;
      }
      frame.received_unix_ns = received;
      if (on_frame_) on_frame_(std::move(frame));
      continue;
    }
    const StreamEvent& e = message.event;
    Event event;
    event.session_id = session;
    event.chunk_index = e.chunk_index;
    event.action_seq = e.action_seq;
    event.dropped_frames = e.dropped_frames;
    event.message = e.message;
    switch (e.type) {
      case StreamEvent::Type::kChunkDone:
        event.type = Event::Type::kChunkDone;
        event.denoise_seconds = e.denoise_seconds;
        event.decode_seconds = e.decode_seconds;
        event.encode_seconds = e.encode_seconds;
        break;
      case StreamEvent::Type::kFramesDropped:
        event.type = Event::Type::kFramesDropped;
        break;
      case StreamEvent::Type::kActionRejected:
        event.type = Event::Type::kActionRejected;
        break;
      case StreamEvent::Type::kClosed:
        closed_reason = e.message.empty() ? "the server closed the session" : e.message;
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
  Status finished = stream->Finish();
  if (stop_) return stopped();
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
