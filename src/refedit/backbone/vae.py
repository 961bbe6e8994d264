"""The VAE as a latent codec: scale/shift and downsample factor come from the VAE's own config."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


class LatentCodec(torch.nn.Module):
    """Frozen (no gradients; a method keeps it in eval mode, `LatentEditModule.train`)."""

    def __init__(self, vae: AutoencoderKL, chunk_size: int = 16):
        super().__init__()
        self.vae = vae
        self.chunk_size = chunk_size
        self.vae.requires_grad_(False)
        self.vae.eval()

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """Images in [-1,1] (N,3,H,W) -> scaled latents. `sample=False` takes the posterior mode."""
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the VAE downsample factor "
                             f"{self.downsample}")
        outs = []
        for chunk in x.split(self.chunk_size):
            dist = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist
            outs.append(dist.sample(generator) if sample else dist.mode())
        z = torch.cat(outs)
        return ((z - self.shift_factor) * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1,1] (not clamped, as diffusers leaves that to post-processing)."""
        outs = [self.vae.decode((c / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample
                for c in z.split(self.chunk_size)]
        return torch.cat(outs).float()

    def latent_size(self, size: int) -> int:
        return size // self.downsample
