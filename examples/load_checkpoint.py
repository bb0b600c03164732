"""Save a Helios transformer in the diffusers folder format, load it back, denoise one chunk.

The same `from_pretrained` call loads a downloaded release, e.g.
    HeliosTransformer.from_pretrained("Helios-Distilled/transformer", device="cuda")
Run: python examples/load_checkpoint.py
"""

import tempfile

import torch

from helios_runtime.commands import chunk_inputs
from helios_runtime.model.transformer import HeliosTransformer

with tempfile.TemporaryDirectory() as folder:
    HeliosTransformer.from_config("tiny", seed=0).save_pretrained(folder)
    model = HeliosTransformer.from_pretrained(folder, device="cpu").eval()

# One chunk at 96×160 pixels: 9 noisy latent frames (12×20) plus the full multi-term memory.
inputs = chunk_inputs(model, batch=1, lat_h=12, lat_w=20, timestep=999.0, seed=0)
with torch.inference_mode():
    velocity = model(**inputs)
print("velocity", tuple(velocity.shape), "std", round(velocity.std().item(), 4))
