"""helios_sdk: the light client of helios-sdk (no torch).

The gRPC client, the Gymnasium environment and recording/replay land here (see the README's
roadmap); today the package carries the `helios` command line, whose model commands run the
server-side runtime (`helios_runtime`, installed with the `[runtime]` extra).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
