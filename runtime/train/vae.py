"""Training the Wan VAE architecture at toy scale: reconstruction (L1 + MSE) and a small KL term on
the posterior, through `WanVAE.autoencode` (the same encoder / decoder code as inference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.vae import WanVAE


def vae_loss(
    vae: WanVAE,
    video: torch.Tensor,
    gen: torch.Generator,
    kl_weight: float = 1e-6,
    pixel_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one batch (B, 3, 1 + 4k, H, W) in [-1, 1]; also returns its parts, detached 0-d
    tensors (reading them as floats here would make the host wait for the device every step).

    `pixel_weight` (B, 1, T, H, W), optional: per-pixel weights of the reconstruction terms (means
    stay normalised by the pixel count), e.g. to keep a small object the latents must not lose.
    """
    recon, mean, logvar = vae.autoencode(video, generator=gen)
    if pixel_weight is None:
        l1 = F.l1_loss(recon, video)
        mse = F.mse_loss(recon, video)
    else:
        err = recon.float() - video.float()
        l1 = (err.abs() * pixel_weight).mean()
        mse = (err.square() * pixel_weight).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + mse + kl_weight * kl
    return loss, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}
