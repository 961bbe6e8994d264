"""Logs a method's `log_images(batch)` (grids, clips) to every logger that can show images."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from refedit.batch import to_device

log = logging.getLogger(__name__)


class ImageLogger(L.Callback):
    def __init__(self, every_n_steps: int = 500, num_images: int = 4, num_steps: int = 20, seed: int = 0,
                 at_train_end: bool = True):
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.num_steps = num_steps
        self.seed = seed
        self.at_train_end = at_train_end
        self._batch = None

    def _fixed_batch(self, trainer: L.Trainer):
        if self._batch is None:  # the same validation samples every time, so grids are comparable over training
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
        step = trainer.global_step
        for lg in trainer.loggers:
            _log_to(lg, images, step)
        out = Path(trainer.default_root_dir) / "images"
        out.mkdir(parents=True, exist_ok=True)
        from refedit.utils.images import save_image

        save_image(images["grid"], out / f"grid_step{step:07d}.png")
        return images

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.log_now(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_train_end and trainer.is_global_zero:
            self.log_now(trainer, pl_module)


def _log_to(logger, images: dict[str, torch.Tensor], step: int) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        import wandb

        payload = {"images/grid": wandb.Image(images["grid"].permute(1, 2, 0).numpy(),
                                              caption="source | mask | condition | result | target")}
        if "video" in images:  # GIF bytes encoded with Pillow: raw frames would need moviepy + imageio in wandb
            for i, clip in enumerate(images["video"][:2]):
                payload[f"videos/sample{i}"] = wandb.Video(_gif_bytes(clip, fps=4), format="gif")
        logger.experiment.log({**payload, "trainer/global_step": step})
    elif hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
        logger.experiment.add_image("images/grid", images["grid"], step)


def _gif_bytes(clip: torch.Tensor, fps: int = 4):
    """(F,3,H,W) in [0,1] -> an in-memory looping GIF."""
    import io

    from PIL import Image

    frames = [Image.fromarray(f) for f in (clip.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    buf.seek(0)
    return buf
