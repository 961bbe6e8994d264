"""Hole filling of coarse edits (Magic Fixup's synthesizer input), sized for the image it runs on.

The authors (adobe-research/MagicFixup) dilate the hole mask by a 7x7 square and fill the dilated holes with
OpenCV's Navier-Stokes inpainting before VAE encoding: radius 3 at inference, radius 5 in their training data
loader, on 512-px images. Those are pixel counts: used as is on a 64-px image, the 3-px band of exact coarse pixels
around each hole that the dilation hands to the inpainting is 8x wider relative to the image. `HoleFill` scales
both with the image's shorter side (`reference_px` = the size the values are for; None keeps them absolute).

`FillCoarseHoles` is the per-sample transform the data workers run (see `refedit.data.datamodule`), so training
batches arrive with ``coarse_filled`` and the training step never leaves the device for OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch


def fill_holes(coarse: torch.Tensor, valid: torch.Tensor, radius: float = 3.0, dilation: int = 7) -> torch.Tensor:
    """OpenCV Navier-Stokes inpainting of the holes (valid < 0.5), dilated by a `dilation` square first, in pixels
    as given. (N,3,H,W) in [-1,1] -> same; pixels outside the dilated holes are unchanged."""
    out = coarse.clone()
    kernel = np.ones((dilation, dilation), np.uint8) if dilation > 1 else None
    holes = (valid < 0.5).squeeze(1).cpu().numpy().astype(np.uint8)
    for i in range(coarse.shape[0]):
        if not holes[i].any():
            continue
        m = cv2.dilate(holes[i], kernel) if kernel is not None else holes[i]
        img = ((coarse[i].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0)
        filled = cv2.inpaint(np.ascontiguousarray(img.numpy()), m, float(radius), cv2.INPAINT_NS)
        filled_t = torch.from_numpy(filled).permute(2, 0, 1).to(coarse.device, torch.float32) / 127.5 - 1
        sel = torch.from_numpy(m.astype(bool)).to(coarse.device)[None].expand_as(filled_t)
        out[i] = torch.where(sel, filled_t.to(coarse.dtype), coarse[i])
    return out


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up (Python's round() goes to even)


@dataclass(frozen=True)
class HoleFill:
    """Dilation square and inpainting radius given for `reference_px`-pixel images, applied at any size.

    At size S (the shorter side) the dilation's reach, (dilation - 1) / 2 pixels, and the radius are multiplied
    by S / reference_px and rounded; the radius is at least 1 (OpenCV rounds it and uses at least 1 anyway).
    `reference_px=None`: the values are used as absolute pixels at every size.
    """

    dilation: int = 7
    radius: float = 3.0
    reference_px: int | None = 512

    def __post_init__(self) -> None:
        if int(self.dilation) < 1:
            raise ValueError(f"method.hole_dilation must be >= 1 (a square side in pixels), got {self.dilation}")
        if float(self.radius) <= 0:
            raise ValueError(f"method inpaint radius must be > 0 pixels, got {self.radius}")
        if self.reference_px is not None and int(self.reference_px) <= 0:
            raise ValueError(f"method.hole_reference_px must be a positive size or null, got {self.reference_px}")

    def at(self, size_hw: tuple[int, int] | torch.Size) -> tuple[int, float]:
        """(dilation square side, inpainting radius) in pixels for an image of `size_hw`."""
        if self.reference_px is None:
            return int(self.dilation), float(self.radius)
        s = min(int(size_hw[0]), int(size_hw[1])) / float(self.reference_px)
        reach = _round((int(self.dilation) - 1) / 2 * s)
        return 2 * reach + 1, float(max(1, _round(float(self.radius) * s)))

    def __call__(self, coarse: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) coarse edits and (N,1,H,W) valid masks -> the edits with their holes filled."""
        dilation, radius = self.at(coarse.shape[-2:])
        return fill_holes(coarse, valid, radius, dilation)


@dataclass(frozen=True)
class FillCoarseHoles:
    """Per-sample transform: adds ``coarse_filled`` (``coarse`` with its holes filled by `fill`) to every sample
    that has a ``coarse`` edit (an all-valid one when it has no ``valid``); other samples pass unchanged."""

    fill: HoleFill

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        if "coarse" in sample:
            coarse = sample["coarse"]
            valid = sample.get("valid")
            valid = torch.ones_like(coarse[:1]) if valid is None else valid
            out["coarse_filled"] = self.fill(coarse[None], valid[None])[0]
        return out
