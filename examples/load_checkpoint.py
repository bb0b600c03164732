"""Save a Helios transformer in the diffusers folder format, load it back, denoise one chunk — the
embedded default model's (the toy world's) transformer.

The same `from_pretrained` call loads a downloaded release, e.g.
    HeliosTransformer.from_pretrained("Helios-Distilled/transformer", device="cuda")
Run: python examples/load_checkpoint.py
"""

import tempfile

import torch

from helios_runtime.commands import chunk_inputs
from helios_runtime.engine.world_model import TOY_FOLDER
from helios_runtime.model.transformer import HeliosTransformer

shipped = HeliosTransformer.from_pretrained(TOY_FOLDER / "transformer", device="cpu")
with tempfile.TemporaryDirectory() as folder:
    shipped.save_pretrained(folder)
    model = HeliosTransformer.from_pretrained(folder, device="cpu").eval()

# One chunk at the toy world's 96×160 pixels: 9 noisy latent frames (12×20) plus the full multi-term memory.
inputs = chunk_inputs(model, batch=1, lat_h=12, lat_w=20, timestep=999.0, seed=0)
with torch.inference_mode():
    velocity = model(**inputs)
print(f"{model.num_parameters():,} parameters; velocity {tuple(velocity.shape)}, std {velocity.std():.4f}")
