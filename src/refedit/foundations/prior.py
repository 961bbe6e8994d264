"""The toy Stable Diffusion: a text-to-image U-Net trained on toyworld frames and their captions, then a
9-channel inpainting U-Net fine-tuned from it as SD-inpainting was made from SD (conv_in widened with
zero-initialised channels; random boxes, object boxes and object masks, some frames fully masked).

Both train on latents and caption embeddings computed once (the VAE and text encoder are frozen), with the SD
noise schedule, epsilon prediction and Min-SNR loss weighting (Hang et al., 2023: it speeds up convergence at a
fixed schedule), and an EMA of the weights is what is saved, as in SD's releases.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from refedit.backbone.latents import inpaint_layout
from refedit.backbone.unet import widen_conv_in
from refedit.foundations.config import FoundationsConfig
from refedit.foundations.data import Scenes

#: the scheduler every toy-SD root ships (SD-1.x's training schedule, DDIM for sampling)
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                 timestep_spacing="leading")


@torch.no_grad()
def embed_captions(tok: CLIPTokenizer, text_encoder: CLIPTextModel, captions: list[str],
                   device: torch.device) -> torch.Tensor:
    """Last hidden states (N, 77, D), tokenised as SD pipelines do."""
    out = []
    for i in range(0, len(captions), 256):
        ids = tok(captions[i:i + 256], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        out.append(text_encoder(ids.to(device))[0].cpu())
    return torch.cat(out)


@torch.no_grad()
def latent_moments(vae: AutoencoderKL, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The VAE posterior's (mean, logvar) per image, (N, 2C, h, w): training draws a fresh posterior sample."""
    return torch.cat([vae.encode(c.to(device)).latent_dist.parameters.cpu() for c in images.split(128)])


def sample_latents(moments: torch.Tensor, scale: float, g: torch.Generator) -> torch.Tensor:
    mean, logvar = moments.chunk(2, dim=1)
    return (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn(mean.shape, generator=g)) * scale


class UNetTrainer:
    """AdamW with linear warm-up then cosine decay to 10%, gradient clipping, Min-SNR-weighted epsilon loss and
    an EMA copy (its decay ramps up as (1 + n) / (10 + n), capped at `ema_decay`)."""

    def __init__(self, unet: UNet2DConditionModel, cfg: FoundationsConfig, steps: int, lr: float,
                 device: torch.device):
        self.unet = unet.to(device).train()
        self.ema = copy.deepcopy(unet).requires_grad_(False).eval()
        self.device, self.cfg, self.steps = device, cfg, steps
        self.schedule = DDPMScheduler.from_config(SCHEDULER)
        ac = self.schedule.alphas_cumprod
        self.snr = ac / (1 - ac)
        self.opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
        warm = max(1, min(100, steps // 10))
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * min(s / steps, 1.0))))
        self.n = 0

    def step(self, z0: torch.Tensor, context: torch.Tensor, concat: torch.Tensor | None,
             g: torch.Generator) -> float:
        b = z0.shape[0]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, self.schedule.config.num_train_timesteps, (b,), generator=g)
        zt = self.schedule.add_noise(z0, noise, t)
        x = zt if concat is None else torch.cat([zt, concat], dim=1)
        pred = self.unet(x.to(self.device), t.to(self.device), context.to(self.device)).sample
        w = self.snr[t].clamp(max=self.cfg.min_snr_gamma) / self.snr[t] if self.cfg.min_snr_gamma > 0 else \
            torch.ones(b)
        loss = (w.to(self.device) * (pred.float() - noise.to(self.device)).square().mean((1, 2, 3))).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        self.lr_sched.step()
        self.n += 1
        decay = min(self.cfg.ema_decay, (1 + self.n) / (10 + self.n))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.unet.parameters()):
                pe.lerp_(p, 1 - decay)
        return float(loss.item())

    def run(self, batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
            g: torch.Generator, desc: str,
            on_step: Callable[[int, UNet2DConditionModel], None] | None = None) -> UNet2DConditionModel:
        bar = tqdm(range(1, self.steps + 1), desc=desc, leave=False)
        avg = None
        for i in bar:
            loss = self.step(*batch(g), g)
            avg = loss if avg is None else 0.98 * avg + 0.02 * loss
            bar.set_postfix(loss=f"{avg:.4f}")
            if on_step is not None:
                on_step(i, self.ema)
        return self.ema.cpu()


