"""A resumable, time-limited training loop (the toy model's runs are at most 10 minutes each).

`Trainer.run(max_steps=..., max_minutes=...)` takes optimizer steps until either limit, saving a
checkpoint every `save_every` steps and at the end: the model's safetensors (`save_pretrained`, the
shipping format) and a state file with the weights, the optimizer state, the step count and the
random generator's state, so a later run continues exactly
where this one stopped (same batches, same noise) as if it had never been interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("helios.train")

STATE_FILE = "trainer_state.pt"


class Trainer:
    """AdamW (0.9, 0.999), weight decay 1e-4, gradient clipping at 1.0 (spec 10, stage 1), an
    optional linear learning-rate warm-up over the first `warmup` steps and an optional linear
    decay to `final_lr_scale` × lr over the last `decay_steps` steps before `run`'s `max_steps`
    (both by the global step, so a resumed run follows the same schedule).

    `loss_fn(model, step, gen) -> scalar tensor` builds its batch and loss from the step number and
    the run's generator (so resumption reproduces the data order).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, int, torch.Generator], torch.Tensor],
        folder: str | Path,
        *,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        clip: float = 1.0,
        seed: int = 0,
        save_every: int = 200,
        warmup: int = 0,
        decay_steps: int = 0,
        final_lr_scale: float = 0.1,
    ):
        self.model, self.loss_fn, self.folder = model, loss_fn, Path(folder)
        self.clip, self.save_every, self.warmup, self.lr = clip, save_every, warmup, lr
        self.decay_steps, self.final_lr_scale = decay_steps, final_lr_scale
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        device = next(model.parameters()).device
        # The fused CUDA kernel: one launch for the whole update instead of a few per tensor.
        fused = device.type == "cuda" and all(p.device.type == "cuda" for p in params)
        self.optimizer = torch.optim.AdamW(
            params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=fused or None
        )
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        if (self.folder / STATE_FILE).is_file():
            self._resume()

    def run(
        self, *, max_steps: int, max_minutes: float = 10.0, log_every: int = 10
    ) -> list[dict[str, float]]:
        """Train until `max_steps` in total (across runs) or `max_minutes` of this run; returns the
        logged losses of this run (each the mean over the steps since the previous row).

        The loss is read back only every `log_every` steps: reading it each step would make the
        host wait for the device every step (a small model's training is launch-bound).
        A non-finite loss stops the run at the next logged step, before it is saved.
        """
        self.model.train()
        deadline = time.monotonic() + 60.0 * max_minutes
        logged, started = [], time.monotonic()
        total, count, first_step = None, 0, self.step
        while self.step < max_steps and time.monotonic() < deadline:
            loss = self.loss_fn(self.model, self.step, self.gen)
            self.optimizer.zero_grad(set_to_none=True)
            scale = self.lr_scale(max_steps)
            if scale is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr * scale
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.step += 1
            total = loss.detach() if total is None else total + loss.detach()
            count += 1
            if self.step % log_every == 0 or self.step == max_steps:
                logged.append(self._log(total, count, started, first_step, max_steps))
                total, count = None, 0
            if self.step % self.save_every == 0:
                self.save()
        if count:
            logged.append(self._log(total, count, started, first_step, max_steps))
        self.history += logged
        self.save()
        self.model.eval()
        return logged

    def lr_scale(self, max_steps: int) -> float | None:
        """The learning rate's factor at the current step (None: no schedule, lr throughout)."""
        if not self.warmup and not self.decay_steps:
            return None
        scale = min(1.0, (self.step + 1) / self.warmup) if self.warmup else 1.0
        if self.decay_steps:
            left = max_steps - self.step  # steps still to take, this one included
            if left < self.decay_steps:
                fraction = left / self.decay_steps  # 1 at the start of the decay, ~0 at the end
                scale *= self.final_lr_scale + (1.0 - self.final_lr_scale) * fraction
        return scale

    def _log(
        self, total: torch.Tensor, count: int, started: float, first_step: int, max_steps: int
    ) -> dict[str, float]:
        value = float(total) / count
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss is {value} before step {self.step}; stopping")
        seconds = time.monotonic() - started
        row = {"step": self.step, "loss": value, "seconds": seconds}
        rate = (self.step - first_step) / seconds if seconds > 0 else 0.0
        print(
            f"step {self.step}/{max_steps} loss {value:.4f} ({seconds:.0f} s, {rate:.1f} steps/s)",
            file=sys.stderr,
        )
        return row

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_pretrained = getattr(self.model, "save_pretrained", None)
        if save_pretrained is not None:
            save_pretrained(self.folder)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.gen.get_state(),
            # Also here (not only in the safetensors) so resuming needs nothing model-specific.
            "model": self.model.state_dict(),
        }
        tmp = self.folder / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.folder / STATE_FILE)  # a run killed mid-save keeps the previous checkpoint
        (self.folder / "trainer_log.json").write_text(json.dumps(self.history, indent=1) + "\n")

    def _resume(self) -> None:
        state = torch.load(self.folder / STATE_FILE, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.step = int(state["step"])
        log_path = self.folder / "trainer_log.json"
        if log_path.is_file():
            self.history = json.loads(log_path.read_text())
        log.info("resumed from %s at step %d", self.folder, self.step)
