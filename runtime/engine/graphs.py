"""CUDA-graph replay of the transformer's small forwards (issue 17: pyramid stage 0).

At 384×640 the first pyramid stage has 540 noisy tokens: on an H200 its FP8 forward is ~90 ms of GPU
work behind ~1,500 kernel launches, so the host's launch time and its hiccups show in the chunk time
(bench/fp8.py: 93.5 ms eager, 89.2 ms replayed; a busy host made eager 150 ms). A graph replays
every launch of the forward as one. The larger stages are GPU-bound and run eagerly.

`GraphedForward(transformer)(**inputs)` is the forward: inputs whose noisy token count is at most
`max_noisy_tokens`, all on the GPU, are copied into the static inputs of a graph captured for their
shapes on first use and replayed; anything else runs eagerly. Same numbers as eager (same kernels,
same order: `torch.equal` in bench/fp8.py). Not for torch.compile'd blocks or context parallelism
(the engine does not wrap those).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static copies the graph reads
    output: torch.Tensor  # the static output the graph writes


class GraphedForward:
    """The transformer's forward, replayed from CUDA graphs for small inputs (see the module doc)."""

    def __init__(self, transformer: torch.nn.Module, max_noisy_tokens: int = 1024, max_graphs: int = 8):
        self.transformer = transformer
        self.max_noisy_tokens = max_noisy_tokens
        self.max_graphs = max_graphs  # shapes x batch sizes kept; the least recently used goes first
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = None  # one memory pool shared by every graph (they never run at once)

    def _eligible(self, inputs: dict[str, torch.Tensor | None]) -> bool:
        x = inputs["hidden_states"]
        pt, ph, pw = self.transformer.config.patch_size
        noisy = x.shape[2] // pt * (x.shape[3] // ph) * (x.shape[4] // pw)  # x (B, C, T, H, W)
        if noisy > self.max_noisy_tokens or getattr(self.transformer, "context_parallel", None) is not None:
            return False
        return all(v.is_cuda for v in inputs.values() if isinstance(v, torch.Tensor))

    def __call__(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        if not self._eligible(inputs):
            return self.transformer(**inputs)
        key = tuple(
            (name, tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor) else (name, v)
            for name, v in sorted(inputs.items())
        )
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(inputs)
            self._graphs[key] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        for name, static in captured.inputs.items():
            static.copy_(inputs[name])
        captured.graph.replay()
        return captured.output.clone()  # the next replay overwrites the static output

    @torch.no_grad()
    def _capture(self, inputs: dict[str, torch.Tensor | None]) -> _Captured:
        static = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        kwargs = {**inputs, **static}
        # Capture needs every lazy initialisation (kernel JIT, cuBLAS / cuDNN plans) done already:
        # one forward on a side stream first, as torch.cuda.graphs documents.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.transformer(**kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self.transformer(**kwargs)
        return _Captured(graph, static, output)
