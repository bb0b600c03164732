// helios_world_harness: drives a live helios server through the helios_world client core, the
// same library the Unreal plugin links, one scenario per run.
//
//   helios_world_harness --target HOST:PORT --token T --scenario NAME [options]
//
// Scenarios: stream (lockstep: 2 chunks, then a prompt switch), freerun (frames without actions, an
// action shows up in action_seq, Stop() is prompt), decode (the same world as RGB24 and as
// --encoding, compared pixel by pixel), unauthenticated (a wrong and a missing token end Run() with
// UNAUTHENTICATED, no retry), restart (survive the server being killed and started again on the
// same port: SESSION_LOST, then a new session), latency (per-frame transport and decode times).
//
// Output is one fact per line, `WORD key=value ...`, flushed as it happens; the last line is
// `OK scenario=NAME ...` (exit 0) or `FAIL scenario=NAME reason=...` (exit 1).
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness_kit.h"
#include "helios_world/client.h"

namespace hw = helios_world;
namespace kit = helios_harness;
using kit::Crc32;
using kit::ExpectEq;
using kit::Fail;
using kit::Hex;

namespace {

struct Args : kit::CommonArgs {
  uint32_t width = 64;
  uint32_t height = 64;
  uint64_t seed = 7;
  hw::Encoding encoding = hw::Encoding::kRgb24;
  hw::PixelFormat format = hw::PixelFormat::kRgba8;
  int chunks = 2;
  double timeout = 240.0;  // seconds any one wait may take (a busy 2-core machine)
  std::string prompt = "a lighthouse on a cliff above a calm sea, golden hour";
  std::string switch_prompt = "the same lighthouse in a night storm, lightning";
};


// The frame's RGB bytes (alpha dropped, BGRA swapped back), the layout the server generated.
std::vector<uint8_t> Rgb(const hw::Frame& f) {
  const int bpp = hw::BytesPerPixel(f.format);
  const size_t pixels = static_cast<size_t>(f.width) * f.height;
  std::vector<uint8_t> rgb(pixels * 3);
  const bool bgra = f.format == hw::PixelFormat::kBgra8;
  for (size_t i = 0; i < pixels; ++i) {
    const uint8_t* p = &f.pixels[i * bpp];
    rgb[i * 3 + 0] = bgra ? p[2] : p[0];
    rgb[i * 3 + 1] = p[1];
    rgb[i * 3 + 2] = bgra ? p[0] : p[2];
  }
  return rgb;
}

// Checks a decoded frame's size and alpha; returns the CRC-32 of its RGB bytes.
uint32_t CheckPixels(const hw::Frame& f, const Args& args, const std::string& where) {
  ExpectEq(f.width, args.width, where + " width");
  ExpectEq(f.height, args.height, where + " height");
  ExpectEq(f.pixels.size(), static_cast<size_t>(f.width) * f.height * hw::BytesPerPixel(f.format),
           where + " decoded byte count");
  if (f.format != hw::PixelFormat::kRgb8) {
    for (size_t i = 3; i < f.pixels.size(); i += 4) {
      if (f.pixels[i] != 255) Fail(where, ": alpha ", int(f.pixels[i]), " at byte ", i);
    }
  }
  std::vector<uint8_t> rgb = Rgb(f);
  return Crc32(rgb.data(), rgb.size());
}

// Everything a WorldClient reports, kept for the scenario to wait on and check.
class Recorder {
 public:
  explicit Recorder(std::string name, bool print_events = true)
      : name_(std::move(name)), print_events_(print_events) {}

  void OnFrame(hw::Frame&& frame) {
    std::lock_guard<std::mutex> lock(mu_);
    if (on_frame) on_frame(frame);
    frames.push_back(std::move(frame));
    changed_.notify_all();
  }

