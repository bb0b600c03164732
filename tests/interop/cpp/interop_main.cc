// helios_interop: drives a live helios server through the lower layer of the C++ client core
// (helios_world::Connection, integrations/unreal/.../HeliosWorldCore), one scenario per run.
//
//   helios_interop --target 127.0.0.1:50051 --token T --scenario stream|unauthenticated|errors|restart
//                  [--tls-ca CA.pem [--tls-cert CLIENT.pem --tls-key CLIENT.key]]
//
// Two more scenarios test the client's side of the wire: `handshake` (GetServerInfo once: a TLS
// check) and `retry` (against tests/scripted_world.py, which fails calls on a script: what grpc
// retries under the shared retry policy, and with which action_seq).
//
// Output is one fact per line, `WORD key=value ...`, flushed as it happens; the last line is
// `OK scenario=NAME ...` (exit 0) or `FAIL scenario=NAME reason=...` (exit 1). Every check compares
// what the contract (proto/helios/v1/world.proto) promises with what arrived. docs/interop.md lists
// what each scenario verifies.
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include "harness_kit.h"
#include "helios_world/connection.h"

namespace hw = helios_world;
namespace kit = helios_harness;
using kit::Crc32;
using kit::Expect;
using kit::ExpectEq;
using kit::Fail;
using kit::Hex;

