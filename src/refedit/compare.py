"""The comparison: train every method under one budget (a Hydra multirun over method=), run the benchmark,
write the report. python -m refedit.compare preset=smoke|default [methods=[...]] [+checkpoints.<m>=<ckpt>]"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from refedit.foundations import prepare_foundations
from refedit.utils.cli import ReportedError, UsageError, report_input_errors
from refedit.utils.config import CONFIG_DIR
from refedit.utils.run import task_wrapper

log = logging.getLogger("refedit.compare")


def train_all(methods: list[str], overrides: list[str], sweep_dir: Path, group: str,
              preset: str | None = None) -> dict[str, str]:
    """One Hydra multirun over method= (its W&B runs in `group`, tagged with the comparison's `preset`); returns
    method -> final checkpoint."""
    cmd = [sys.executable, "-m", "refedit.train", "-m", f"method={','.join(methods)}", *overrides,
           f"hydra.sweep.dir={sweep_dir}", f"+logger_group={group}",
           *([f"+logger_preset={preset}"] if preset else [])]
    print("refedit.compare: training", ", ".join(methods), flush=True)
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd)
    if done.returncode:  # the training job has printed its own error
        raise ReportedError(f"training {', '.join(methods)} failed (exit status {done.returncode}), see above")
    ckpts = trained_checkpoints(sweep_dir)
    missing = set(methods) - set(ckpts)
    if missing:
        raise RuntimeError(f"no checkpoint for method(s) {sorted(missing)} in {sweep_dir}")
    return ckpts


def trained_checkpoints(sweep_dir: Path, strict: bool = True) -> dict[str, str]:
    """method -> final checkpoint of each training job of a comparison's multirun (`<run>/train/<n>/`).
    `strict=False` skips a job that left no checkpoint instead of raising."""
    ckpts: dict[str, str] = {}
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / ".hydra").is_dir()):
        chosen = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices.method
        ckpt = job / "checkpoints" / "final.ckpt"
        if not ckpt.is_file():
            if not strict:
                continue
            raise FileNotFoundError(f"training job {job} of method '{chosen}' left no {ckpt}")
        ckpts[chosen] = str(ckpt)
    return ckpts


def run_checkpoints(run_dir: str | Path) -> dict[str, str]:
    """method -> checkpoint a comparison run benchmarked: those it trained (`train/`) and those it was given
    (`checkpoints.<m>=` in its `.hydra/config.yaml`), in the run's `methods` order."""
    run_dir = Path(run_dir)
    cfg_file = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(cfg_file) if cfg_file.is_file() else OmegaConf.create({})
    found = trained_checkpoints(run_dir / "train", strict=False) if (run_dir / "train").is_dir() else {}
    found.update({m: str(p) for m, p in (cfg.get("checkpoints") or {}).items() if Path(str(p)).is_file()})
    order = list(cfg.get("methods") or [])
    return {m: found[m] for m in sorted(found, key=lambda m: (order.index(m) if m in order else len(order), m))}


def latest_run_checkpoints(log_dir: str | Path) -> tuple[Path | None, dict[str, str]]:
    """(the newest `make compare` run under `log_dir`/compare/runs that has checkpoints, its checkpoints)."""
    runs = Path(log_dir) / "compare" / "runs"
    if runs.is_dir():
        for run in sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
            ckpts = run_checkpoints(run)
            if ckpts:
                return run, ckpts
    return None, {}


@task_wrapper
def compare(cfg: DictConfig) -> Path:
    from refedit.eval.benchmark import BenchmarkConfig, evaluate
    from refedit.eval.features import build_feature_extractor
    from refedit.methods import load_method

    t_start = time.time()
    out = Path(cfg.paths.output_dir)
    group = f"compare-{cfg.preset.name}-{out.name}"
    for m, p in (cfg.checkpoints or {}).items():  # before any work: a wrong path must not cost a training run
        if not Path(str(p)).is_file():
            raise UsageError(f"checkpoints.{m}={p}: no such file")
    prepare_foundations(cfg)
    features = build_feature_extractor(cfg.features, cfg.features_path, cfg.paths.probe_dir)
    methods = list(cfg.methods)
    ckpts = {m: str(p) for m, p in (cfg.checkpoints or {}).items()}
    to_train = [m for m in methods if m not in ckpts]
    if to_train:
        ckpts.update(train_all(to_train, list(cfg.preset.train_overrides), out / "train", group,
                               preset=cfg.preset.name))
    t_trained = time.time()
    bcfg = BenchmarkConfig(**OmegaConf.to_container(cfg.preset.benchmark, resolve=True))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, Any] = {name: None for name in cfg.trivial_rows}
    models.update({name: load_method(ckpts[name]).to(device) for name in methods})
    header = {"preset": cfg.preset.name, "methods": ", ".join(methods), "trivial rows": ", ".join(cfg.trivial_rows),
              "training (same for every method)": " ".join(cfg.preset.train_overrides),
              "benchmark": f"toyworld benchmark split, {bcfg.num_samples} samples per task, {bcfg.num_steps} DDIM "
                           f"steps, seed {bcfg.seed}, {bcfg.size} px, {bcfg.frames} frames per clip",
              "features": cfg.features, "device": _device_name()}
    summary = evaluate(models, bcfg, features, out, header)
    header["train minutes"] = round((t_trained - t_start) / 60, 1)
    header["total minutes"] = round((time.time() - t_start) / 60, 1)
    (out / "timing.json").write_text(json.dumps({k: header[k] for k in ("train minutes", "total minutes")}))
    if cfg.wandb:
        backbones = sorted({str(m.backbone_cfg.get("name")) for m in models.values() if m is not None})
        _log_wandb(out, group, summary, tags=[f"preset:{cfg.preset.name}", *(f"backbone:{b}" for b in backbones)])
    from refedit.eval.report import print_table

    print(print_table(summary))
    print(f"\nreport: {out / 'report.md'}\nresults: {out / 'results.csv'}\nplots: {out / 'plots'}", flush=True)
    return out


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _log_wandb(out: Path, group: str, summary: list[dict[str, Any]], tags: list[str]) -> None:
    import wandb

    from refedit.utils.tracking import wandb_offline

    run = wandb.init(project="refedit", group=group, name="comparison", job_type="compare", tags=tags,
                     dir=str(out), mode="offline" if wandb_offline() else "online", reinit=True)
    try:
        from refedit.eval.report import log_to_wandb

        log_to_wandb(summary, {p.stem: p for p in sorted((out / "plots").glob("*.png"))}, group="compare")
    finally:
        run.finish()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="compare")
@report_input_errors("refedit.compare")
def main(cfg: DictConfig) -> None:
    compare(cfg)


if __name__ == "__main__":
    main()
