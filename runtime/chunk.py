"""The geometry of one chunk, named once (spec sections 3 and 5).

Helios generates a world in chunks of `LATENT_FRAMES` latent frames; the Wan VAE's causal decoder
turns them into `FRAMES_PER_CHUNK` video frames (the first latent frame decodes to one frame, every
other one to `TEMPORAL_COMPRESSION`). Frames are shown at `FPS`. Torch-free: the gRPC front, the
simulator and the engine all read these.
"""

from __future__ import annotations

LATENT_FRAMES = 9  # latent frames per chunk
TEMPORAL_COMPRESSION = 4  # video frames per latent frame after the first (the VAE's time stride)
FRAMES_PER_CHUNK = (LATENT_FRAMES - 1) * TEMPORAL_COMPRESSION + 1  # 33 video frames per chunk
LAST_FRAME = FRAMES_PER_CHUNK - 1  # index in its chunk of a chunk's last frame
FPS = 16  # frames per second of the released models and of the procedural world