namespace {

struct Args : kit::CommonArgs {
  uint32_t width = 64;
  uint32_t height = 64;
  uint64_t seed = 7;
  std::string prompt = "a lighthouse on a cliff above a calm sea, golden hour";
  std::string switch_prompt = "the same lighthouse in a night storm, lightning";
  double retry_seconds = 120.0;
};


void ExpectOk(const hw::Status& status, const std::string& call) {
  if (!status.ok()) Fail(call, " failed: ", status.ToString());
}

void ExpectCode(const hw::Status& status, hw::StatusCode want, const std::string& check) {
  std::cout << "CHECK name=" << check << " want=" << hw::StatusCodeName(want)
            << " got=" << hw::StatusCodeName(status.code) << std::endl;
  if (status.code != want) {
    Fail(check, ": expected ", hw::StatusCodeName(want), ", got ", status.ToString());
  }
}

// The proto's name of an encoding (FRAME_ENCODING_RGB24 -> "RGB24"), as the checks print it.
std::string WireName(hw::Encoding encoding) {
  std::string name = hw::EncodingName(encoding);
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

// Streams send every frame as RGB24, the bytes the checks hash.
hw::FrameOptions RawFrames() {
  hw::FrameOptions frames;
  frames.encoding = hw::Encoding::kRgb24;
  return frames;
}


hw::Connection MakeClient(const Args& args, const std::string& token) {
  hw::ConnectionOptions options;
  kit::Connect(args, token, &options);
  return hw::Connection(options);
}

// -------------------------------------------------------------------------------------------------
// Frame checks
// -------------------------------------------------------------------------------------------------

struct Geometry {
  uint32_t width;
  uint32_t height;
  uint32_t frames_per_chunk;
};

// One frame of chunk `chunk` at position `index_in_chunk`, RGB24 of the session's size.
void CheckFrame(const hw::EncodedFrame& f, const Geometry& g, uint64_t chunk, uint32_t index_in_chunk,
                uint64_t action_seq, const std::string& where) {
  ExpectEq(f.chunk_index, chunk, where + " chunk_index");
  ExpectEq(f.index_in_chunk, index_in_chunk, where + " index_in_chunk");
  // frame_index counts frames since Reset, frames_per_chunk per chunk.
  ExpectEq(f.frame_index, chunk * g.frames_per_chunk + index_in_chunk, where + " frame_index");
  ExpectEq(f.width, g.width, where + " width");
  ExpectEq(f.height, g.height, where + " height");
  ExpectEq(std::string(WireName(f.encoding)), std::string("RGB24"), where + " encoding");
  ExpectEq(f.data.size(), static_cast<size_t>(g.width) * g.height * 3, where + " RGB24 byte count");
  ExpectEq(f.action_seq, action_seq, where + " action_seq");
}

// A unary Reset / Step answer with FRAME_SELECTION_LAST: one frame, the chunk's last.
void CheckLastFrameChunk(const hw::Chunk& c, const Geometry& g, uint64_t chunk,
                         uint64_t action_seq, const std::string& where) {
  ExpectEq(c.chunk_index, chunk, where + " chunk.chunk_index");
  ExpectEq(c.frames.size(), size_t{1}, where + " frames with FRAME_SELECTION_LAST");
  CheckFrame(c.frames[0], g, chunk, g.frames_per_chunk - 1, action_seq, where);
}

// Streams one chunk for `action` (lockstep) and checks every frame as it arrives.
// Returns the CRC-32 of the chunk's last frame.
uint32_t StreamChunk(hw::WorldStream* stream, const Geometry& g, uint64_t chunk, uint64_t seq,
                     const hw::Action& action, const std::string& where) {
  Expect(stream->SendAction(seq, action), where + ": the stream refused an action write");
  uint32_t next = 0;
  uint32_t last_crc = 0;
  auto on_frame = [&](hw::EncodedFrame& f) {
    CheckFrame(f, g, chunk, next, seq, where + " frame " + std::to_string(next));
    last_crc = Crc32(f.data);
    ++next;
    return true;
  };
  auto on_event = [&](const hw::StreamEvent& e) {
    Fail(where, ": unexpected ", hw::StreamEventTypeName(e.type), " event in lockstep (", e.message,
         ")");
  };
  uint64_t done_index = 0;
  ExpectOk(stream->ReadChunk(on_frame, on_event, &done_index), where + " ReadChunk");
  ExpectEq(next, g.frames_per_chunk, where + " frames before CHUNK_DONE");
  ExpectEq(done_index, chunk, where + " CHUNK_DONE chunk_index");
  std::cout << "CHUNK index=" << chunk << " frames=" << next << " action_seq=" << seq
            << " last_crc32=" << Hex(last_crc) << std::endl;
  return last_crc;
}

// Handshake and a Reset 64x64 session; returns the session's geometry.
Geometry OpenWorld(hw::Connection* client, const Args& args, std::string* session_id,
                   uint32_t* reset_crc) {
  hw::ServerInfo info;
  ExpectOk(client->GetServerInfo(&info), "GetServerInfo");
  std::string encodings;
  bool has_rgb24 = false;
  for (auto e : info.encodings) {
    encodings += (encodings.empty() ? "" : ",") + std::string(WireName(e));
    has_rgb24 = has_rgb24 || e == hw::Encoding::kRgb24;
  }
  std::cout << "INFO api_version=" << info.api_version << " model=" << info.model_name
            << " frames_per_chunk=" << info.frames_per_chunk << " fps=" << info.fps
            << " size_multiple=" << info.size_multiple << " encodings=" << encodings
            << " auth_required=" << (info.auth_required ? "true" : "false") << std::endl;
  auto join = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ",") + n;
    return out.empty() ? std::string("-") : out;
  };
  std::cout << "ACTIONS described=" << (info.has_actions ? "true" : "false")
            << " keys=" << join(info.actions.keys) << " axes=" << join(info.actions.axes)
            << " moves=" << join(info.actions.moves) << " seam_blend_frames=" << info.seam_blend_frames
            << " knows_W=" << (info.actions.HasKey("W") ? "true" : "false")
            << " knows_arrowup=" << (info.actions.HasKey("ArrowUp") ? "true" : "false") << std::endl;
  Expect(has_rgb24, "GetServerInfo.encodings lacks RGB24");
  Expect(info.frames_per_chunk > 0, "GetServerInfo.frames_per_chunk is 0");

  uint32_t width = 0, height = 0;
  ExpectOk(client->CreateSession(args.width, args.height, session_id, &width, &height),
           "CreateSession");
  Expect(!session_id->empty(), "CreateSession returned an empty session_id");
  ExpectEq(width, args.width, "CreateSession.width");
  ExpectEq(height, args.height, "CreateSession.height");
  std::cout << "SESSION id=" << *session_id << " width=" << width << " height=" << height
            << std::endl;
  Geometry g{width, height, info.frames_per_chunk};

