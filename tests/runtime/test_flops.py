"""The FLOP count used by benchmarks, against the reference numbers of spec sections 8-9."""

import pytest

from helios_runtime.model.config import preset
from helios_runtime.model.transformer import forward_flops


def test_14b_forward_without_history_matches_spec():
    # spec 9.3(b): 21 latent frames at 384×640 = 20,160 tokens, no history, 512 text tokens ≈ 8.25e14.
    assert forward_flops(preset("14b"), 20_160, 0, 512) == pytest.approx(8.25e14, rel=5e-3)
    assert forward_flops(preset("14b"), 12_480, 0, 512) == pytest.approx(4.34e14, rel=5e-3)


def test_distilled_chunk_matches_spec():
    # Issue 7: a [2,2,2] chunk = 2 forwards per pyramid stage ≈ 1.10 PFLOP; history is 2400 tokens.
    per_chunk = sum(2 * forward_flops(preset("14b"), n, 2400, 512) for n in (540, 2160, 8640))
    assert per_chunk == pytest.approx(1.10e15, rel=1e-2)
