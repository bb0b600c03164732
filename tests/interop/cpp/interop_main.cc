// helios_interop: drives a live helios server through helios_client_core, one scenario per run.
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

#include "helios_client_core.h"

namespace hc = helios_client;

namespace {

struct Args {
  std::string target;
  std::string token;
  std::string scenario;
  uint32_t width = 64;
  uint32_t height = 64;
  uint64_t seed = 7;
  std::string prompt = "a lighthouse on a cliff above a calm sea, golden hour";
  std::string switch_prompt = "the same lighthouse in a night storm, lightning";
  double retry_seconds = 120.0;
  std::string tls_ca;  // PEM files; --tls-ca turns TLS on
  std::string tls_cert;
  std::string tls_key;
};

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Parts>
[[noreturn]] void Fail(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw Failure(out.str());
}

void Expect(bool condition, const std::string& what) {
  if (!condition) Fail(what);
}

template <typename A, typename B>
void ExpectEq(const A& got, const B& want, const std::string& what) {
  if (!(got == want)) Fail(what, ": expected ", want, ", got ", got);
}

void ExpectOk(const hc::Status& status, const std::string& call) {
  if (!status.ok()) Fail(call, " failed: ", status.ToString());
}

void ExpectCode(const hc::Status& status, hc::StatusCode want, const std::string& check) {
  std::cout << "CHECK name=" << check << " want=" << hc::StatusCodeName(want)
            << " got=" << hc::StatusCodeName(status.code) << std::endl;
  if (status.code != want) {
    Fail(check, ": expected ", hc::StatusCodeName(want), ", got ", status.ToString());
  }
}

uint32_t Crc32(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

std::string Hex(uint32_t value) {
  char buffer[9];
  std::snprintf(buffer, sizeof buffer, "%08x", value);
  return buffer;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read ", path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

hc::Client MakeClient(const Args& args, const std::string& token) {
  hc::ClientOptions options;
  options.target = args.target;
  options.token = token;
  if (!args.tls_ca.empty()) {
    options.tls = true;
    options.tls_root_certs_pem = ReadFile(args.tls_ca);
  }
  if (!args.tls_cert.empty()) options.tls_client_cert_pem = ReadFile(args.tls_cert);
  if (!args.tls_key.empty()) options.tls_client_key_pem = ReadFile(args.tls_key);
  return hc::Client(options);
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
void CheckFrame(const hc::Frame& f, const Geometry& g, uint64_t chunk, uint32_t index_in_chunk,
                uint64_t action_seq, const std::string& where) {
  ExpectEq(f.chunk_index, chunk, where + " chunk_index");
  ExpectEq(f.index_in_chunk, index_in_chunk, where + " index_in_chunk");
  // frame_index counts frames since Reset, frames_per_chunk per chunk.
  ExpectEq(f.frame_index, chunk * g.frames_per_chunk + index_in_chunk, where + " frame_index");
  ExpectEq(f.width, g.width, where + " width");
  ExpectEq(f.height, g.height, where + " height");
  ExpectEq(std::string(hc::FrameEncodingName(f.encoding)), std::string("RGB24"), where + " encoding");
  ExpectEq(f.data.size(), static_cast<size_t>(g.width) * g.height * 3, where + " RGB24 byte count");
  ExpectEq(f.action_seq, action_seq, where + " action_seq");
}

// A unary Reset / Step answer with FRAME_SELECTION_LAST: one frame, the chunk's last.
void CheckLastFrameChunk(const hc::Chunk& c, const Geometry& g, uint64_t chunk,
                         uint64_t action_seq, const std::string& where) {
  ExpectEq(c.chunk_index, chunk, where + " chunk.chunk_index");
  ExpectEq(c.frames.size(), size_t{1}, where + " frames with FRAME_SELECTION_LAST");
  CheckFrame(c.frames[0], g, chunk, g.frames_per_chunk - 1, action_seq, where);
}

// Streams one chunk for `action` (lockstep) and checks every frame as it arrives.
// Returns the CRC-32 of the chunk's last frame.
uint32_t StreamChunk(hc::WorldStream* stream, const Geometry& g, uint64_t chunk, uint64_t seq,
                     const hc::Action& action, const std::string& where) {
  Expect(stream->SendAction(seq, action), where + ": the stream refused an action write");
  uint32_t next = 0;
  uint32_t last_crc = 0;
  auto on_frame = [&](hc::Frame& f) {
    CheckFrame(f, g, chunk, next, seq, where + " frame " + std::to_string(next));
    last_crc = Crc32(f.data);
    ++next;
    return true;
  };
  auto on_event = [&](const hc::StreamEvent& e) {
    Fail(where, ": unexpected ", hc::StreamEventTypeName(e.type), " event in lockstep (", e.message,
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
Geometry OpenWorld(hc::Client* client, const Args& args, std::string* session_id,
                   uint32_t* reset_crc) {
  hc::ServerInfo info;
  ExpectOk(client->GetServerInfo(&info), "GetServerInfo");
  std::string encodings;
  bool has_rgb24 = false;
  for (auto e : info.encodings) {
    encodings += (encodings.empty() ? "" : ",") + std::string(hc::FrameEncodingName(e));
    has_rgb24 = has_rgb24 || e == hc::FrameEncoding::kRgb24;
  }
  std::cout << "INFO api_version=" << info.api_version << " model=" << info.model_name
            << " frames_per_chunk=" << info.frames_per_chunk << " fps=" << info.fps
            << " size_multiple=" << info.size_multiple << " encodings=" << encodings
            << " auth_required=" << (info.auth_required ? "true" : "false") << std::endl;
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

  hc::FrameOptions last{hc::FrameEncoding::kRgb24, hc::FrameSelection::kLast, 0};
  hc::Chunk chunk;
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
  hc::Client client = MakeClient(args, args.token);
  std::string session;
  uint32_t reset_crc = 0;
  Geometry g = OpenWorld(&client, args, &session, &reset_crc);

  hc::FrameOptions last{hc::FrameEncoding::kRgb24, hc::FrameSelection::kLast, 0};
  hc::Chunk chunk;
  ExpectOk(client.Step(session, hc::Action::Prompt(args.prompt + ", seen from the sea"), 1, last,
                       &chunk),
           "Step");
  CheckLastFrameChunk(chunk, g, 1, 1, "Step");
  std::cout << "STEP chunk=1 frames=1 action_seq=1 crc32=" << Hex(Crc32(chunk.frames[0].data))
            << std::endl;

  std::unique_ptr<hc::WorldStream> stream;
  ExpectOk(client.OpenStream(session, hc::StreamMode::kLockstep, hc::FrameEncoding::kRgb24, &stream),
           "OpenStream");
  std::cout << "STREAM started mode=LOCKSTEP" << std::endl;
  StreamChunk(stream.get(), g, 2, 2, hc::Action::Continue(), "lockstep chunk 2");
  StreamChunk(stream.get(), g, 3, 3, hc::Action::Continue(), "lockstep chunk 3");
  std::cout << "LOCKSTEP frames=" << 2 * g.frames_per_chunk << " chunks=2" << std::endl;
  StreamChunk(stream.get(), g, 4, 4, hc::Action::Prompt(args.switch_prompt), "prompt switch chunk 4");
  std::cout << "PROMPT_SWITCH chunk=4 frames=" << g.frames_per_chunk << " action_seq=4" << std::endl;
  ExpectOk(stream->Finish(), "Stream half-close");
  std::cout << "STREAM_END status=OK" << std::endl;
  ExpectOk(client.CloseSession(session), "CloseSession");
  std::cout << "OK scenario=stream frames=" << 3 * g.frames_per_chunk << " chunks=3" << std::endl;
}

// A wrong token and a missing token are refused on unary calls and on the stream.
void ScenarioUnauthenticated(const Args& args) {
  hc::ServerInfo info;
  std::string session;
  hc::Client wrong = MakeClient(args, args.token + "-wrong");
  ExpectCode(wrong.GetServerInfo(&info), hc::StatusCode::kUnauthenticated, "wrong_token_info");
  ExpectCode(wrong.CreateSession(args.width, args.height, &session),
             hc::StatusCode::kUnauthenticated, "wrong_token_create");
  std::unique_ptr<hc::WorldStream> stream;
  ExpectCode(wrong.OpenStream("no-such-session", hc::StreamMode::kLockstep,
                              hc::FrameEncoding::kRgb24, &stream),
             hc::StatusCode::kUnauthenticated, "wrong_token_stream");
  hc::Client missing = MakeClient(args, "");
  ExpectCode(missing.GetServerInfo(&info), hc::StatusCode::kUnauthenticated, "missing_token_info");
  // Health is exempt from auth (load balancers and probes carry no token).
  bool serving = false;
  hc::Status health = missing.CheckHealth(&serving);
  const std::string got =
      health.ok() ? (serving ? "SERVING" : "NOT_SERVING") : hc::StatusCodeName(health.code);
  std::cout << "CHECK name=missing_token_health want=SERVING got=" << got << std::endl;
  ExpectEq(got, std::string("SERVING"), "grpc.health.v1 Check without a token");
  // The right token still works on the same server.
  hc::Client right = MakeClient(args, args.token);
  ExpectOk(right.GetServerInfo(&info), "GetServerInfo with the right token");
  std::cout << "OK scenario=unauthenticated checks=5" << std::endl;
}

// Status codes a client can act on: NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION.
void ScenarioErrors(const Args& args) {
  hc::Client client = MakeClient(args, args.token);
  hc::FrameOptions none{hc::FrameEncoding::kRgb24, hc::FrameSelection::kNone, 0};
  hc::Chunk chunk;
  ExpectCode(client.Step("no-such-session", hc::Action::Continue(), 0, none, &chunk),
             hc::StatusCode::kNotFound, "step_unknown_session");
  ExpectCode(client.Reset("no-such-session", args.prompt, args.seed, none, &chunk),
             hc::StatusCode::kNotFound, "reset_unknown_session");
  std::string session;
  ExpectCode(client.CreateSession(args.width + 1, args.height, &session),
             hc::StatusCode::kInvalidArgument, "create_bad_size");

  uint32_t reset_crc = 0;
  Geometry g = OpenWorld(&client, args, &session, &reset_crc);
  (void)g;
  // TransitionAction.chunks must be 1..64 (0: default).
  ExpectCode(client.Step(session, hc::Action::Transition("a desert", 1000), 0, none, &chunk),
             hc::StatusCode::kInvalidArgument, "step_bad_action");
  ExpectOk(client.CloseSession(session), "CloseSession");
  ExpectCode(client.Step(session, hc::Action::Continue(), 0, none, &chunk),
             hc::StatusCode::kFailedPrecondition, "step_after_close");
  ExpectCode(client.CloseSession(session), hc::StatusCode::kOk, "close_twice");
  std::cout << "OK scenario=errors checks=6" << std::endl;
}

// Survives a server restart on the same port: a session is opened, then (after a line on stdin,
// or EOF) the client keeps the same channel, probes health with backoff until the server is
// SERVING again, and streams one chunk on a new session.
void ScenarioRestart(const Args& args) {
  hc::Client client = MakeClient(args, args.token);
  hc::ServerInfo info;
  int attempts = 0;
  ExpectOk(client.WaitForServer(args.retry_seconds, &info, &attempts), "first handshake");
  std::string session;
  uint32_t reset_crc = 0;
  OpenWorld(&client, args, &session, &reset_crc);
  std::cout << "READY session=" << session << std::endl;

  std::string line;
  std::getline(std::cin, line);  // the driver restarts the server, then writes a line

  hc::FrameOptions none{hc::FrameEncoding::kRgb24, hc::FrameSelection::kNone, 0};
  hc::Chunk chunk;
  hc::Status outage = client.Step(session, hc::Action::Continue(), 0, none, &chunk);
  std::cout << "OUTAGE status=" << hc::StatusCodeName(outage.code) << std::endl;

  const auto t0 = std::chrono::steady_clock::now();
  ExpectOk(client.WaitForServer(args.retry_seconds, &info, &attempts), "handshake after restart");
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "RECOVERED attempts=" << attempts << " seconds=" << waited << std::endl;

  // Sessions live in the server's memory: the new server does not know the old one.
  hc::Status old = client.Step(session, hc::Action::Continue(), 0, none, &chunk);
  std::cout << "OLD_SESSION status=" << hc::StatusCodeName(old.code) << std::endl;
  Expect(!old.ok(), "a session of the previous server process still answers");

  std::string fresh;
  Geometry g = OpenWorld(&client, args, &fresh, &reset_crc);
  std::unique_ptr<hc::WorldStream> stream;
  ExpectOk(client.OpenStream(fresh, hc::StreamMode::kLockstep, hc::FrameEncoding::kRgb24, &stream),
           "OpenStream");
  StreamChunk(stream.get(), g, 1, 1, hc::Action::Continue(), "after restart chunk 1");
  ExpectOk(stream->Finish(), "Stream half-close");
  ExpectOk(client.CloseSession(fresh), "CloseSession");
  std::cout << "OK scenario=restart attempts=" << attempts << " frames=" << g.frames_per_chunk
            << " chunks=1" << std::endl;
}

// One GetServerInfo: over TLS when --tls-ca is given. Prints its status either way.
void ScenarioHandshake(const Args& args) {
  hc::Client client = MakeClient(args, args.token);
  hc::ServerInfo info;
  hc::Status status = client.GetServerInfo(&info);
  std::cout << "HANDSHAKE status=" << hc::StatusCodeName(status.code) << std::endl;
  ExpectOk(status, "GetServerInfo");
  std::cout << "OK scenario=handshake api_version=" << info.api_version << std::endl;
}

// Against tests/scripted_world.py, whose failures the driver scripts: GetServerInfo (UNAVAILABLE
// twice: retried), Step (UNAVAILABLE twice, then a chunk: retried with one action_seq), Step again
// (ABORTED: the session is lost, never retried), CreateSession (UNAVAILABLE: not retried, it would
// make a second session). The driver counts the attempts that reached the server.
void ScenarioRetry(const Args& args) {
  hc::Client client = MakeClient(args, args.token);
  hc::ServerInfo info;
  ExpectOk(client.GetServerInfo(&info), "GetServerInfo");
  hc::FrameOptions none{hc::FrameEncoding::kRgb24, hc::FrameSelection::kNone, 0};
  hc::Chunk chunk;
  ExpectOk(client.Step("s1", hc::Action::Continue(), 0, none, &chunk), "Step through UNAVAILABLE");
  std::cout << "STEP chunk=" << chunk.chunk_index << std::endl;
  hc::Status lost = client.Step("s1", hc::Action::Continue(), 0, none, &chunk);
  std::cout << "LOST status=" << hc::StatusCodeName(lost.code) << std::endl;
  std::string session;
  hc::Status create = client.CreateSession(64, 64, &session);
  std::cout << "CREATE status=" << hc::StatusCodeName(create.code) << std::endl;
  std::cout << "OK scenario=retry" << std::endl;
}

const std::map<std::string, void (*)(const Args&)>& Scenarios() {
  static const std::map<std::string, void (*)(const Args&)> scenarios = {
      {"stream", ScenarioStream},   {"unauthenticated", ScenarioUnauthenticated},
      {"errors", ScenarioErrors},   {"restart", ScenarioRestart},
      {"handshake", ScenarioHandshake}, {"retry", ScenarioRetry},
  };
  return scenarios;
}

int Usage(const std::string& problem) {
  std::cerr << "helios_interop: " << problem << "\n"
            << "usage: helios_interop --target HOST:PORT --token TOKEN --scenario "
               "stream|unauthenticated|errors|restart|handshake|retry [--width 64] [--height 64] "
               "[--seed 7] [--retry-seconds 120] [--tls-ca CA.pem] [--tls-cert C.pem --tls-key C.key]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (i + 1 >= argc) return Usage("missing a value after " + key);
    const std::string value = argv[++i];
    if (key == "--target") {
      args.target = value;
    } else if (key == "--token") {
      args.token = value;
    } else if (key == "--scenario") {
      args.scenario = value;
    } else if (key == "--width") {
      args.width = static_cast<uint32_t>(std::stoul(value));
    } else if (key == "--height") {
      args.height = static_cast<uint32_t>(std::stoul(value));
    } else if (key == "--seed") {
      args.seed = std::stoull(value);
    } else if (key == "--retry-seconds") {
      args.retry_seconds = std::stod(value);
    } else if (key == "--tls-ca") {
      args.tls_ca = value;
    } else if (key == "--tls-cert") {
      args.tls_cert = value;
    } else if (key == "--tls-key") {
      args.tls_key = value;
    } else {
      return Usage("unknown option " + key);
    }
  }
  if (args.target.empty()) return Usage("--target is required");
  auto found = Scenarios().find(args.scenario);
  if (found == Scenarios().end()) return Usage("unknown scenario '" + args.scenario + "'");
  try {
    found->second(args);
  } catch (const Failure& failure) {
    std::cout << "FAIL scenario=" << args.scenario << " reason=" << failure.what() << std::endl;
    return 1;
  }
  return 0;
}
