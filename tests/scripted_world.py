"""A real gRPC server of the helios.v1 contract whose failures are scripted, for testing what clients
do on their side of the wire: which calls gRPC retries under the shared retry policy, with which
`action_seq`, and which status codes end a call at once.

    with ScriptedWorld() as world:
        world.fail("Step", grpc.StatusCode.UNAVAILABLE, times=2)   # then Step answers normally
        ...  # a client (Python, C++) against world.target
        assert [r.action_seq for r in world.calls["Step"]] == [1, 1, 1]

Every attempt that reaches the server is recorded in `calls[method]`, in order. No model runs: a
Reset or Step answers with an empty chunk (the next chunk index of that session).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent import futures
from typing import Any

import grpc

from helios_sdk._proto.helios.v1 import world_pb2 as pb
from helios_sdk._proto.helios.v1 import world_pb2_grpc as pb_grpc


class ScriptedWorld(pb_grpc.WorldServiceServicer):
    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = defaultdict(list)
        self._failures: dict[str, list[grpc.StatusCode]] = defaultdict(list)
        self._chunks: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_WorldServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def fail(self, method: str, code: grpc.StatusCode, times: int = 1) -> None:
        """The next `times` calls of `method` end with `code` (before any reply header); after
        the calls scripted before. `grpc.StatusCode.OK` scripts a normal answer."""
        with self._lock:
            self._failures[method] += [code] * times

    def attempts(self, method: str) -> int:
        with self._lock:
            return len(self.calls[method])

    def __enter__(self) -> ScriptedWorld:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    # --- the contract -------------------------------------------------------------------------------

    def _answer(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method].append(request)
            code = self._failures[method].pop(0) if self._failures[method] else None
        if code is not None and code != grpc.StatusCode.OK:
            context.abort(code, f"scripted {code.name} for {method}")

    def _chunk(self, session_id: str, step: bool) -> pb.Chunk:
        with self._lock:
            self._chunks[session_id] = self._chunks[session_id] + 1 if step else 0
            return pb.Chunk(session_id=session_id, chunk_index=self._chunks[session_id])

    def GetServerInfo(self, request, context):
        self._answer("GetServerInfo", request, context)
        return pb.GetServerInfoResponse(
            api_version="1.0",
            server_version="scripted",
            model=pb.ModelInfo(name="scripted"),
            default_width=64,
            default_height=64,
            size_multiple=64,
            max_width=1280,
            max_height=1280,
            encodings=[pb.FRAME_ENCODING_RGB24],
            frames_per_chunk=33,
            fps=16,
            max_message_bytes=64 << 20,
        )

    def CreateSession(self, request, context):
        self._answer("CreateSession", request, context)
        return pb.CreateSessionResponse(session_id="created", width=64, height=64)

    def Reset(self, request, context):
        self._answer("Reset", request, context)
        return pb.ResetResponse(chunk=self._chunk(request.session_id, step=False))

    def Step(self, request, context):
        self._answer("Step", request, context)
        return pb.StepResponse(chunk=self._chunk(request.session_id, step=True))

    def Fork(self, request, context):
        self._answer("Fork", request, context)
        return pb.ForkResponse(session_id="forked")

    def Snapshot(self, request, context):
        self._answer("Snapshot", request, context)
        return pb.SnapshotResponse(snapshot_id="snap")

    def Restore(self, request, context):
        self._answer("Restore", request, context)
        return pb.RestoreResponse(session_id="restored")

    def CloseSession(self, request, context):
        self._answer("CloseSession", request, context)
        return pb.CloseSessionResponse()
