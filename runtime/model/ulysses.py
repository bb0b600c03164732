"""Context (sequence) parallelism of the Helios transformer over a torch.distributed group, Ulysses style.

One forward's token sequence `[long | mid | short | noisy]` is cut into P contiguous shards, one per
rank. Everything in a block except self-attention is per token (norms, modulation, projections,
cross-attention to the text, the feed-forward), so each rank runs it on its own shard only. For
self-attention each rank computes q, k and v for its tokens, then one all-to-all trades "my tokens,
all heads" for "all tokens, my Hd/P heads"; every rank attends over the whole sequence for its heads,
and a second all-to-all trades the result back. The final norm and projection run on each rank's
noisy tokens, and one all-gather assembles the prediction, identical on every rank.

Per forward and block that is two all-to-alls of 4·N·D/P and N·D/P elements per rank (q, k, v out;
attention back), against 24·N·D² FLOPs of compute: at 14B, 384×640 that is ≈ 150 MB per block over
NVLink against ≈ 30 ms of matmuls, so the split pays while N·D is large (all three pyramid stages).

Shards are uneven when P does not divide N (the first N mod P ranks hold one token more), so no
padding token ever enters attention and the result equals the single-device one up to the rounding
of differently shaped matmuls. Heads must divide evenly: 40 heads (14B) allow P = 2, 4, 5, 8, 10.

Inference only: no autograd through the collectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def shard_sizes(n: int, world: int) -> list[int]:
    """Tokens per rank: n split into `world` contiguous runs, the first n mod world one longer."""
    base, extra = divmod(n, world)
    return [base + (r < extra) for r in range(world)]


@dataclass(frozen=True)
class ContextParallel:
    """Where this process sits in a context-parallel group: `world` ranks, this one `rank`.

    `group` None means the default process group. Build with `ContextParallel.from_group`.
    """

    rank: int
    world: int
    group: dist.ProcessGroup | None = None

    @classmethod
    def from_group(cls, group: dist.ProcessGroup | None = None) -> ContextParallel:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "context parallelism needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group) on every rank"
            )
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def check_heads(self, heads: int) -> None:
        if heads % self.world:
            divisors = [p for p in range(1, heads + 1) if heads % p == 0]
            raise ValueError(
                f"Ulysses context parallelism splits the {heads} attention heads evenly across ranks; "
                f"{self.world} ranks do not divide them (possible: {divisors})"
            )

    # --- the sequence plan of one forward -----------------------------------------------------------

    def plan(self, n_tokens: int, n_hist: int) -> SequencePlan:
        sizes = shard_sizes(n_tokens, self.world)
        start = sum(sizes[: self.rank])
        return SequencePlan(self, sizes, start, n_hist)


@dataclass(frozen=True)
class SequencePlan:
    """The shards of one forward's sequence of N tokens (the first `n_hist` history, then noisy)."""

    cp: ContextParallel
    sizes: list[int]  # tokens per rank
    start: int  # this rank's first token
    n_hist: int  # history tokens in the whole sequence

    @property
    def size(self) -> int:
        return self.sizes[self.cp.rank]

    @property
    def local_hist(self) -> int:
        """History tokens in this rank's shard (history comes first, so they lead the shard too)."""
        return min(max(self.n_hist - self.start, 0), self.size)

    def noisy_sizes(self) -> list[int]:
        """Noisy tokens held by each rank."""
        out, start = [], 0
        for size in self.sizes:
            hist = min(max(self.n_hist - start, 0), size)
            out.append(size - hist)
            start += size
        return out

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's shard of a (B, N, ...) tensor."""
        return x[:, self.start : self.start + self.size]

    # --- collectives --------------------------------------------------------------------------------

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend) -> torch.Tensor:
        """Self-attention of the whole sequence from local q, k, v (B, S, Hd, Dh) -> (B, S, Hd, Dh).

        `attend(q, k, v)` is the single-device attention on (B, N, Hd/P, Dh) views.
        """
        cp = self.cp
        B, S, H, Dh = q.shape
        P, Hp = cp.world, H // cp.world
        # (B, S, 3, P, Hp, Dh) -> (P, S, B, 3, Hp, Dh): the block for rank j leads, so the all-to-all
        # sends contiguous slices and what arrives is sequence-major in rank order, i.e. the whole
        # sequence in token order without a gather copy.
        qkv = torch.stack([q, k, v], dim=2).unflatten(3, (P, Hp)).permute(3, 1, 0, 2, 4, 5).contiguous()
        full = qkv.new_empty((sum(self.sizes), B, 3, Hp, Dh))
        dist.all_to_all_single(
            full,
            qkv.flatten(0, 1),
            output_split_sizes=self.sizes,
            input_split_sizes=[S] * P,
            group=cp.group,
        )
        fq, fk, fv = full.permute(1, 0, 2, 3, 4).unbind(2)  # (B, N, Hp, Dh) views
        out = attend(fq, fk, fv)  # (B, N, Hp, Dh)
        back = out.new_empty((P * S, B, Hp, Dh))
        dist.all_to_all_single(
            back,
            out.permute(1, 0, 2, 3).contiguous(),
            output_split_sizes=[S] * P,
            input_split_sizes=self.sizes,
            group=cp.group,
        )
        # (P, S, B, Hp, Dh) -> (B, S, P·Hp, Dh): heads back in rank order, i.e. the original order.
        return back.unflatten(0, (P, S)).permute(2, 1, 0, 3, 4).flatten(2, 3)

    def gather_noisy(self, y: torch.Tensor) -> torch.Tensor:
        """Every rank's (B, n_r, F) noisy-token rows -> (B, n, F) in token order, on every rank."""
        sizes = self.noisy_sizes()
        longest = max(sizes)
        B, n_local, F_ = y.shape
        padded = y.new_zeros((longest, B, F_))
        padded[:n_local] = y.transpose(0, 1)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=self.cp.group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).transpose(0, 1)


class ShardedAttention:
    """The `attend` of a context-parallel forward: one object for the model's lifetime, pointed at
    each forward's plan, so compiled blocks see the same callable every time (no recompiles) and
    the collectives run outside the compiled graphs."""

    def __init__(self, attend):
        self.attend = attend
        self.plan: SequencePlan | None = None

    @torch.compiler.disable
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        assert self.plan is not None, "ShardedAttention used outside a context-parallel forward"
        return self.plan.attention(q, k, v, self.attend)