def _drop(context: torch.Tensor, null: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    drop = torch.rand(context.shape[0], generator=g) < p
    return torch.where(drop[:, None, None], null.expand_as(context), context)


def train_text_to_image(unet: UNet2DConditionModel, moments: torch.Tensor, context: torch.Tensor,
                        null: torch.Tensor, scale: float, cfg: FoundationsConfig, device: torch.device,
                        on_step=None) -> UNet2DConditionModel:
    trainer = UNetTrainer(unet, cfg, cfg.prior_steps, cfg.prior_lr, device)

    def batch(g):
        idx = torch.randint(0, len(moments), (cfg.prior_batch,), generator=g)
        return sample_latents(moments[idx], scale, g), _drop(context[idx], null, cfg.caption_drop, g), None

    return trainer.run(batch, torch.Generator().manual_seed(cfg.seed + 4), "stage 1: text-to-image U-Net", on_step)


# ----------------------------------------------------------------------------------------------- inpainting
MASK_KINDS = ("object_box", "object_shape", "random_box", "full")
MASK_PROBS = (0.4, 0.2, 0.25, 0.15)


def inpainting_mask(kind: str, obj_mask: np.ndarray | None, size: int, rng: np.random.Generator) -> np.ndarray:
    """One training mask (H, W) float {0,1}, 1 = repaint: an object's box grown by 5-20%, its shape dilated by
    1-4 px, a random box of 15-60% of the side, or the whole frame."""
    m = np.zeros((size, size), np.float32)
    if kind in ("object_box", "object_shape") and obj_mask is not None and obj_mask.any():
        if kind == "object_shape":
            r = int(rng.integers(1, 5))
            return cv2.dilate(obj_mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(np.float32)
        ys, xs = np.nonzero(obj_mask)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        pad = int(round(rng.uniform(0.05, 0.2) * max(x1 - x0, y1 - y0))) + 1
        m[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad] = 1
        return m
    if kind == "full":
        return np.ones((size, size), np.float32)
    w, h = (int(rng.uniform(0.15, 0.6) * size) for _ in range(2))
    x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    m[y0:y0 + h, x0:x0 + w] = 1
    return m


def train_inpainting(t2i: UNet2DConditionModel, vae: AutoencoderKL, scenes: Scenes, moments: torch.Tensor,
                     scene_context: torch.Tensor, object_context: dict[str, torch.Tensor], null: torch.Tensor,
                     cfg: FoundationsConfig, device: torch.device, on_step=None) -> UNet2DConditionModel:
    """The text-to-image U-Net widened to [noisy latent 4, mask 1, masked-image latent 4] (diffusers' order),
    fine-tuned on masks of `MASK_KINDS`; an object mask comes with that object's caption, other masks with the
    scene's. The masked image is the frame with the hole set to 0 (mid grey), encoded by the VAE's mode."""
    unet = widen_conv_in(copy.deepcopy(t2i), inpaint_layout(vae.config.latent_channels).in_channels)
    trainer = UNetTrainer(unet, cfg, cfg.inpaint_steps, cfg.inpaint_lr, device)
    rng = np.random.default_rng(cfg.seed + 5)
    size = scenes.images.shape[-1]
    scale = float(vae.config.scaling_factor)
    vae = vae.to(device)

    def batch(g):
        idx = torch.randint(0, len(moments), (cfg.prior_batch,), generator=g).tolist()
        masks, ctx = [], []
        for i in idx:
            kind = str(rng.choice(MASK_KINDS, p=MASK_PROBS))
            objs = scenes.objects[i]
            if kind.startswith("object") and objs:
                cap, obj_mask, _ = objs[int(rng.integers(len(objs)))]
                masks.append(inpainting_mask(kind, obj_mask, size, rng))
                ctx.append(object_context[cap])
            else:
                masks.append(inpainting_mask("full" if kind == "full" else "random_box", None, size, rng))
                ctx.append(scene_context[i])
        mask = torch.from_numpy(np.stack(masks))[:, None]
        image = scenes.images[idx]
        with torch.no_grad():
            masked = vae.encode((image * (mask < 0.5)).to(device)).latent_dist.mode().cpu() * scale
        concat = torch.cat([F.interpolate(mask, size=masked.shape[-2:]), masked], dim=1)
        z0 = sample_latents(moments[idx], scale, g)
        return z0, _drop(torch.stack(ctx), null, cfg.caption_drop, g), concat

    return trainer.run(batch, torch.Generator().manual_seed(cfg.seed + 6), "stage 1: inpainting U-Net", on_step)
