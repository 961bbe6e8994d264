"""Save a checkpoint when the job is told to stop (SIGTERM, SIGUSR1), and keep the W&B run id with it.

Lightning turns SIGTERM into `trainer.received_sigterm` and stops after the current batch; this callback
writes `last.ckpt` at that batch's end first, so nothing is lost. On SLURM, Lightning itself owns SIGUSR1
(checkpoint + requeue) — the single requeue owner; elsewhere SIGUSR1 means "checkpoint and stop".
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    def __init__(self, filename: str = "last.ckpt"):
        self.filename = filename
        self._usr1 = False
        self._previous = None

    def setup(self, trainer, pl_module, stage):
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = getattr(trainer.strategy, "cluster_environment", None)
        if not isinstance(env, SLURMEnvironment) and hasattr(signal, "SIGUSR1"):
            try:
                self._previous = signal.signal(signal.SIGUSR1, self._on_usr1)
            except ValueError:  # not the main thread (e.g. a spawned test worker)
                self._previous = None

    def _on_usr1(self, signum, frame):
        self._usr1 = True

    def teardown(self, trainer, pl_module, stage):
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def path(self, trainer) -> Path:
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return Path(cb.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not (trainer.received_sigterm or self._usr1):
            return
        path = self.path(trainer)
        trainer.save_checkpoint(path)
        log.warning("%s received at step %d: checkpoint saved to %s", "SIGTERM" if trainer.received_sigterm
                    else "SIGUSR1", trainer.global_step, path)
        print(f"preempted: checkpoint {path}", flush=True)
        if self._usr1:
            trainer.should_stop = True
            self._usr1 = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                checkpoint["wandb_run_id"] = lg.version