  void OnEvent(const hw::Event& e) {
    if (print_events_) {
      std::cout << "EVENT client=" << name_ << " type=" << hw::EventTypeName(e.type);
      if (!e.session_id.empty()) std::cout << " session=" << e.session_id;
      if (e.type == hw::Event::Type::kChunkDone) {
        std::cout << " chunk=" << e.chunk_index << " action_seq=" << e.action_seq;
      }
      if (e.type == hw::Event::Type::kConnecting) std::cout << " attempt=" << e.attempt;
      if (!e.status.ok()) std::cout << " code=" << hw::StatusCodeName(e.status.code);
      if (!e.message.empty()) std::cout << " message=\"" << e.message << "\"";
      std::cout << std::endl;
    }
    std::lock_guard<std::mutex> lock(mu_);
    events.push_back(e);
    changed_.notify_all();
  }

  // Waits until `ready()` holds (called under the lock) or `timeout` seconds pass.
  void WaitFor(const std::function<bool()>& ready, double timeout, const std::string& what) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!changed_.wait_for(lock, std::chrono::duration<double>(timeout), ready)) {
      Fail("timed out after ", timeout, " s waiting for ", what);
    }
  }

  size_t Count(hw::Event::Type type) const {
    return std::count_if(events.begin(), events.end(),
                         [type](const hw::Event& e) { return e.type == type; });
  }

  hw::FrameCallback frame_callback() {
    return [this](hw::Frame&& f) { OnFrame(std::move(f)); };
  }
  hw::EventCallback event_callback() {
    return [this](const hw::Event& e) { OnEvent(e); };
  }

  // Read these only under lock() or after the client's thread has ended.
  std::vector<hw::Frame> frames;
  std::vector<hw::Event> events;
  std::function<void(const hw::Frame&)> on_frame;  // called under the lock, before storing
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mu_); }

 private:
  std::string name_;
  bool print_events_;
  std::mutex mu_;
  std::condition_variable changed_;
};


hw::ClientOptions Options(const Args& args, hw::StreamMode mode) {
  hw::ClientOptions o;
  kit::Connect(args, args.token, &o);
  o.width = args.width;
  o.height = args.height;
  o.prompt = args.prompt;
  o.seed = args.seed;
  o.mode = mode;
  o.encoding = args.encoding;
  o.pixel_format = args.format;
  o.reconnect_give_up_seconds = args.timeout;
  return o;
}

// Frames of one chunk, checked in order: chunk_index, index_in_chunk 0..N-1, frame_index,
// action_seq, size; returns the CRC-32 of the last frame's RGB bytes.
uint32_t CheckChunk(const std::vector<hw::Frame>& frames, const Args& args, uint64_t chunk,
                    uint64_t action_seq, uint32_t frames_per_chunk, const std::string& session) {
  std::vector<const hw::Frame*> of_chunk;
  for (const auto& f : frames) {
    if (f.chunk_index == chunk && f.session_id == session) of_chunk.push_back(&f);
  }
  const std::string where = "chunk " + std::to_string(chunk);
  ExpectEq(of_chunk.size(), static_cast<size_t>(frames_per_chunk), where + " frame count");
  uint32_t crc = 0;
  for (uint32_t i = 0; i < frames_per_chunk; ++i) {
    const hw::Frame& f = *of_chunk[i];
    const std::string at = where + " frame " + std::to_string(i);
    ExpectEq(f.index_in_chunk, i, at + " index_in_chunk");
    ExpectEq(f.frame_index, chunk * frames_per_chunk + i, at + " frame_index");
    ExpectEq(f.action_seq, action_seq, at + " action_seq");
    crc = CheckPixels(f, args, at);
  }
  return crc;
}

// -------------------------------------------------------------------------------------------------
// Scenarios
// -------------------------------------------------------------------------------------------------

