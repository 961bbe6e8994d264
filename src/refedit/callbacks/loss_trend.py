"""A one-line verdict at the end of training: did the loss fall? Diffusion losses are noisy per step (random t),
so the line compares the means of the first and last windows of steps instead of two single values."""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

log = logging.getLogger(__name__)


class LossTrend(L.Callback):
    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"LossTrend: window must be >= 1, got {window}")
        self.window = window
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.losses.append(float(loss.detach()))

    def summary(self) -> dict[str, float] | None:
        finite = [v for v in self.losses if math.isfinite(v)]
        if len(finite) < 2:
            return None
        w = min(self.window, len(finite) // 2)
        first, last = sum(finite[:w]) / w, sum(finite[-w:]) / w
        return {"first": first, "last": last, "window": w, "steps": len(finite)}

    def on_train_end(self, trainer, pl_module):
        s = self.summary()
        if s is None or not trainer.is_global_zero:
            return
        verdict = "fell" if s["last"] < s["first"] else "did NOT fall"
        msg = (f"train/loss {verdict}: mean of first {s['window']} steps {s['first']:.4f} -> "
               f"last {s['window']} steps {s['last']:.4f} ({s['steps']} steps this run)")
        log.info(msg)
        print(msg, flush=True)
