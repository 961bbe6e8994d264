"""The epoch summary of bad data: files skipped (with their reasons) reach the main process through batch meta,
so the count is right with DataLoader workers too."""

from __future__ import annotations

import logging

import lightning as L

from refedit.data.errors import BadSampleLog

log = logging.getLogger(__name__)


class BadSampleSummary(L.Callback):
    def __init__(self) -> None:
        self.bad = BadSampleLog()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if isinstance(batch, dict):
            self.bad.update_from_batch(batch)

    def _report(self, trainer, pl_module, when: str) -> None:
        s = self.bad.summary()
        if s["skipped"]:
            log.warning("%s: %d samples replaced, %d bad files %s; e.g. %s", when, s["skipped"], s["files"],
                        s["by_reason"], list(s["examples"].items())[:3])
        if trainer.loggers:
            pl_module.log("data/skipped_samples", float(s["skipped"]), on_epoch=True, rank_zero_only=True)

    def on_train_epoch_end(self, trainer, pl_module):
        self._report(trainer, pl_module, f"epoch {trainer.current_epoch}")

    def on_train_end(self, trainer, pl_module):
        s = self.bad.summary()
        if s["skipped"]:
            log.warning("training: %d samples replaced in total (%d bad files): %s", s["skipped"], s["files"],
                        s["by_reason"])
