"""The engine protocol between the gRPC front and the engine workers: typed messages and their
codec (`messages`). Torch-free, so the front never imports the engine."""