  hw::FrameOptions last{hw::Encoding::kRgb24, hw::FrameSelection::kLast, 0};
  hw::Chunk chunk;
  ExpectOk(client->Reset(*session_id, args.prompt, args.seed, last, &chunk), "Reset");
  CheckLastFrameChunk(chunk, g, 0, 0, "Reset");
  *reset_crc = Crc32(chunk.frames[0].data);
  std::cout << "RESET chunk=0 frames=1 bytes=" << chunk.frames[0].data.size()
            << " crc32=" << Hex(*reset_crc) << std::endl;
  return g;
}

// -------------------------------------------------------------------------------------------------
// Scenarios
// -------------------------------------------------------------------------------------------------

// Reset, a unary Step with a prompt, then a lockstep Stream: 2 chunks as they are, a 3rd after a
// prompt switch sent as a stream action.
void ScenarioStream(const Args& args) {
  hw::Connection client = MakeClient(args, args.token);
  std::string session;
  uint32_t reset_crc = 0;
  Geometry g = OpenWorld(&client, args, &session, &reset_crc);

  hw::FrameOptions last{hw::Encoding::kRgb24, hw::FrameSelection::kLast, 0};
  hw::Chunk chunk;
  ExpectOk(client.Step(session, hw::Action::Prompt(args.prompt + ", seen from the sea"), 1, last,
                       &chunk),
           "Step");
  CheckLastFrameChunk(chunk, g, 1, 1, "Step");
  std::cout << "STEP chunk=1 frames=1 action_seq=1 crc32=" << Hex(Crc32(chunk.frames[0].data))
            << std::endl;

  std::unique_ptr<hw::WorldStream> stream;
  ExpectOk(client.OpenStream(session, hw::StreamMode::kLockstep, RawFrames(), &stream),
           "OpenStream");
  std::cout << "STREAM started mode=LOCKSTEP" << std::endl;
  StreamChunk(stream.get(), g, 2, 2, hw::Action::Continue(), "lockstep chunk 2");
  StreamChunk(stream.get(), g, 3, 3, hw::Action::Continue(), "lockstep chunk 3");
  std::cout << "LOCKSTEP frames=" << 2 * g.frames_per_chunk << " chunks=2" << std::endl;
  StreamChunk(stream.get(), g, 4, 4, hw::Action::Prompt(args.switch_prompt), "prompt switch chunk 4");
  std::cout << "PROMPT_SWITCH chunk=4 frames=" << g.frames_per_chunk << " action_seq=4" << std::endl;
  ExpectOk(stream->Finish(), "Stream half-close");
  std::cout << "STREAM_END status=OK" << std::endl;
  ExpectOk(client.CloseSession(session), "CloseSession");
  std::cout << "OK scenario=stream frames=" << 3 * g.frames_per_chunk << " chunks=3" << std::endl;
}

// A wrong token and a missing token are refused on unary calls and on the stream.
void ScenarioUnauthenticated(const Args& args) {
  hw::ServerInfo info;
  std::string session;
  hw::Connection wrong = MakeClient(args, args.token + "-wrong");
  ExpectCode(wrong.GetServerInfo(&info), hw::StatusCode::kUnauthenticated, "wrong_token_info");
  ExpectCode(wrong.CreateSession(args.width, args.height, &session),
             hw::StatusCode::kUnauthenticated, "wrong_token_create");
  std::unique_ptr<hw::WorldStream> stream;
  ExpectCode(wrong.OpenStream("no-such-session", hw::StreamMode::kLockstep,
                              RawFrames(), &stream),
             hw::StatusCode::kUnauthenticated, "wrong_token_stream");
  hw::Connection missing = MakeClient(args, "");
  ExpectCode(missing.GetServerInfo(&info), hw::StatusCode::kUnauthenticated, "missing_token_info");
  // Health is exempt from auth (load balancers and probes carry no token).
  bool serving = false;
  hw::Status health = missing.CheckHealth(&serving);
  const std::string got =
      health.ok() ? (serving ? "SERVING" : "NOT_SERVING") : hw::StatusCodeName(health.code);
  std::cout << "CHECK name=missing_token_health want=SERVING got=" << got << std::endl;
  ExpectEq(got, std::string("SERVING"), "grpc.health.v1 Check without a token");
  // The right token still works on the same server.
  hw::Connection right = MakeClient(args, args.token);
  ExpectOk(right.GetServerInfo(&info), "GetServerInfo with the right token");
  std::cout << "OK scenario=unauthenticated checks=5" << std::endl;
}