// Lockstep: the Reset frame, two chunks for two empty actions, a third after a prompt switch.
void ScenarioStream(const Args& args) {
  Recorder rec("main");
  hw::WorldClient client(Options(args, hw::StreamMode::kLockstep), rec.frame_callback(),
                         rec.event_callback());
  client.Start();
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kSessionStarted) == 1; }, args.timeout,
              "SESSION_STARTED");
  const hw::ServerInfo info = client.server_info();
  std::cout << "INFO api_version=" << info.api_version << " model=" << info.model_name
            << " frames_per_chunk=" << info.frames_per_chunk
            << " seam_blend_frames=" << info.seam_blend_frames
            << " max_message_bytes=" << info.max_message_bytes << std::endl;
  const std::string session = client.session_id();
  const uint32_t n = info.frames_per_chunk;

  const uint64_t seq1 = client.Send(hw::Action::Continue());
  const uint64_t seq2 = client.Send(hw::Action::Continue());
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kChunkDone) == 2; }, args.timeout,
              "two CHUNK_DONE events");
  const uint64_t seq3 = client.SendPrompt(args.switch_prompt);
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kChunkDone) == 3; }, args.timeout,
              "the prompt switch's CHUNK_DONE");
  const auto t0 = std::chrono::steady_clock::now();
  client.Stop();
  hw::Status ended = client.Join();
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!ended.ok()) Fail("Run() after Stop(): ", ended.ToString());

  // The Reset chunk's last frame arrives first.
  if (rec.frames.empty()) Fail("no frames");
  const hw::Frame& reset = rec.frames.front();
  ExpectEq(reset.chunk_index, uint64_t{0}, "reset frame chunk_index");
  ExpectEq(reset.index_in_chunk, n - 1, "reset frame index_in_chunk");
  std::cout << "RESET_FRAME crc32=" << Hex(CheckPixels(reset, args, "reset frame")) << std::endl;
  const uint64_t seqs[] = {seq1, seq2, seq3};
  for (uint64_t k = 0; k < 3; ++k) {
    const uint32_t crc = CheckChunk(rec.frames, args, k + 1, seqs[k], n, session);
    std::cout << "CHUNK index=" << k + 1 << " frames=" << n << " action_seq=" << seqs[k]
              << " last_crc32=" << Hex(crc) << std::endl;
  }
  ExpectEq(rec.frames.size(), static_cast<size_t>(1 + 3 * n), "frames in all");
  for (const auto& e : rec.events) {
    if (e.type == hw::Event::Type::kChunkDone && e.encode_seconds < 0) Fail("negative encode time");
  }
  ExpectEq(rec.Count(hw::Event::Type::kStopped), size_t{1}, "STOPPED events");
  std::cout << "STOP seconds=" << stop_s << std::endl;
  std::cout << "OK scenario=stream frames=" << rec.frames.size() << " chunks=3 session=" << session
            << std::endl;
}

// Free-run: frames come with no action; a prompt sent mid-stream shows up in action_seq; Stop()
// ends Run() promptly even while frames are flowing.
void ScenarioFreeRun(const Args& args) {
  Recorder rec("main");
  hw::WorldClient client(Options(args, hw::StreamMode::kFreeRun), rec.frame_callback(),
                         rec.event_callback());
  client.Start();
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kChunkDone) >= 2; }, args.timeout,
              "two chunks with no action sent");
  const uint64_t seq = client.SendPrompt(args.switch_prompt);
  rec.WaitFor(
      [&] {
        return std::any_of(rec.frames.begin(), rec.frames.end(),
                           [seq](const hw::Frame& f) { return f.action_seq == seq; });
      },
      args.timeout, "a frame of the prompt action's chunk");
  const std::string session = client.session_id();
  const auto t0 = std::chrono::steady_clock::now();
  client.Stop();
  hw::Status ended = client.Join();
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!ended.ok()) Fail("Run() after Stop(): ", ended.ToString());
  // Frames are never reordered: frame_index grows by one within the session.
  for (size_t i = 2; i < rec.frames.size(); ++i) {
    ExpectEq(rec.frames[i].frame_index, rec.frames[i - 1].frame_index + 1, "frame order");
  }
  uint64_t applied_at = 0;
  for (const auto& f : rec.frames) {
    if (f.action_seq == seq) {
      applied_at = f.chunk_index;
      break;
    }
  }
  std::cout << "FREERUN frames=" << rec.frames.size() << " action_seq=" << seq
            << " applied_at_chunk=" << applied_at << std::endl;
  std::cout << "STOP seconds=" << stop_s << std::endl;
  std::cout << "OK scenario=freerun frames=" << rec.frames.size() << " session=" << session
            << std::endl;
}

