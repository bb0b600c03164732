"""The engine worker: the loop that owns a WorldEngine (`loop`), its process (`main`), its Ray Serve
replica form (`replica`), the in-process client (`inprocess`) and context-parallel orchestration
(`context_parallel/`). Imports the engine and the protocol, never the front."""
