// The retry policy every helios client uses, as a gRPC service config, and the keepalive that goes
// with it. The JSON is helios_sdk/retry_policy.json byte for byte (tests/sdk/test_retry_policy.py
// compares the copies): grpc retries UNAVAILABLE, and only on GetServerInfo, Reset, Step (made
// idempotent by its action_seq, which Connection::Step sets on every call) and CloseSession.
// ABORTED, a session lost with its engine worker, is never retried. docs/clients.md says why.
#pragma once

namespace helios_world {

inline constexpr const char* kRetryPolicyJson = R"json({
  "methodConfig": [
    {
      "name": [
        {"service": "helios.v1.WorldService", "method": "GetServerInfo"},
        {"service": "helios.v1.WorldService", "method": "Reset"},
        {"service": "helios.v1.WorldService", "method": "Step"},
        {"service": "helios.v1.WorldService", "method": "CloseSession"}
      ],
      "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.2s",
        "maxBackoff": "5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]
      }
    }
  ]
}
)json";

// A ping after 30 s without traffic, even with no call open; the server accepts pings 10 s apart
// (runtime/server/front/server.py), so it never closes the connection for "too_many_pings".
inline constexpr int kKeepaliveTimeMs = 30000;
inline constexpr int kKeepaliveTimeoutMs = 20000;

}  // namespace helios_world
