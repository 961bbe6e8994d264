"""Sweeps that optimise: refedit.train returns `optimized_metric`; conf/hparams_search/optuna.yaml runs Optuna."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from refedit.train import metric_value


def test_the_optimized_metric_is_returned_or_named_when_missing():
    assert metric_value({"val/loss": 0.5, "train/loss": 0.7}, "val/loss") == 0.5
    assert metric_value({"val/loss": 0.5}, None) is None
    with pytest.raises(KeyError, match=r"optimized_metric=val/lss: not logged by this run \(logged: \['val/loss'\]"):
        metric_value({"val/loss": 0.5}, "val/lss")


@pytest.mark.slow
def test_an_optuna_sweep_of_two_trials_minimises_the_validation_loss(random_parts, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "refedit.train", "-m", "hparams_search=optuna", "method=sd_inpaint",
           "experiment=smoke", "logger=csv", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
           "trainer.max_steps=2", "trainer.val_check_interval=2", f"backbone.root={random_parts}",
           "backbone.build_foundations=false", f"hydra.sweep.dir={tmp_path}", "data.batch_size=2",
           "callbacks.image_logger.num_steps=2", "callbacks.image_logger.num_images=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = sorted(p for p in tmp_path.iterdir() if (p / ".hydra").is_dir())
    assert len(trials) == 2
    losses, params = [], []
    for t in trials:
        rows = list(csv.DictReader(open(t / "csv" / "version_0" / "metrics.csv")))
        losses.append(float(next(r["val/loss"] for r in rows if r.get("val/loss"))))
        cfg = OmegaConf.load(t / ".hydra" / "config.yaml")
        params.append((cfg.method.optimizer.lr, cfg.method.cond_drop_prob))
        assert 1e-5 <= cfg.method.optimizer.lr <= 1e-3 and 0.0 <= cfg.method.cond_drop_prob <= 0.3
    assert params[0] != params[1], "both trials ran the same parameters"
    result = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert result.best_value == pytest.approx(min(losses))  # what each trial returned is what Optuna saw
    assert set(result.best_params) == {"method.optimizer.lr", "method.cond_drop_prob"}
