"""DDIM sampling with classifier-free guidance, shared by every method.

A method supplies `denoise(z, t, cond) -> model output` and the conditional / unconditional condition dicts;
the guider batches both branches into one forward pass, in diffusers' order (unconditional first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

Cond = Mapping[str, Any]
Denoiser = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


def _cat_conds(a: Cond, b: Cond) -> dict[str, Any]:
    if set(a) != set(b):
        raise ValueError(f"conditional and unconditional inputs have different keys: {sorted(a)} vs {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) if isinstance(a[k], torch.Tensor) else a[k] for k in a}


class CFGGuider:
    """eps = eps(uncond) + s * (eps(cond) - eps(uncond)) for every s: 0 is unconditional, 0 < s < 1 interpolates
    (diffusers pipelines skip guidance for s <= 1 instead). s = 1, or no uncond, runs the conditional branch only."""

    def __init__(self, scale: float):
        self.scale = float(scale)

    def __call__(self, denoise: Denoiser, z: torch.Tensor, t: torch.Tensor, cond: Cond,
                 uncond: Cond | None) -> torch.Tensor:
        if uncond is None or self.scale == 1.0:
            return denoise(z, t, cond)
        out_u, out_c = denoise(torch.cat([z, z]), t, _cat_conds(uncond, cond)).chunk(2)
        return out_u + self.scale * (out_c - out_u)


def sdedit_timesteps(scheduler: DDIMScheduler, num_steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that a start at `strength` (1 = pure noise) runs, as diffusers' img2img does."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    scheduler.set_timesteps(num_steps)
    init = min(int(num_steps * strength), num_steps)
    start = max(num_steps - init, 0)
    ts = scheduler.timesteps[start * scheduler.order:]
    if len(ts) == 0:
        raise ValueError(f"strength={strength} with {num_steps} steps leaves no denoising step")
    return ts


@torch.no_grad()
def ddim_sample(denoise: Denoiser, latents: torch.Tensor, scheduler: DDIMScheduler, timesteps: torch.Tensor,
                cond: Cond, uncond: Cond | None = None, guidance_scale: float = 1.0, eta: float = 0.0,
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Run `timesteps` of DDIM from `latents` (already noised to the first timestep)."""
    guider = CFGGuider(guidance_scale)
    z = latents
    for t in tqdm(timesteps, desc="sampling", disable=not progress, leave=False):
        model_in = scheduler.scale_model_input(z, t)
        out = guider(denoise, model_in, t, cond, uncond)
        z = scheduler.step(out, t, z, eta=eta, generator=generator).prev_sample
    return z