// The same world (seed, prompt, actions) streamed as RGB24 and as args.encoding, one chunk each:
// the decoded pixels must be close (lossy codecs) and of the right size.
void ScenarioDecode(const Args& args) {
  auto run = [&](hw::Encoding encoding, Recorder* rec) {
    Args a = args;
    a.encoding = encoding;
    hw::ClientOptions o = Options(a, hw::StreamMode::kLockstep);
    hw::WorldClient client(o, rec->frame_callback(), rec->event_callback());
    client.Start();
    rec->WaitFor([&] { return rec->Count(hw::Event::Type::kSessionStarted) == 1; }, args.timeout,
                 "SESSION_STARTED");
    client.Send(hw::Action::Continue());
    rec->WaitFor([&] { return rec->Count(hw::Event::Type::kChunkDone) == 1; }, args.timeout,
                 "CHUNK_DONE");
    client.Stop();
    hw::Status s = client.Join();
    if (!s.ok()) Fail("Run(): ", s.ToString());
  };
  Recorder raw("rgb24"), coded(hw::EncodingName(args.encoding));
  run(hw::Encoding::kRgb24, &raw);
  run(args.encoding, &coded);
  std::vector<const hw::Frame*> a, b;
  for (const auto& f : raw.frames) if (f.chunk_index == 1) a.push_back(&f);
  for (const auto& f : coded.frames) if (f.chunk_index == 1) b.push_back(&f);
  ExpectEq(b.size(), a.size(), "frames of chunk 1");
  // `swapped`: the error had the decoder mixed up R and B, or rows, a check that the error measured
  // is small for the right reason.
  double total = 0, swapped = 0, flipped = 0;
  int worst = 0;
  size_t bytes = 0, encoded = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    CheckPixels(*b[i], args, "decoded frame " + std::to_string(i));
    std::vector<uint8_t> x = Rgb(*a[i]), y = Rgb(*b[i]);
    const size_t row = static_cast<size_t>(args.width) * 3;
    for (size_t k = 0; k < x.size(); ++k) {
      const int d = std::abs(int(x[k]) - int(y[k]));
      total += d;
      worst = std::max(worst, d);
      const size_t c = k % 3;
      swapped += std::abs(int(x[k]) - int(y[k - c + (2 - c)]));
      const size_t r = k / row;
      flipped += std::abs(int(x[k]) - int(y[(args.height - 1 - r) * row + k % row]));
    }
    bytes += x.size();
    encoded += b[i]->encoded_bytes;
  }
  std::cout << "DECODE encoding=" << hw::EncodingName(args.encoding) << " frames=" << b.size()
            << " mean_abs_diff=" << total / bytes << " max_abs_diff=" << worst
            << " swapped_rb_mean_abs_diff=" << swapped / bytes
            << " flipped_rows_mean_abs_diff=" << flipped / bytes
            << " wire_bytes_per_frame=" << encoded / std::max<size_t>(1, b.size()) << std::endl;
  std::cout << "OK scenario=decode frames=" << b.size() << std::endl;
}

