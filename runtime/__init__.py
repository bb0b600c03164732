"""helios_runtime: the server side of helios-sdk (model, samplers, engine, service).

Imported as `helios_runtime` (the folder is `runtime/`; PyPI already has a `runtime` package).
"""

__version__ = "0.1.0"
# The model a world runs when none is named: the trained toy world shipped in the package. One name
# for `helios serve` (ServerSettings), the CLI, the SDK's local env and `WorldModel.load`.
DEFAULT_MODEL = "toy"
