"""The random stream of training (noise, timesteps, condition dropout) kept across a resume, one per rank.

Lightning restores weights, optimiser and step, not the RNGs: without this a resumed run draws other noise
than the uninterrupted run would have. The states are taken at save time on every rank, stored per global
rank in `checkpoint["rng_states"]`, and put back right before the first resumed training step.

Lightning also re-seeds every DDP rank with the same seed, so all ranks would draw the same noise and
timesteps; `decorrelate_ranks` offsets the training stream's seed by the global rank (rank 0 keeps the run's
seed).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


def capture() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGState(L.Callback):
    def __init__(self, decorrelate_ranks: bool = True):
        self.decorrelate_ranks = decorrelate_ranks
        self._loaded: list[dict[str, Any]] | None = None

    def setup(self, trainer, pl_module, stage):
        if stage == "fit" and self.decorrelate_ranks and trainer.world_size > 1:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) + trainer.global_rank
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        state = capture()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, state)
        else:
            states = [state]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self._loaded = checkpoint.get("rng_states")

    def on_train_start(self, trainer, pl_module):
        # the last moment before the first step: nothing after this draws from the global RNGs before it
        if not self._loaded:
            return
        if len(self._loaded) != trainer.world_size:
            log.warning(
                "checkpoint holds RNG states of %d ranks, this run has %d: fresh random stream",
                len(self._loaded),
                trainer.world_size,
            )
        else:
            restore(self._loaded[trainer.global_rank])
        self._loaded = None
