"""The toy VAE (diffusers AutoencoderKL, 4x downsampling) trained on random crops of toyworld frames."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from refedit.foundations.config import FoundationsConfig


def vae_config(resolution: int, latent_channels: int = 4) -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 64, 64], layers_per_block=1,
                latent_channels=latent_channels, norm_num_groups=16, sample_size=resolution,
                mid_block_add_attention=False)  # no attention: a conv VAE is size-agnostic (trained on crops)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = F.mse_loss((a.clamp(-1, 1) + 1) / 2, (b + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def train_vae(frames: torch.Tensor, heldout: torch.Tensor, cfg: FoundationsConfig,
              device: torch.device) -> tuple[AutoencoderKL, dict]:
    """L1 + MSE reconstruction with a small KL term; the scaling factor makes the latents unit-variance, as SD's
    0.18215 does for its VAE."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**vae_config(cfg.resolution)).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vae_lr, total_steps=max(cfg.vae_steps, 2),
                                                pct_start=0.1)
    bar = tqdm(range(cfg.vae_steps), desc="stage 1: VAE", leave=False)
    for _ in bar:
        idx = torch.randint(0, len(frames), (cfg.vae_batch,), generator=g)
        x = frames[idx]
        if cfg.vae_crop and cfg.vae_crop < x.shape[-1]:
            oy, ox = (int(v) for v in torch.randint(0, x.shape[-1] - cfg.vae_crop + 1, (2,), generator=g))
            x = x[..., oy:oy + cfg.vae_crop, ox:ox + cfg.vae_crop]
        x = x.to(device)
        post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=g).to(device)  # CPU generator: the same draws on any device
        rec = vae.decode(post.mean + post.std * eps).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + 0.5 * F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        held = heldout.to(device)
        rec = torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in held.split(64)])
        z_all = torch.cat([vae.encode(c).latent_dist.mode() for c in frames[:256].to(device).split(64)])
        vae.register_to_config(scaling_factor=float(1.0 / z_all.std()))
    return vae.cpu(), {"heldout_psnr_db": round(psnr(rec.cpu(), heldout), 2),
                       "scaling_factor": float(vae.config.scaling_factor)}
