"""Save a checkpoint when the job is told to stop (SIGTERM, SIGUSR1), and keep the W&B run id with it.

Lightning turns SIGTERM into `trainer.received_sigterm` and stops after the current batch; this callback
writes `last.ckpt` at that batch's end first, so nothing is lost, and stops there (no final validation).
On SLURM, Lightning itself owns SIGUSR1 (checkpoint + requeue), the single requeue owner; elsewhere SIGUSR1
means "checkpoint and stop".

Under DDP the ranks agree first (any rank signalled -> all save and stop at the same batch): a save is a
collective, and one rank saving while another runs on would deadlock. Under submitit, submitit has already
installed its own SIGUSR1 handler (which requeues without a Lightning checkpoint), and Lightning does not
replace an existing handler: `setup` removes submitit's so that Lightning's SLURM handler is installed.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(L.Callback):
    def __init__(self, filename: str = "last.ckpt"):
        self.filename = filename
        self._usr1 = False
        self._previous = None
        self._signum = None
        #: why training stopped early ("SIGTERM" / "SIGUSR1"), None if it was not preempted
        self.preempted: str | None = None

    @staticmethod
    def _slurm(trainer):
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = getattr(trainer.strategy, "cluster_environment", None)
        return env if isinstance(env, SLURMEnvironment) else None

    def setup(self, trainer, pl_module, stage):
        env = self._slurm(trainer)
        if env is not None and hasattr(signal, "SIGUSR1"):
            self._release_foreign_requeue_handler(env)

    def on_train_start(self, trainer, pl_module):
        # after Lightning's own signal set-up, which saves the handlers it finds and puts them back at its
        # teardown (also after an exception, where no callback teardown runs): ours must not be among them
        if self._slurm(trainer) is not None or not hasattr(signal, "SIGUSR1"):
            return
        try:
            self._signum = signal.SIGUSR1
            self._previous = signal.signal(signal.SIGUSR1, self._on_usr1)
        except ValueError:  # not the main thread (e.g. a spawned test worker)
            self._previous = self._signum = None

    def _release_foreign_requeue_handler(self, env) -> None:
        """Lightning installs its SLURM requeue handler only where no handler exists (runs after `setup`)."""
        sig = env.requeue_signal
        if not env.auto_requeue or sig is None:
            return
        current = signal.getsignal(sig)
        if current in (None, signal.SIG_DFL, signal.SIG_IGN):
            return
        bound_to = getattr(current, "__self__", None)
        owner = getattr(bound_to, "__module__", "") or getattr(current, "__module__", "")
        if not owner.startswith("submitit"):
            return
        try:
            self._previous = signal.signal(sig, signal.SIG_DFL)
            self._signum = sig
            log.info("SLURM: %s handled by Lightning (checkpoint + requeue) instead of submitit", sig.name)
        except ValueError:
            self._previous = self._signum = None

    def _on_usr1(self, signum, frame):
        self._usr1 = True

    def teardown(self, trainer, pl_module, stage):
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous is not None and self._signum is not None:
            try:
                signal.signal(self._signum, self._previous)
            except ValueError:
                pass
            self._previous = self._signum = None

    def path(self, trainer) -> Path:
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return Path(cb.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        signalled = bool(trainer.received_sigterm or self._usr1)
        if trainer.world_size > 1:  # one collective per step; every rank must take the same branch
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        self._save(trainer, "SIGUSR1" if self._usr1 else "SIGTERM")
        self._usr1 = False
        # stop now, on every rank at once: `should_stop` would first run a validation (grace time is short)
        raise SIGTERMException()

    def on_exception(self, trainer, pl_module, exception):
        """SIGTERM during validation: Lightning stops there, before any batch end. Single process only: under
        DDP the ranks may stop at different points and a save is a collective. (Lightning calls no `teardown`
        after an exception, so the signal handler is put back here too.)"""
        try:
            if self._should_save_on_exception(trainer, exception):
                self._save_trained_weights(trainer, pl_module)
        finally:
            self._restore_handler()

    def _should_save_on_exception(self, trainer, exception) -> bool:
        return (isinstance(exception, SIGTERMException) and not self.preempted and trainer.world_size == 1
                and trainer.state.fn == "fit" and trainer.received_sigterm)

    def _save_trained_weights(self, trainer, pl_module) -> None:
        from refedit.callbacks.ema import EMA

        for cb in trainer.callbacks:  # validation runs on EMA weights: put the trained ones back first
            if isinstance(cb, EMA):
                cb.swap_out(pl_module)
        self._save(trainer, "SIGTERM")

    def _save(self, trainer, why: str) -> None:
        self.preempted = why
        path = self.path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning("%s received at step %d: checkpoint saved to %s", why, trainer.global_step, path)
            print(f"preempted: checkpoint {path} (step {trainer.global_step})", flush=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                checkpoint["wandb_run_id"] = lg.version