// A wrong token and a missing token: Run() returns UNAUTHENTICATED at once, after one FATAL event,
// without reconnect attempts.
void ScenarioUnauthenticated(const Args& args) {
  for (const std::string& token : {args.token + "-wrong", std::string()}) {
    const std::string name = token.empty() ? "missing" : "wrong";
    Recorder rec(name);
    Args a = args;
    a.token = token;
    hw::WorldClient client(Options(a, hw::StreamMode::kFreeRun), rec.frame_callback(),
                           rec.event_callback());
    const auto t0 = std::chrono::steady_clock::now();
    hw::Status s = client.Run();
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "CHECK name=" << name << "_token code=" << hw::StatusCodeName(s.code)
              << " seconds=" << took << " attempts=" << rec.Count(hw::Event::Type::kConnecting)
              << " fatal=" << rec.Count(hw::Event::Type::kFatal) << " frames=" << rec.frames.size()
              << " message=\"" << s.message << "\"" << std::endl;
    ExpectEq(std::string(hw::StatusCodeName(s.code)), std::string("UNAUTHENTICATED"), name);
    ExpectEq(rec.Count(hw::Event::Type::kConnecting), size_t{1}, name + " connect attempts");
    ExpectEq(rec.Count(hw::Event::Type::kFatal), size_t{1}, name + " FATAL events");
    ExpectEq(rec.frames.size(), size_t{0}, name + " frames");
  }
  std::cout << "OK scenario=unauthenticated checks=2" << std::endl;
}

// Lockstep with auto_advance (a game's steady stream). After the first chunk it prints READY; the
// driver kills the server and starts a new one on the same port. The client must report the lost
// session, reconnect on a new channel, start a new session and stream a whole chunk from it.
void ScenarioRestart(const Args& args) {
  Recorder rec("main");
  hw::ClientOptions o = Options(args, hw::StreamMode::kLockstep);
  o.auto_advance = true;
  hw::WorldClient client(o, rec.frame_callback(), rec.event_callback());
  client.Start();
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kChunkDone) >= 1; }, args.timeout,
              "the first chunk");
  const std::string first = client.session_id();
  std::cout << "READY session=" << first << std::endl;
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kSessionLost) >= 1; }, args.timeout,
              "SESSION_LOST after the server went away");
  std::string lost_id, lost_code;
  {
    auto lock = rec.lock();
    for (const auto& e : rec.events) {
      if (e.type == hw::Event::Type::kSessionLost) {
        lost_id = e.session_id;
        lost_code = hw::StatusCodeName(e.status.code);
        break;
      }
    }
  }
  std::cout << "LOST session=" << lost_id << " code=" << lost_code << std::endl;
  ExpectEq(lost_id, first, "the lost session");
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kSessionStarted) >= 2; }, args.timeout,
              "a new session after the restart");
  const std::string second = client.session_id();
  size_t attempts = 0;
  {
    auto lock = rec.lock();
    bool after_loss = false;
    for (const auto& e : rec.events) {
      if (e.type == hw::Event::Type::kSessionLost) after_loss = true;
      if (after_loss && e.type == hw::Event::Type::kConnecting) ++attempts;
    }
  }
  // A whole chunk of the new session.
  const size_t per_chunk = client.server_info().frames_per_chunk;
  rec.WaitFor(
      [&] {
        size_t n = 0;
        for (const auto& f : rec.frames) n += f.session_id == second && f.chunk_index == 1;
        return n >= per_chunk;
      },
      args.timeout, "a chunk of the new session");
  client.Stop();
  hw::Status s = client.Join();
  if (!s.ok()) Fail("Run() after Stop(): ", s.ToString());
  if (second.empty() || second == first) Fail("no new session id (", second, ")");
  std::cout << "RECOVERED session=" << second << " attempts=" << attempts << std::endl;
  std::cout << "OK scenario=restart attempts=" << attempts << std::endl;
}

