"""helios_runtime: the server side of helios-sdk (model, samplers, engine, service).

Imported as `helios_runtime` (the folder is `runtime/`; PyPI already has a `runtime` package).
"""

__version__ = "0.1.0"
