"""Noise schedule and training targets (DDPM) shared with the DDIM sampler: one config, both schedulers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler


class NoiseSchedule:
    """Wraps diffusers' DDPMScheduler for training and builds the matching DDIMScheduler for sampling.

    Supports epsilon and v-prediction and the zero-terminal-SNR rescaling (`rescale_betas_zero_snr`), which
    needs `timestep_spacing: trailing` at sampling time so the first step starts from pure noise.
    """

    def __init__(self, config: Mapping[str, Any]):
        cfg = dict(config)
        if cfg.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction"):
            raise ValueError(f"backbone.scheduler.prediction_type must be 'epsilon' or 'v_prediction', "
                             f"got {cfg['prediction_type']!r}")
        if cfg.get("rescale_betas_zero_snr") and cfg.get("timestep_spacing", "leading") != "trailing":
            cfg["timestep_spacing"] = "trailing"
        self.config = cfg
        self.train_scheduler = DDPMScheduler.from_config(cfg)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.train_scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        return self.train_scheduler.config.prediction_type

    def sample_timesteps(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), device=device, generator=generator)

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.train_scheduler.add_noise(z0, noise, t)

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.train_scheduler.get_velocity(z0, noise, t)

    def ddim(self, **overrides: Any) -> DDIMScheduler:
        return DDIMScheduler.from_config({**self.config, **overrides})
