"""W&B runs as a researcher reads them: names from overrides, a sweep's jobs in one group, job types, tags, one
offline switch, the config logged once, media through the logger."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refedit.utils.config import compose
from refedit.utils.tracking import run_name, run_tags
from wandb_files import read_run


def test_run_names_say_what_the_run_is():
    ov = ["method=sd_inpaint", "experiment=smoke", "method.optimizer.lr=1e-4", "trainer.max_steps=2",
          "backbone.root=/tmp/parts", "paths.output_dir=/tmp/x", "~callbacks.image_logger",
          "callbacks.image_logger.num_steps=2", "method.sampling.num_steps=3"]
    assert run_name("sd_inpaint", ov, swept=None) == (
        "sd_inpaint lr=1e-4 max_steps=2 callbacks.image_logger.num_steps=2 method.sampling.num_steps=3")
    assert run_name("sd_inpaint", ov, swept=["method.optimizer.lr"]) == "sd_inpaint lr=1e-4"
    assert run_name("mimicbrush", [], swept=None) == "mimicbrush"
    assert run_tags(["smoke"], "smoke", "tiny") == ["smoke", "preset:smoke", "backbone:tiny"]


@pytest.mark.parametrize("value, offline", [(None, True), ("true", True), ("false", False), ("0", False)])
def test_one_offline_switch(monkeypatch, value, offline):
    if value is None:
        monkeypatch.delenv("REFEDIT_WANDB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("REFEDIT_WANDB_OFFLINE", value)
    cfg = compose("train", ["paths.output_dir=/tmp/x"])
    assert cfg.logger.wandb.offline is offline and cfg.logger.wandb.job_type == "train"
    assert compose("eval", ["ckpt=x.ckpt", "paths.output_dir=/tmp/x"]).logger.wandb.job_type == "eval"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_leaves_the_switch_to_refedit():
    """`REFEDIT_WANDB_OFFLINE=false make train` must reach W&B online: make sets no WANDB_MODE over it."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "REFEDIT_WANDB_OFFLINE")}
    db = subprocess.run(["make", "-pn", "help"], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                        env={**env, "REFEDIT_WANDB_OFFLINE": "false"}).stdout
    assert "WANDB_MODE" not in db
    assert "REFEDIT_WANDB_OFFLINE = false" in db.splitlines()


def test_a_sweep_shares_a_group_and_names_each_run_by_its_learning_rate(random_parts, tmp_path):
    """`make sweep ARGS='method.optimizer.lr=1e-4,3e-4'`, read back from the two offline run files."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("REFEDIT_WANDB_OFFLINE", None)
    cmd = [sys.executable, "-m", "refedit.train", "-m", "method=sd_inpaint", "experiment=smoke", "logger=wandb",
           "method.optimizer.lr=1e-4,3e-4", "trainer.max_steps=2", f"backbone.root={random_parts}",
           "backbone.build_foundations=false", f"hydra.sweep.dir={tmp_path / 'sweep'}", "data.batch_size=2",
           "callbacks.image_logger.num_steps=2", "callbacks.image_logger.num_images=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*"))
    assert len(runs) == 2, runs
    a, b = (read_run(r) for r in runs)
    assert a["group"] == b["group"] == "train-sweep", (a["group"], b["group"])
    assert {a["name"], b["name"]} == {"sd_inpaint lr=0.0001", "sd_inpaint lr=0.0003"}
    assert a["job_type"] == "train" and set(a["tags"]) == {"smoke", "preset:smoke", "backbone:tiny"}
    # the composed config once (no second copy of the method's own arguments at the top), media via log_image
    assert {"method", "data", "trainer"} <= a["config"] and "cond_drop_prob" not in a["config"]
    assert "images/grid" in a["history"]


def test_the_comparison_run_is_a_compare_job_with_its_preset_and_backbones(tmp_path, monkeypatch):
    from refedit.compare import _log_wandb
    from refedit.eval.report import summarize

    monkeypatch.setenv("WANDB_MODE", "offline")
    rows = [{"method": "sd_inpaint", "task": "exemplar_inpaint", "sample_id": f"s{i}", "psnr_in": 20.0 + i}
            for i in range(3)]
    (tmp_path / "plots").mkdir()
    _log_wandb(tmp_path, "compare-smoke-run1", summarize(rows), tags=["preset:smoke", "backbone:tiny"])
    (run,) = (read_run(r) for r in (tmp_path / "wandb").glob("offline-run-*"))
    assert (run["name"], run["group"], run["job_type"]) == ("comparison", "compare-smoke-run1", "compare")
    assert run["tags"] == ["preset:smoke", "backbone:tiny"] and "compare/summary" in run["history"]
