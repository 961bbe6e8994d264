"""Latent-space inputs every method builds the same way: masks at latent size and the U-Net's input layout.

A method's U-Net reads ``cat([noisy latent, conditions...], dim=1)``. Its `InputLayout` names each channel
group in that order, with sizes derived from the VAE (`LatentCodec.latent_channels`), so one VAE config
decides every channel count (SD: 4 latent channels -> 9 for inpainting, 13 for MimicBrush) and the U-Net is
checked against it, as diffusers' `StableDiffusionInpaintPipeline` checks latent + mask + masked image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel mask -> latent-size mask, resized as diffusers' inpainting pipeline does (nearest)."""
    return F.interpolate(mask.float(), size=latent_hw)
