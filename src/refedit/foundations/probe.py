"""The toyworld probe (shape / colour / pattern classifier of object crops, eval's default feature space) and the
object locator (where objects are in a frame), trained in stage 1 on rendered toyworld with exact labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from refedit.eval.features import ObjectLocator, ToyworldProbe
from refedit.foundations.config import FoundationsConfig
from refedit.foundations.data import Crops, Scenes

PROBE_IMAGE_SIZE = 48  # circles and hexagons differ by ~2 px at 32 px
BACKGROUND_REMOVED = 0.5  # fraction of training crops shown on black (identity crops are black outside the mask)
BLUR, BLUR_MIN = 0.3, 0.4  # fraction of crops resampled down to BLUR_MIN..1 x size and back (small generated objects)


def augment_crops(x: torch.Tensor, m: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Hue-preserving augmentation (colour is a label), per sample: background removed for a fraction, a random
    similarity warp (any rotation, flip, zoom 0.85-1.2x, shift), brightness scaling, and for some samples a
    down-up resampling, as for object regions cut from 64 px generated frames."""
    n = x.shape[0]
    x01 = (x + 1) / 2
    black = torch.rand(n, 1, 1, 1, generator=g) < BACKGROUND_REMOVED
    x01 = torch.where(black & (m < 0.5), torch.zeros_like(x01), x01)
    ang = torch.rand(n, generator=g) * 2 * torch.pi
    zoom = torch.empty(n).uniform_(0.85, 1.2, generator=g)  # > 1: the object appears smaller
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    shift = torch.empty(n, 2).uniform_(-0.1, 0.1, generator=g)
    cos, sin = torch.cos(ang) * zoom, torch.sin(ang) * zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], -1),
                         torch.stack([sin * flip, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    x01 = F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False)
    low = torch.randint(int(BLUR_MIN * size), size + 1, (n,), generator=g)
    blur = torch.rand(n, generator=g) < BLUR
    for r in low[blur].unique().tolist():
        sel = blur & (low == r)
        down = F.interpolate(x01[sel], size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        x01[sel] = F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)
    x01 = x01 * torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    return x01.clamp(0, 1) * 2 - 1


@torch.no_grad()
def attribute_accuracy(probe: ToyworldProbe, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    pred = probe.predict(x)
    return {k: round(float((pred[k].cpu() == y[:, i]).float().mean()), 4) for i, k in enumerate(probe.classes)}


def train_probe(crops: Crops, cfg: FoundationsConfig, device: torch.device) -> ToyworldProbe:
    g = torch.Generator().manual_seed(cfg.seed + 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)
        probe = ToyworldProbe(image_size=PROBE_IMAGE_SIZE).to(device, memory_format=torch.channels_last)
    probe.train()
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.probe_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.probe_lr, total_steps=max(cfg.probe_steps, 2),
                                                pct_start=0.15)
    x, m, y = crops.images, crops.masks, crops.labels
    bar = tqdm(range(cfg.probe_steps), desc="stage 1: probe", leave=False)
    for _ in bar:
        idx = torch.randint(0, len(x), (cfg.probe_batch,), generator=g)
        xb = augment_crops(x[idx], m[idx], PROBE_IMAGE_SIZE, g).to(device)
        logits = probe.logits(xb.contiguous(memory_format=torch.channels_last))
        loss = sum(F.cross_entropy(logits[k], y[idx, i].to(device)) for i, k in enumerate(probe.classes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return probe.to(memory_format=torch.contiguous_format).cpu().eval().requires_grad_(False)


def evaluate_probe(probe: ToyworldProbe, crops: Crops) -> dict[str, Any]:
    """Held-out accuracy per attribute on the crops as rendered, with the background removed (as the identity
    metrics see them) and after a 16 px down-up resampling (a small object in a 64 px frame)."""
    x, m, y = crops.images, crops.masks, crops.labels
    black = torch.where(m > 0.5, x, torch.full_like(x, -1.0))
    low = F.interpolate(F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False),
                        size=x.shape[-2:], mode="bilinear", align_corners=False)
    return {"heldout_accuracy": attribute_accuracy(probe, x, y),
            "heldout_accuracy_background_removed": attribute_accuracy(probe, black, y),
            "heldout_accuracy_16px": attribute_accuracy(probe, low, y), "num_heldout": int(len(x))}


def train_locator(frames: Scenes, cfg: FoundationsConfig, device: torch.device) -> ObjectLocator:
    """Per-pixel 'any nameable object' on toyworld frames, with blur and brightness shifts so that generated
    frames are located as well."""
    g = torch.Generator().manual_seed(cfg.seed + 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 3)
        loc = ObjectLocator().to(device)
    loc.train()
    x, target = frames.images, frames.any_object_masks()
    opt = torch.optim.AdamW(loc.parameters(), lr=3e-3)
    bar = tqdm(range(cfg.locator_steps), desc="stage 1: object locator", leave=False)
    h = x.shape[-1]
    for _ in bar:
        idx = torch.randint(0, len(x), (32,), generator=g)
        xb = x[idx].clone()
        blur = torch.rand(32, generator=g) < 0.5
        if blur.any():
            low = F.interpolate(xb[blur], size=(h // 2, h // 2), mode="bilinear", antialias=True, align_corners=False)
            xb[blur] = F.interpolate(low, size=(h, h), mode="bilinear", align_corners=False)
        xb = (xb + 0.1 * torch.randn(32, 1, 1, 1, generator=g)).clamp(-1, 1)
        loss = F.binary_cross_entropy_with_logits(loc(xb.to(device)), target[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return loc.cpu().eval().requires_grad_(False)


def located_accuracy(locator: ObjectLocator, probe: ToyworldProbe, images: torch.Tensor,
                     labels: torch.Tensor) -> dict[str, Any]:
    """Attribute accuracy of one-object frames: the locator finds the object, the probe classifies its window.
    A frame where nothing is found counts as wrong on every attribute."""
    crops, found = locator.crop_largest(images, probe.image_size)
    pred = probe.predict(crops)
    acc = {k: round(float(((pred[k].cpu() == labels[:, i]) & found).float().mean()), 4)
           for i, k in enumerate(probe.classes)}
    return {**acc, "found": round(float(found.float().mean()), 4), "n": int(len(images))}
