// harness_kit.h: what the two C++ scenario harnesses share (helios_world_harness here, on the core's
// WorldClient; tests/interop/cpp's helios_interop, on its Connection): checks that fail a scenario,
// CRC-32 of frame bytes, the common command line (--target --token --scenario and the TLS files) and
// the run of one scenario, which prints `OK ...` / `FAIL scenario=NAME reason=...`.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

#include "helios_world/connection.h"

namespace helios_harness {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Parts>
[[noreturn]] void Fail(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw Failure(out.str());
}

inline void Expect(bool condition, const std::string& what) {
  if (!condition) Fail(what);
}

template <typename A, typename B>
void ExpectEq(const A& got, const B& want, const std::string& what) {
  if (!(got == want)) Fail(what, ": expected ", want, ", got ", got);
}

inline uint32_t Crc32(const uint8_t* data, size_t size, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

inline uint32_t Crc32(const std::string& data) {
  return Crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size());
}

inline std::string Hex(uint32_t value) {
  char buffer[9];
  std::snprintf(buffer, sizeof buffer, "%08x", value);
  return buffer;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot read ", path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The options every scenario of both harnesses takes.
struct CommonArgs {
  std::string target;
  std::string token;
  std::string scenario;
  std::string tls_ca;  // PEM files; --tls-ca turns TLS on
  std::string tls_cert;
  std::string tls_key;
};

// Target, token and TLS of `args` into connection options (a WorldClient's ClientOptions too).
inline void Connect(const CommonArgs& args, const std::string& token,
                    helios_world::ConnectionOptions* options) {
  options->target = args.target;
  options->token = token;
  if (!args.tls_ca.empty()) {
    options->tls = true;
    options->tls_root_certs_pem = ReadFile(args.tls_ca);
  }
  if (!args.tls_cert.empty()) options->tls_client_cert_pem = ReadFile(args.tls_cert);
  if (!args.tls_key.empty()) options->tls_client_key_pem = ReadFile(args.tls_key);
}

using Scenarios = std::map<std::string, std::function<void()>>;
// Takes a harness's own option (`key` `value`); false: unknown. Throws std::invalid_argument with a
// message for a bad value.
using OptionParser = std::function<bool(const std::string& key, const std::string& value)>;

// Parses the command line into `args` (the common options) and `parse` (the harness's own), runs
// the scenario named by --scenario and returns the exit code: 0 OK, 1 FAIL (printed as
// `FAIL scenario=NAME reason=...`), 2 a bad command line (with `usage` on stderr).
inline int Main(int argc, char** argv, const std::string& name, const std::string& usage,
                CommonArgs* args, const OptionParser& parse, const Scenarios& scenarios) {
  auto bad = [&](const std::string& problem) {
    std::cerr << name << ": " << problem << "\nusage: " << name << " " << usage << "\n";
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (i + 1 >= argc) return bad("missing a value after " + key);
    const std::string value = argv[++i];
    if (key == "--target") {
      args->target = value;
    } else if (key == "--token") {
      args->token = value;
    } else if (key == "--scenario") {
      args->scenario = value;
    } else if (key == "--tls-ca") {
      args->tls_ca = value;
    } else if (key == "--tls-cert") {
      args->tls_cert = value;
    } else if (key == "--tls-key") {
      args->tls_key = value;
    } else {
      try {
        if (!parse(key, value)) return bad("unknown option " + key);
      } catch (const std::exception& e) {
        return bad("bad value '" + value + "' for " + key + ": " + e.what());
      }
    }
  }
  if (args->target.empty()) return bad("--target is required");
  auto found = scenarios.find(args->scenario);
  if (found == scenarios.end()) return bad("unknown scenario '" + args->scenario + "'");
  try {
    found->second();
  } catch (const Failure& failure) {
    std::cout << "FAIL scenario=" << args->scenario << " reason=" << failure.what() << std::endl;
    std::_Exit(1);  // a client thread may still be blocked in a call: do not wait for it
  }
  return 0;
}

}  // namespace helios_harness
