"""Evaluate one checkpoint: python -m refedit.eval ckpt=<path> [data_dir=<COCOEE or folder benchmark>]

Runs the checkpoint's method — and the trivial 'paste' / 'blur fill' rows for reference — on the toyworld
benchmark tasks (default) or on a benchmark folder, and writes the same report as `refedit.compare`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from refedit.utils.cli import report_input_errors
from refedit.utils.config import CONFIG_DIR
from refedit.utils.run import task_wrapper

log = logging.getLogger("refedit.eval")


def benchmark_dataset(data_dir: str, data_format: str, size: int):
    from refedit.data.benchmarks import CocoEEBenchmark, FolderBenchmark

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir={data_dir}: no such directory")
    if data_format == "auto":
        cocoee = any((root / d).is_dir() for d in ("GT", "GT_3500"))
        data_format = "cocoee" if cocoee else "folder"
    if data_format == "cocoee":
        return CocoEEBenchmark(root, size=size, reference_size=size)
    if data_format == "folder":
        return FolderBenchmark(root, size=size, reference_size=size)
    raise ValueError(f"data_format={data_format!r}: choose auto, cocoee or folder")


@task_wrapper
def evaluate_checkpoint(cfg: DictConfig) -> Path:
    from refedit.eval.adapters import TASKS
    from refedit.eval.benchmark import BenchmarkConfig, evaluate
    from refedit.eval.features import build_feature_extractor
    from refedit.methods import load_method

    out = Path(cfg.paths.output_dir)
    if cfg.data_dir and not Path(cfg.data_dir).is_dir():  # before loading the model
        raise FileNotFoundError(f"data_dir={cfg.data_dir}: no such directory")
    if not Path(cfg.ckpt).is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt}: no such file")
    model = load_method(cfg.ckpt).to("cuda" if torch.cuda.is_available() else "cpu")
    size = int(model.backbone_cfg["resolution"])
    ecfg = OmegaConf.to_container(cfg.eval, resolve=True)
    tasks = ecfg.pop("tasks") or (["exemplar_inpaint"] if cfg.data_dir else list(TASKS))
    bcfg = BenchmarkConfig(tasks=tuple(tasks), size=size, **ecfg)
    dataset = benchmark_dataset(cfg.data_dir, cfg.data_format, size) if cfg.data_dir else None
    features = build_feature_extractor(cfg.features, cfg.features_path, cfg.paths.probe_dir)
    models: dict[str, Any] = {name: None for name in cfg.trivial_rows}
    models[model.name] = model
    header = {"checkpoint": cfg.ckpt, "data": cfg.data_dir or "toyworld benchmark split",
              "benchmark": f"{bcfg.num_samples} samples per task (at most), {bcfg.num_steps} DDIM steps, seed "
                           f"{bcfg.seed}, {size} px", "features": cfg.features}
    summary = evaluate(models, bcfg, features, out, header, dataset=dataset)
    log_eval_to_wandb(cfg, model, summary, out)
    from refedit.eval.report import print_table

    print(print_table(summary))
    print(f"\nreport: {out / 'report.md'}", flush=True)
    return out


def log_eval_to_wandb(cfg: DictConfig, model, summary, out: Path) -> None:
    """The summary table and the plots (sample grids, metric bars) in a W&B run of job_type eval (`logger=none`:
    none), named after the checkpoint's method and this run's overrides."""
    from lightning.pytorch.loggers import WandbLogger

    from refedit.eval.report import log_to_wandb
    from refedit.utils.run import instantiate_dict
    from refedit.utils.tracking import configure_wandb_node

    configure_wandb_node(cfg, model.name, preset=None, backbone=model.backbone_cfg.get("name"))
    for lg in instantiate_dict(cfg.get("logger")):
        lg.log_hyperparams({k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                            for k, v in cfg.items() if k != "hydra"})
        if isinstance(lg, WandbLogger):
            log_to_wandb(summary, {p.stem: p for p in sorted((out / "plots").glob("*.png"))}, group="eval",
                         logger=lg)
        lg.finalize("success")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
@report_input_errors("refedit.eval")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
