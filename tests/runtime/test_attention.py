"""The attention dispatch point: SDPA against a plain softmax reference, backend selection errors."""

import math

import pytest
import torch

from helios_runtime.model import attention as att


def reference(q, k, v):
    # (B, S, H, D) layout, softmax(q kᵀ / sqrt(D)) v per head.
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double())


@pytest.mark.parametrize("sq,sk", [(7, 7), (5, 11)])
def test_sdpa_matches_softmax_reference(sq, sk):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, sq, 3, 8, generator=g)
    k, v = torch.randn(2, 2, sk, 3, 8, generator=g)
    out = att.attention(q, k, v)
    assert out.shape == q.shape
    assert torch.allclose(out.double(), reference(q, k, v), atol=1e-5)


def test_backend_selection():
    assert "sdpa" in att.available_backends()
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"):
        att.set_attention_backend("xformers")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available here"):
            att.set_attention_backend("flash3")
    try:
        att.set_attention_backend("sdpa")
        assert att.get_attention_backend() == "sdpa"
        q = torch.randn(1, 4, 2, 8)
        assert torch.equal(att.attention(q, q, q), att.attention(q, q, q))
    finally:
        att.set_attention_backend("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_cudnn_backend_needs_a_gpu():
    assert "cudnn" not in att.available_backends()
    with pytest.raises(ValueError, match="not available here"):
        att.set_attention_backend("cudnn")