// Per-frame latency on a lockstep stream: transport = this client's receive time minus the
// frame's server timestamp (taken after encoding, just before the write), decode = the core's
// decode into pixels; per chunk, the server's encode seconds for its frames.
void ScenarioLatency(const Args& args) {
  Recorder rec("main", /*print_events=*/false);
  rec.on_frame = [](const hw::Frame& f) {
    std::cout << "FRAME chunk=" << f.chunk_index << " index=" << f.index_in_chunk
              << " bytes=" << f.encoded_bytes
              << " transport_us=" << (f.received_unix_ns - f.server_timestamp_ns) / 1000.0
              << " decode_us=" << f.decode_seconds * 1e6 << std::endl;
  };
  hw::ClientOptions o = Options(args, hw::StreamMode::kLockstep);
  o.deliver_reset_frame = false;
  hw::WorldClient client(o, rec.frame_callback(), rec.event_callback());
  client.Start();
  rec.WaitFor([&] { return rec.Count(hw::Event::Type::kSessionStarted) == 1; }, args.timeout,
              "SESSION_STARTED");
  for (int k = 1; k <= args.chunks; ++k) {
    client.Send(hw::Action::Continue());
    rec.WaitFor([&] { return rec.Count(hw::Event::Type::kChunkDone) == static_cast<size_t>(k); },
                args.timeout, "CHUNK_DONE " + std::to_string(k));
  }
  client.Stop();
  hw::Status s = client.Join();
  if (!s.ok()) Fail("Run(): ", s.ToString());
  for (const auto& e : rec.events) {
    if (e.type != hw::Event::Type::kChunkDone) continue;
    size_t n = 0;
    for (const auto& f : rec.frames) n += f.chunk_index == e.chunk_index;
    std::cout << "CHUNK index=" << e.chunk_index << " frames=" << n
              << " encode_s=" << e.encode_seconds << " denoise_s=" << e.denoise_seconds
              << " vae_decode_s=" << e.decode_seconds << std::endl;
  }
  std::cout << "OK scenario=latency encoding=" << hw::EncodingName(args.encoding)
            << " frames=" << rec.frames.size() << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  auto parse = [&args](const std::string& key, const std::string& value) {
    if (key == "--encoding") {
      if (!hw::ParseEncoding(value, &args.encoding)) throw std::invalid_argument("unknown encoding");
    } else if (key == "--format") {
      if (value == "rgb") {
        args.format = hw::PixelFormat::kRgb8;
      } else if (value == "rgba") {
        args.format = hw::PixelFormat::kRgba8;
      } else if (value == "bgra") {
        args.format = hw::PixelFormat::kBgra8;
      } else {
        throw std::invalid_argument("unknown pixel format");
      }
    } else if (key == "--width") {
      args.width = static_cast<uint32_t>(std::stoul(value));
    } else if (key == "--height") {
      args.height = static_cast<uint32_t>(std::stoul(value));
    } else if (key == "--seed") {
      args.seed = std::stoull(value);
    } else if (key == "--chunks") {
      args.chunks = std::stoi(value);
    } else if (key == "--timeout") {
      args.timeout = std::stod(value);
    } else {
      return false;
    }
    return true;
  };
  // Every scenario first says which decoders this build has.
  auto run = [&args](void (*scenario)(const Args&)) {
    return [&args, scenario] {
      std::cout << "DECODERS rgb24=1 jpeg=" << hw::DecoderAvailable(hw::Encoding::kJpeg)
                << " h264=" << hw::DecoderAvailable(hw::Encoding::kH264) << std::endl;
      scenario(args);
    };
  };
  const kit::Scenarios scenarios = {
      {"stream", run(ScenarioStream)},   {"freerun", run(ScenarioFreeRun)},
      {"decode", run(ScenarioDecode)},   {"unauthenticated", run(ScenarioUnauthenticated)},
      {"restart", run(ScenarioRestart)}, {"latency", run(ScenarioLatency)},
  };
  return kit::Main(argc, argv, "helios_world_harness",
                   "--target HOST:PORT --token TOKEN --scenario "
                   "stream|freerun|decode|unauthenticated|restart|latency [--encoding rgb24|jpeg|h264] "
                   "[--format rgb|rgba|bgra] [--width 64] [--height 64] [--seed 7] [--chunks 2] "
                   "[--timeout 240] [--tls-ca CA.pem] [--tls-cert C.pem --tls-key C.key]",
                   &args, parse, scenarios);
}
