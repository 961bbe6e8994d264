"""Exponential moving average of the trainable weights only (frozen VAE/CLIP are never copied).

The EMA weights are swapped in for validation and image logging, saved in every checkpoint under
`ema_state` (parameter name -> tensor), restored on resume, and used by `load_method` / export.

Under FSDP (`use_orig_params=True`) each rank averages only its own shards of the parameters, so the update
costs no communication; a checkpoint gathers the full EMA tensors (every rank takes part, as in FSDP's own
state-dict gathering) and a resumed run scatters them back into shards. Names never carry wrapper prefixes
(`_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.`, `_orig_mod.`), so `ema_state` is the same with any
strategy and a checkpoint moves between them.
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _fsdp_root(trainer) -> torch.nn.Module | None:
    """The root FSDP module when the trainer shards the model with FSDP, else None."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, FSDPStrategy) and strategy.model is not None:
        return strategy.model
    return None


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
        return {clean_name(n): p for n, p in pl_module.named_parameters() if id(p) in ids}

    def on_fit_start(self, trainer, pl_module):
        params = self._params(pl_module)
        root = _fsdp_root(trainer)
        if not self.shadow:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        else:  # resumed
            missing = sorted(set(params) - set(self.shadow))
            if missing:
                raise KeyError(f"EMA: the checkpoint's ema_state lacks trainable parameters {missing[:5]}")
            if root is not None:  # under FSDP: the checkpoint holds full tensors, this rank keeps its shards
                self.shadow = self._scatter_full(root, params, self.shadow)
            else:
                self.shadow = {n: self.shadow[n].to(params[n].device) for n in params}
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

    @staticmethod
    @contextlib.contextmanager
    def _restored_after(params: dict[str, torch.nn.Parameter]):
        """Context: whatever is written into the (local) parameters inside, the training values come back."""
        backup = {n: p.detach().clone() for n, p in params.items()}
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])

    @torch.no_grad()
    def _gather_full(self, root: torch.nn.Module, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """Full EMA tensors from every rank's shards (collective)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        on_gpu = any(p.is_cuda for p in params.values())  # gather into host memory; FSDP offloads only from CUDA
        with self._restored_after(params):
            for n, p in params.items():
                p.copy_(self.shadow[n])
            with FSDP.summon_full_params(root, writeback=False, offload_to_cpu=on_gpu):
                return {clean_name(n): p.detach().cpu().clone() for n, p in root.named_parameters()
                        if clean_name(n) in params}

    @torch.no_grad()
    def _scatter_full(self, root: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                      full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's shards of full EMA tensors (collective)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with self._restored_after(params):
            with FSDP.summon_full_params(root, writeback=True):
                for n, p in root.named_parameters():
                    if clean_name(n) in params:
                        p.copy_(full[clean_name(n)])
            return {n: p.detach().clone() for n, p in params.items()}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        root = _fsdp_root(trainer)
        if root is not None and self.shadow:  # collective: every rank saves, as FSDP's state dict needs
            checkpoint["ema_state"] = self._gather_full(root, self._params(pl_module))
        else:
            checkpoint["ema_state"] = {n: t.detach().cpu() for n, t in self.shadow.items()}
        checkpoint["ema_decay"] = self.decay

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        if "ema_state" in checkpoint:
            self.shadow = {n: t.clone() for n, t in checkpoint["ema_state"].items()}
            self._pairs = None
