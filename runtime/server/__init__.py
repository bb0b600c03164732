"""The gRPC world runtime: a grpc.aio front process and engine worker processes over ZeroMQ."""