// Status codes a client can act on: NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION.
void ScenarioErrors(const Args& args) {
  hw::Connection client = MakeClient(args, args.token);
  hw::FrameOptions none{hw::Encoding::kRgb24, hw::FrameSelection::kNone, 0};
  hw::Chunk chunk;
  ExpectCode(client.Step("no-such-session", hw::Action::Continue(), 0, none, &chunk),
             hw::StatusCode::kNotFound, "step_unknown_session");
  ExpectCode(client.Reset("no-such-session", args.prompt, args.seed, none, &chunk),
             hw::StatusCode::kNotFound, "reset_unknown_session");
  std::string session;
  ExpectCode(client.CreateSession(args.width + 1, args.height, &session),
             hw::StatusCode::kInvalidArgument, "create_bad_size");

  uint32_t reset_crc = 0;
  Geometry g = OpenWorld(&client, args, &session, &reset_crc);
  (void)g;
  // TransitionAction.chunks must be 1..64 (0: default).
  ExpectCode(client.Step(session, hw::Action::Transition("a desert", 1000), 0, none, &chunk),
             hw::StatusCode::kInvalidArgument, "step_bad_action");
  // A MoveAction for a model without moves (tiny reads actions as prompt phrases).
  ExpectCode(client.Step(session, hw::Action::Move("e"), 0, none, &chunk),
             hw::StatusCode::kInvalidArgument, "step_move_without_moves");
  ExpectOk(client.CloseSession(session), "CloseSession");
  ExpectCode(client.Step(session, hw::Action::Continue(), 0, none, &chunk),
             hw::StatusCode::kFailedPrecondition, "step_after_close");
  ExpectCode(client.CloseSession(session), hw::StatusCode::kOk, "close_twice");
  std::cout << "OK scenario=errors checks=7" << std::endl;
}

// Survives a server restart on the same port: a session is opened, then (after a line on stdin,
// or EOF) the client keeps the same channel, probes health with backoff until the server is
// SERVING again, and streams one chunk on a new session.
void ScenarioRestart(const Args& args) {
  hw::Connection client = MakeClient(args, args.token);
  hw::ServerInfo info;
  int attempts = 0;
  ExpectOk(client.WaitForServer(args.retry_seconds, &info, &attempts), "first handshake");
  std::string session;
  uint32_t reset_crc = 0;
  OpenWorld(&client, args, &session, &reset_crc);
  std::cout << "READY session=" << session << std::endl;

  std::string line;
  std::getline(std::cin, line);  // the driver restarts the server, then writes a line

  hw::FrameOptions none{hw::Encoding::kRgb24, hw::FrameSelection::kNone, 0};
  hw::Chunk chunk;
  hw::Status outage = client.Step(session, hw::Action::Continue(), 0, none, &chunk);
  std::cout << "OUTAGE status=" << hw::StatusCodeName(outage.code) << std::endl;

  const auto t0 = std::chrono::steady_clock::now();
  ExpectOk(client.WaitForServer(args.retry_seconds, &info, &attempts), "handshake after restart");
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "RECOVERED attempts=" << attempts << " seconds=" << waited << std::endl;

  // Sessions live in the server's memory: the new server does not know the old one.
  hw::Status old = client.Step(session, hw::Action::Continue(), 0, none, &chunk);
  std::cout << "OLD_SESSION status=" << hw::StatusCodeName(old.code) << std::endl;
  Expect(!old.ok(), "a session of the previous server process still answers");

  std::string fresh;
  Geometry g = OpenWorld(&client, args, &fresh, &reset_crc);
  std::unique_ptr<hw::WorldStream> stream;
  ExpectOk(client.OpenStream(fresh, hw::StreamMode::kLockstep, RawFrames(), &stream),
           "OpenStream");
  StreamChunk(stream.get(), g, 1, 1, hw::Action::Continue(), "after restart chunk 1");
  ExpectOk(stream->Finish(), "Stream half-close");
  ExpectOk(client.CloseSession(fresh), "CloseSession");
  std::cout << "OK scenario=restart attempts=" << attempts << " frames=" << g.frames_per_chunk
            << " chunks=1" << std::endl;
}

