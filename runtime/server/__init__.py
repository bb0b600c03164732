"""The server side of the runtime: the gRPC front (`front/`), the engine workers (`worker/`) and the
typed protocol between them (`protocol/`). Arrows point front -> protocol <- worker -> engine."""
