"""Exponential moving average of the trainable weights only (frozen VAE/CLIP are never copied).

The EMA weights are swapped in for validation and image logging, saved in every checkpoint under
`ema_state` (parameter name -> tensor), restored on resume, and used by `load_method` / export.
"""

from __future__ import annotations

import lightning as L
import torch


class EMA(L.Callback):
    def __init__(self, decay: float = 0.9999, every_n_steps: int = 1, start_step: int = 0,
                 swap_for_validation: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.swap_for_validation = swap_for_validation
        self.shadow: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] | None = None
        self._pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # (shadows, params) in step

    def _params(self, pl_module) -> dict[str, torch.nn.Parameter]:
        ids = {id(p) for p in pl_module.trainable_parameters()}
        return {n: p for n, p in pl_module.named_parameters() if id(p) in ids}

    def on_fit_start(self, trainer, pl_module):
        params = self._params(pl_module)
        if not self.shadow:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        else:  # resumed: move restored tensors to the module's device
            self.shadow = {n: t.to(params[n].device) for n, t in self.shadow.items()}
        names = list(params)
        self._pairs = ([self.shadow[n] for n in names], [params[n] for n in names])

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step < self.start_step or step % self.every_n_steps:
            return
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages do not drag the init along
        if self._pairs is None:
            self.on_fit_start(trainer, pl_module)
        shadows, params = self._pairs
        # one foreach call instead of a Python loop over every parameter (and no name lookup per step)
        torch._foreach_lerp_(shadows, [p.detach() for p in params], 1 - decay)

    @torch.no_grad()
    def swap_in(self, pl_module) -> None:
        params = self._params(pl_module)
        self._backup = {n: p.detach().clone() for n, p in params.items()}
        for n, p in params.items():
            p.copy_(self.shadow[n])

    @torch.no_grad()
    def swap_out(self, pl_module) -> None:
        if self._backup is None:
            return
        for n, p in self._params(pl_module).items():
            p.copy_(self._backup[n])
        self._backup = None

    def on_validation_start(self, trainer, pl_module):
        if self.swap_for_validation and self.shadow and not trainer.sanity_checking:
            self.swap_in(pl_module)

    def on_validation_end(self, trainer, pl_module):
        if self.swap_for_validation and not trainer.sanity_checking:
            self.swap_out(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["ema_state"] = {n: t.detach().cpu() for n, t in self.shadow.items()}
        checkpoint["ema_decay"] = self.decay

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if "ema_state" in checkpoint:
            self.shadow = {n: t.clone() for n, t in checkpoint["ema_state"].items()}
            self._pairs = None