// One GetServerInfo: over TLS when --tls-ca is given. Prints its status either way.
void ScenarioHandshake(const Args& args) {
  hw::Connection client = MakeClient(args, args.token);
  hw::ServerInfo info;
  hw::Status status = client.GetServerInfo(&info);
  std::cout << "HANDSHAKE status=" << hw::StatusCodeName(status.code) << std::endl;
  ExpectOk(status, "GetServerInfo");
  std::cout << "OK scenario=handshake api_version=" << info.api_version << std::endl;
}

// Against tests/scripted_world.py, whose failures the driver scripts: GetServerInfo (UNAVAILABLE
// twice: retried), Step (UNAVAILABLE twice, then a chunk: retried with one action_seq), Step again
// (ABORTED: the session is lost, never retried), CreateSession (UNAVAILABLE: not retried, it would
// make a second session). The driver counts the attempts that reached the server.
void ScenarioRetry(const Args& args) {
  hw::Connection client = MakeClient(args, args.token);
  hw::ServerInfo info;
  ExpectOk(client.GetServerInfo(&info), "GetServerInfo");
  hw::FrameOptions none{hw::Encoding::kRgb24, hw::FrameSelection::kNone, 0};
  hw::Chunk chunk;
  ExpectOk(client.Step("s1", hw::Action::Continue(), 0, none, &chunk), "Step through UNAVAILABLE");
  std::cout << "STEP chunk=" << chunk.chunk_index << std::endl;
  hw::Status lost = client.Step("s1", hw::Action::Continue(), 0, none, &chunk);
  std::cout << "LOST status=" << hw::StatusCodeName(lost.code) << std::endl;
  std::string session;
  hw::Status create = client.CreateSession(64, 64, &session);
  std::cout << "CREATE status=" << hw::StatusCodeName(create.code) << std::endl;
  std::cout << "OK scenario=retry" << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  auto parse = [&args](const std::string& key, const std::string& value) {
    if (key == "--width") {
      args.width = static_cast<uint32_t>(std::stoul(value));
    } else if (key == "--height") {
      args.height = static_cast<uint32_t>(std::stoul(value));
    } else if (key == "--seed") {
      args.seed = std::stoull(value);
    } else if (key == "--retry-seconds") {
      args.retry_seconds = std::stod(value);
    } else {
      return false;
    }
    return true;
  };
  auto run = [&args](void (*scenario)(const Args&)) { return [&args, scenario] { scenario(args); }; };
  const kit::Scenarios scenarios = {
      {"stream", run(ScenarioStream)},   {"unauthenticated", run(ScenarioUnauthenticated)},
      {"errors", run(ScenarioErrors)},   {"restart", run(ScenarioRestart)},
      {"handshake", run(ScenarioHandshake)}, {"retry", run(ScenarioRetry)},
  };
  return kit::Main(argc, argv, "helios_interop",
                   "--target HOST:PORT --token TOKEN --scenario "
                   "stream|unauthenticated|errors|restart|handshake|retry [--width 64] [--height 64] "
                   "[--seed 7] [--retry-seconds 120] [--tls-ca CA.pem] [--tls-cert C.pem --tls-key C.key]",
                   &args, parse, scenarios);
}
