"""The seam blend over the server: GetServerInfo says how many frames the engine eases at each
chunk boundary (ModelInfo.seam_blend_frames, API 1.2), and `helios serve --seam-blend N` overrides the
model's own setting (the toy world's model_index.json: 2)."""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest

from helios_runtime.engine.seam import blend_chunk
from helios_sdk import Move
from helios_sdk.client import HeliosClient
from tests.server.conftest import start_server

from .conftest import TOKEN, TOY_SIZE

PROMPT = "a meadow at noon with trees and sheep"


@pytest.fixture(scope="module")
def toy_without_blend():
    """The default model, served as `helios serve --seam-blend 0` serves it (one torch thread, as the
    package's toy server runs, so both servers compute the same latents)."""
    from helios_runtime.server.front.settings import ServerSettings

    with mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        settings = ServerSettings(port=0, token=TOKEN, max_sessions=2, warm_up=False, seam_blend=0)
        server = start_server(settings)
        handle = next(server)
    yield handle.target
    next(server, None)


def rollout(address: str) -> tuple[int, list[np.ndarray]]:
    with HeliosClient(address, TOKEN) as client:
        session = client.create_session(**TOY_SIZE)
        chunks = [client.reset(session, PROMPT, seed=3).frames]
        for move in ("e", "s"):
            chunks.append(client.step(session, Move(move)).frames)
        client.close_session(session)
        return client.server_info().seam_blend_frames, chunks


def test_the_server_says_and_applies_its_seam_blend(toy_address, toy_without_blend):
    blend, shipped = rollout(toy_address)
    off, plain = rollout(toy_without_blend)
    assert (blend, off) == (2, 0), "the toy world's own setting, and the flag's"
    # The first chunk of a reset is never blended; after it, the blend touches pixels only: the
    # frames past the first two are the model's own, and the first two are the model's eased from
    # the last frame shown, exactly as engine/seam.py computes it.
    assert np.array_equal(shipped[0], plain[0])
    for k in (1, 2):
        assert np.array_equal(shipped[k][2:], plain[k][2:])
        assert not np.array_equal(shipped[k][0], plain[k][0])
        assert np.array_equal(shipped[k], blend_chunk(plain[k], plain[k - 1][-1], 2))


@pytest.mark.parametrize("frames", [-1, 33, True])
def test_settings_refuse_a_seam_blend_no_engine_would_take(frames):
    """Checked where every front builds its settings, before any worker or replica starts."""
    from helios_runtime.server.front.settings import ServerSettings

    with pytest.raises(ValueError, match="--seam-blend must be an int in"):
        ServerSettings(seam_blend=frames)
