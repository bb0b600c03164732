"""The gRPC front: `WorldService` (`service`), a stream's state machine (`stream`), the `serve()`
entry point (`server`), its `ServerSettings` (`settings`), frame encoding and metrics, and the two
engine-worker pools (`zmq_pool`, `ray_pool`). Imports the protocol, never the engine's code."""
