"""Run methods (and the trivial rows) on the fixed toyworld benchmark split and score every sample."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from refedit.batch import collate_edit
from refedit.eval import adapters

log = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BenchmarkConfig:
    tasks: tuple[str, ...] = adapters.TASKS
    num_samples: int = 48
    num_steps: int = 25
    seed: int = 1234
    batch_size: int = 16
    size: int = 64
    frames: int = 8
    grid_samples: int = 4
    #: one setting for every method and trivial row alike (each method's own sampling.paste_back is not used):
    #: false scores raw outputs; true pastes the source back outside the mask on `PASTE_BACK_TASKS`
    paste_back: bool = False


#: tasks with a region every method must leave as it is (the source outside the edit mask). coarse_edit asks for a
#: harmonised whole image and subject_video for generated clips: nothing there is known to stay unchanged.
PASTE_BACK_TASKS = ("exemplar_inpaint",)


def paste_back_description(cfg: BenchmarkConfig) -> str:
    """The report header's line on paste-back."""
    if not cfg.paste_back:
        return "off: every method's raw output is scored (no method pastes the source back)"
    return (f"on for {', '.join(PASTE_BACK_TASKS)}, every method and trivial row alike: the source replaces the "
            f"output outside the edit mask (a hard paste: no source pixel enters the edit region); other tasks raw")


def paste_back(task: str, batch: Mapping[str, Any], pred: torch.Tensor, cfg: BenchmarkConfig) -> torch.Tensor:
    """The benchmark's paste-back. Hard, not feathered: in a self-reconstruction benchmark the source inside the
    mask is the ground truth, which a feathered blend would mix into the edit region's border."""
    if not cfg.paste_back or task not in PASTE_BACK_TASKS:
        return pred
    src = batch["source"].to(pred.device, pred.dtype)
    return torch.where(batch["mask"].to(pred.device) > 0.5, pred, src)


def benchmark_batches(task: str, cfg: BenchmarkConfig, dataset=None) -> list[dict[str, Any]]:
    """Batches of the fixed toyworld benchmark split of `task` (or of a given dataset, e.g. COCOEE)."""
    from refedit.data.toyworld import ToyWorldDataset

    ds = dataset if dataset is not None else ToyWorldDataset(task, split="benchmark", size=cfg.size,
                                                             frames=cfg.frames, length=cfg.num_samples)
    idx = list(range(min(len(ds), cfg.num_samples)))
    return [collate_edit([ds[i] for i in idx[s:s + cfg.batch_size]]) for s in range(0, len(idx), cfg.batch_size)]


def score(task: str, batch: Mapping[str, Any], pred: torch.Tensor, feature_fn: FeatureFn) -> dict[str, torch.Tensor]:
    """Per-sample metrics for one batch (see eval.metrics)."""
    from refedit.eval import metrics as M

    pred = pred.float().clamp(-1, 1)
    if task == "subject_video":
        from refedit.eval.video_metrics import frame_consistency

        video = batch["video"]
        b, f = video.shape[:2]
        frames = adapters.frames_as_batch(batch)
        flat = pred.flatten(0, 1)
        ident = M.identity_score(flat, frames["reference"], frames["mask"], frames["reference_mask"], feature_fn)
        return {"psnr": M.psnr_masked(flat, video.flatten(0, 1), torch.ones_like(frames["mask"])).view(b, f).mean(1),
                "psnr_subject_box": M.psnr_masked(flat, video.flatten(0, 1), frames["mask"]).view(b, f).mean(1),
                "identity": ident.view(b, f).mean(1),
                "temporal_consistency": frame_consistency(pred, feature_fn)}
    target, mask = batch["target"], batch["mask"]
    ref = batch["reference"]
    # identity: exemplar task -> the reference's object region; coarse edit -> the moved region in the source
    ref_mask = batch.get("reference_mask") if task != "coarse_edit" else mask
    if ref_mask is None:
        ref_mask = torch.ones_like(ref[:, :1])
    return {"psnr_in": M.psnr_masked(pred, target, mask), "ssim_in": M.ssim_masked(pred, target, mask),
            "psnr_bbox": M.psnr_bbox(pred, target, mask), "ssim_bbox": M.ssim_bbox(pred, target, mask),
            "psnr_out": M.psnr_unmasked(pred, target, mask),
            "identity": M.identity_score(pred, ref, mask, ref_mask, feature_fn)}


