"""The stage-1 budget: one dataclass whose fields are the `foundations.stage1` config keys (plus the toy U-Net
architecture, `foundations.unet`). Its JSON form is stored in foundations.json: a cache built with another budget
is rebuilt, never reused."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from refedit.utils.config import config_from_dict


@dataclass
class FoundationsConfig:
    resolution: int = 64
    seed: int = 0
    # VAE (AutoencoderKL) on random crops of toyworld frames
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_images: int = 1536
    # CLIP (text + vision towers) on object crops and their captions
    clip_steps: int = 1500
    clip_batch: int = 128
    clip_lr: float = 2e-3
    clip_image_size: int = 64
    clip_images: int = 6000
    # the toyworld probe (shape / colour / pattern of an object crop) and the object locator
    probe_steps: int = 1000
    probe_batch: int = 64
    probe_lr: float = 5e-3
    probe_images: int = 3000
    locator_steps: int = 300
    # the toy Stable Diffusion: text-to-image U-Net, then the inpainting U-Net fine-tuned from it
    prior_images: int = 8000
    prior_single_object: float = 0.35  # share of one-object scenes (their caption names exactly what is drawn)
    prior_closeups: float = 0.3        # share of object close-ups (one object filling the frame, its caption):
    # where the caption's words decide most pixels, so the U-Net binds words to appearance within its budget
    prior_steps: int = 2000
    prior_batch: int = 32
    prior_lr: float = 1e-3
    inpaint_steps: int = 800
    inpaint_lr: float = 5e-4
    caption_drop: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    # held-out quality measured at the end of the build (stock diffusers pipelines)
    eval_captions: int = 64
    eval_steps: int = 25
    eval_guidance: float = 5.0
    # text-to-image steps at which the EMA prior is also evaluated (foundations.json "curve": quality against
    # minutes of stage 1, so the budget choice is visible); the final step is always evaluated
    prior_curve: list[int] = field(default_factory=lambda: [500, 1000, 1500])
    # architecture of the toy SD U-Net (a diffusers UNet2DConditionModel config; conf/foundations/default.yaml)
    unet: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def foundations_config(values: Mapping[str, Any] | None, where: str = "foundations.stage1",
                       **extra: Any) -> FoundationsConfig:
    """A FoundationsConfig from a (Hydra) mapping; an unknown key is an error naming it and the allowed ones."""
    return config_from_dict(FoundationsConfig, {**dict(values or {}), **extra}, where)
