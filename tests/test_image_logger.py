"""ImageLogger: every rank samples (a sharded forward needs all of them), rank 0 alone writes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from refedit.callbacks.image_logger import ImageLogger


class Sampler(torch.nn.Module):
    """Stands in for a method: counts `log_images` calls."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0
        self.device = torch.device("cpu")

    def log_images(self, batch, n, num_steps, seed):
        self.calls += 1
        return {"grid": torch.rand(3, 8, 20), "video": torch.rand(1, 4, 3, 8, 8)}


class Logger:
    def __init__(self):
        self.images = []
        self.experiment = self

    def add_image(self, key, image, step):
        self.images.append((key, step))


def _trainer(rank: int, root, logger):
    batch = {"source": torch.zeros(2, 3, 8, 8)}
    dm = SimpleNamespace(val_set=[0], val_dataloader=lambda: [batch])
    return SimpleNamespace(global_rank=rank, is_global_zero=rank == 0, global_step=10, callbacks=[],
                           loggers=[logger], default_root_dir=str(root), datamodule=dm)


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_samples_and_only_rank_zero_writes(rank, tmp_path):
    cb, model, logger = ImageLogger(every_n_steps=5, num_steps=1), Sampler(), Logger()
    trainer = _trainer(rank, tmp_path, logger)
    cb.on_train_batch_end(trainer, model, None, None, 0)
    cb.on_train_end(trainer, model)
    assert model.calls == 2  # rank 1 joins both forwards
    written = sorted(p.name for p in (tmp_path / "images").glob("*")) if (tmp_path / "images").exists() else []
    if rank == 0:
        assert written == ["grid_step0000010.png"] and logger.images == [("images/grid", 10)] * 2
    else:
        assert written == [] and logger.images == []


def test_wandb_media_go_through_the_loggers_log_image_and_log_video(monkeypatch, tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    from refedit.callbacks.image_logger import log_media

    calls = []
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, step=None, **kw: calls.append(
        (key, len(images), step, kw)))
    monkeypatch.setattr(WandbLogger, "log_video", lambda self, key, videos, step=None, **kw: calls.append(
        (key, len(videos), step, kw)))
    log_media(WandbLogger(save_dir=str(tmp_path), offline=True), Sampler().log_images(None, 1, 1, 0), step=3)
    assert [c[:3] for c in calls] == [("images/grid", 1, 3), ("videos/samples", 1, 3)]
    assert calls[1][3] == {"format": ["gif"]}
