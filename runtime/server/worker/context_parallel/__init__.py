"""One session on several GPUs, the worker's side: the process group of an engine worker's ranks
(`launch`), the follower ranks' process (`follower`) and the engine kept identical on every rank
(`replicated`). The transformer's Ulysses attention itself lives beside the model (`model/ulysses.py`)."""
