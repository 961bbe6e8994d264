"""Logs a method's `log_images(batch)` (grids, clips) to every logger that can show images."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from refedit.batch import to_device

log = logging.getLogger(__name__)


class ImageLogger(L.Callback):
    """Every rank samples (under FSDP or any sharded strategy a forward on one rank waits for the others' shards);
    rank 0 alone writes the grid file and hands the media to the loggers."""

    def __init__(self, every_n_steps: int = 500, num_images: int = 4, num_steps: int = 20, seed: int = 0,
                 at_train_end: bool = True):
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.num_steps = num_steps
        self.seed = seed
        self.at_train_end = at_train_end
        self._batch = None

    def _fixed_batch(self, trainer: L.Trainer):
        if self._batch is None:  # the same validation samples every time (and on every rank), so grids compare
            dm = trainer.datamodule
            loader = dm.val_dataloader() if dm is not None and dm.val_set is not None else trainer.train_dataloader
            self._batch = next(iter(loader))
        return self._batch

    @torch.no_grad()
    def log_now(self, trainer: L.Trainer, pl_module) -> dict[str, torch.Tensor]:
        from refedit.callbacks.ema import EMA

        batch = to_device(self._fixed_batch(trainer), pl_module.device)
        ema = next((cb for cb in trainer.callbacks if isinstance(cb, EMA) and cb.shadow), None)
        was_training = pl_module.training
        pl_module.eval()
        if ema is not None:  # grids show the weights that evaluation and export will use
            ema.swap_in(pl_module)
        try:
            images = pl_module.log_images(batch, n=self.num_images, num_steps=self.num_steps, seed=self.seed)
        finally:
            if ema is not None:
                ema.swap_out(pl_module)
            pl_module.train(was_training)
        if trainer.is_global_zero:
            self._write(trainer, images)
        return images

    def _write(self, trainer: L.Trainer, images: dict[str, torch.Tensor]) -> None:
        from refedit.utils.images import save_image

        step = trainer.global_step
        for lg in trainer.loggers:
            log_media(lg, images, step)
        out = Path(trainer.default_root_dir) / "images"
        out.mkdir(parents=True, exist_ok=True)
        save_image(images["grid"], out / f"grid_step{step:07d}.png")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.log_now(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_train_end:
            self.log_now(trainer, pl_module)


GRID_CAPTION = "source | mask | condition | result | target"


def log_media(logger, images: dict[str, torch.Tensor], step: int, prefix: str = "") -> None:
    """A `log_images` dict (grid (3,H,W) in [0,1], optional clips (N,F,3,H,W)) to one logger: W&B through its
    logger's `log_image` / `log_video` (clips as Pillow GIFs: raw frames would need moviepy + imageio in wandb),
    TensorBoard through `add_image`; other loggers show no media."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        from refedit.utils.video import gif_bytes

        logger.log_image(f"{prefix}images/grid", [images["grid"].permute(1, 2, 0).float().cpu().numpy()], step=step,
                         caption=[GRID_CAPTION])
        if "video" in images:
            clips = list(images["video"][:2])
            logger.log_video(f"{prefix}videos/samples", [gif_bytes(c, fps=4) for c in clips], step=step,
                             format=["gif"] * len(clips))
    elif hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
        logger.experiment.add_image(f"{prefix}images/grid", images["grid"], step)
