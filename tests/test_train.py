"""End to end through the real Hydra configs: train, checkpoint, resume-safety pieces, multirun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refedit.utils.config import compose


def _cfg(parts: str, out: Path, *extra: str):
    return compose("train", [f"backbone.root={parts}", "backbone.build_foundations=false",
                             f"paths.output_dir={out}", "logger=csv", "trainer.max_steps=3", "data.batch_size=2",
                             "trainer.val_check_interval=3", "callbacks.image_logger.num_steps=2",
                             "callbacks.image_logger.num_images=2", *extra])


def test_train_writes_checkpoint_and_prints_it(random_parts, tmp_path, capsys):
    from refedit.train import train

    path = train(_cfg(random_parts, tmp_path))
    assert Path(path).is_file()
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"checkpoint: {path}"
    assert any(line.startswith("train/loss ") and "first 1 steps" in line for line in out), "no loss-trend line"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "images").glob("grid_*.png")), "the image grid was not written"
    ckpt = torch.load(path, weights_only=False)
    assert "ema_state" in ckpt and ckpt["ema_state"], "EMA weights missing from the checkpoint"
    assert not any(k.startswith(("codec.", "text_encoder.")) for k in ckpt["state_dict"]), "frozen parts stored"


def test_loss_trend_compares_window_means():
    from refedit.callbacks import LossTrend

    cb = LossTrend(window=2)
    for v in [4.0, 2.0, float("nan"), 3.0, 1.0, 0.5]:
        cb.on_train_batch_end(None, None, {"loss": torch.tensor(v)}, None, 0)
    s = cb.summary()
    assert s == {"first": 3.0, "last": 0.75, "window": 2, "steps": 5}
    with pytest.raises(ValueError, match="window"):
        LossTrend(window=0)


def test_checkpoint_reloads_for_inference(random_parts, tmp_path):
    from refedit.methods import load_method
    from refedit.train import train

    path = train(_cfg(random_parts, tmp_path))
    m = load_method(path)
    assert m.name == "sd_inpaint" and not m.training


def test_missing_batch_key_names_key_and_data_config(random_parts, tmp_path):
    from refedit.batch import BatchKeyError
    from refedit.train import train

    with pytest.raises(BatchKeyError, match=r"source.*data=toyworld data.task=text_inpaint"):
        train(_cfg(random_parts, tmp_path, "data.task=subject_video"))


@pytest.mark.slow
def test_overfit_eight_samples(random_parts):
    """Loss on fixed (t, noise) draws of 8 toyworld samples falls below half its start."""
    from refedit.batch import collate_edit
    from refedit.data.toyworld import ToyWorldDataset
    from refedit.utils.config import build_method

    cfg = _cfg(random_parts, Path("/tmp/unused"))
    torch.manual_seed(0)
    model = build_method(cfg.method, cond_drop_prob=0.0, full_mask_prob=0.0)
    ds = ToyWorldDataset("text_inpaint", split="train", size=64, length=8)
    batch = collate_edit([ds[i] for i in range(8)])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    z0 = model.target_latents(batch)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.linspace(50, 950, 8).long()

    def fixed_loss():
        with torch.no_grad():
            cond, _ = model.conditions(batch, train=False)
            pred = model.denoise(model.schedule.add_noise(z0, noise, t), t, cond)
            return torch.nn.functional.mse_loss(pred, noise).item()

    start = fixed_loss()
    model.train()
    for _ in range(150):
        loss = model.diffusion_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fixed_loss()
    assert end < 0.5 * start, (start, end)


@pytest.mark.slow
def test_multirun_gives_separate_runs(random_parts, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "refedit.train", "-m", "method=sd_inpaint", "experiment=smoke",
           "trainer.max_steps=2,4", f"backbone.root={random_parts}", "backbone.build_foundations=false",
           f"hydra.sweep.dir={tmp_path}", "data.batch_size=2", "callbacks.image_logger.num_steps=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert len(jobs) == 2
    run_ids = set()
    for job in jobs:
        assert (job / "checkpoints" / "final.ckpt").is_file()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job}: expected one W&B run, found {runs}"
        run_ids.add(runs[0].name.rsplit("-", 1)[-1])
    assert len(run_ids) == 2
    assert [line for line in res.stdout.splitlines() if line.startswith("checkpoint: ")].__len__() == 2


def test_checkpoint_of_another_vae_is_refused(random_parts, tmp_path):
    """The frozen VAE is not stored in checkpoints: loading against a different VAE must fail, not decode wrongly."""
    from refedit.methods import load_method
    from refedit.train import train
    from refedit.utils.checkpoint import CheckpointError

    path = train(_cfg(random_parts, tmp_path))
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["refedit_codec"]["scaling_factor"] > 0
    ckpt["refedit_codec"]["scaling_factor"] *= 2  # as if the foundations had been rebuilt since
    torch.save(ckpt, tmp_path / "other_vae.ckpt")
    with pytest.raises(CheckpointError, match="another VAE"):
        load_method(tmp_path / "other_vae.ckpt")