@torch.no_grad()
def run_method(name: str, model, task: str, batches: list[dict[str, Any]], cfg: BenchmarkConfig,
               feature_fn: FeatureFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows (one per sample) and the material for distribution scores and grids."""
    from refedit.eval import metrics as M

    rows: list[dict[str, Any]] = []
    preds, targets = [], []
    for bi, batch in enumerate(tqdm(batches, desc=f"{task}: {name}", leave=False)):
        inputs, kw, post = adapters.prepare(name, task, batch)
        device = model.device if model is not None else None
        with M.Timer(n=len(batch["meta"]), device=device) as timer:
            if model is None:  # trivial rows need no network
                pred = post(None)
            else:
                g = torch.Generator(device=model.device).manual_seed(cfg.seed + bi)
                out = model.sample({**inputs, "meta": batch["meta"]}, num_steps=cfg.num_steps, generator=g,
                                   paste_back=False, **kw)
                pred = post(out.cpu())
            pred = paste_back(task, batch, pred, cfg)
        scores = score(task, batch, pred, feature_fn)
        for i, meta in enumerate(batch["meta"]):
            rows.append({"method": name, "task": task, "sample_id": meta["id"], "seconds": timer.seconds_per_sample,
                         # what this method's sampling added on top of what the process already held (every
                         # compared model stays loaded, so a process-wide peak would be the same for all rows)
                         "mem_added_mb": timer.mem_delta_mb, **{k: float(v[i]) for k, v in scores.items()}})
        preds.append(pred)
        targets.append(batch["video"] if task == "subject_video" else batch["target"])
    return rows, {"pred": torch.cat(preds), "target": torch.cat(targets)}


def distribution_scores(task: str, pred: torch.Tensor, target: torch.Tensor, feature_fn: FeatureFn) -> dict[str, float]:
    """Set-level scores in the feature space (noisy with small benchmarks: the report says how many samples)."""
    from refedit.eval import metrics as M

    if task == "subject_video":
        return {"fvd_style": float(M.frechet_video_distance(target, pred, feature_fn))}
    fd = M.FrechetDistance(feature_fn)
    fd.update(target, real=True)
    fd.update(pred, real=False)
    kd = M.KernelDistance(feature_fn)
    kd.update(target, real=True)
    kd.update(pred, real=False)
    return {"fid": float(fd.compute()), "kid": float(kd.compute()[0])}


def evaluate(models: Mapping[str, Any], cfg: BenchmarkConfig, feature_fn: FeatureFn, out_dir: str | Path,
             header: Mapping[str, Any], dataset=None, quality_metric: str = "psnr_in") -> list[dict[str, Any]]:
    """Run every (name -> model, or None for a trivial row) on every task of `cfg`, write the report (results.csv,
    summary.csv, report.md, plots, per-task sample grids) into `out_dir` and return the summary."""
    from refedit.eval import report

    out = Path(out_dir)
    header = {**header, "paste-back": paste_back_description(cfg)}
    rows: list[dict[str, Any]] = []
    set_scores: list[dict[str, Any]] = []
    grids: dict[str, Path] = {}
    for task in cfg.tasks:
        batches = benchmark_batches(task, cfg, dataset)
        n = sum(len(b["meta"]) for b in batches)
        shown: dict[str, torch.Tensor] = {}
        for name, model in models.items():
            r, material = run_method(name, model, task, batches, cfg, feature_fn)
            rows += r
            for metric, value in distribution_scores(task, material["pred"], material["target"], feature_fn).items():
                set_scores.append({"method": name, "task": task, "metric": metric, "value": value, "n": n})
            shown[name] = material["pred"][: cfg.grid_samples]
        shown["target"] = material["target"][: cfg.grid_samples]
        grids[f"{task}_samples"] = _sample_grid(task, batches[0], shown, out / "plots" / f"{task}_samples.png")
    summary, _ = report.write_report(rows, out, header=header, set_scores=set_scores, quality_metric=quality_metric,
                                     grids=grids)
    return summary


def _short_id(sample_id: str, task: str) -> str:
    """A sample id without its task prefix (the grid's title names the task), so the row label fits its cell."""
    sid = str(sample_id)
    return sid[len(task) + 1:] if sid.startswith(task + "-") else sid


def _sample_grid(task: str, batch: Mapping[str, Any], shown: Mapping[str, torch.Tensor], path: Path) -> Path:
    """One row per sample: the inputs (condition), then every method's result, then the target. Clips show
    their middle frame."""
    from refedit.eval import report

    def frame(x: torch.Tensor) -> torch.Tensor:
        return x[:, x.shape[1] // 2] if x.dim() == 5 else x

    cond_key = {"exemplar_inpaint": "reference", "coarse_edit": "coarse", "subject_video": "subject"}.get(task)
    names = list(shown)
    n = min(len(v) for v in shown.values())
    rows = []
    for i in range(n):
        row = [batch[cond_key][i]] if cond_key in batch else []
        row += [frame(shown[k])[i] for k in names]
        rows.append(row)
    labels = ([cond_key] if cond_key in batch else []) + names
    path.parent.mkdir(parents=True, exist_ok=True)
    row_labels = [_short_id(m["id"], task) for m in batch["meta"][:n]]
    report.save_sample_grid(rows, path, col_labels=labels, row_labels=row_labels,
                            title=f"{task}: first benchmark samples")
    return path
