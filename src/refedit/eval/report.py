"""The comparison report: per-sample CSV, summary CSV (mean ± 95% CI per method x task x metric), a Markdown
report, PNG plots (metric bars with CI per task, quality vs time, sample grids), a terminal table and a
W&B table.

Input: a list of per-sample rows, each a dict with `method`, `task`, `sample_id` and numeric metric values
(e.g. psnr_masked, identity, seconds, mem_added_mb). Set-level scores (FID, KID, FVD: one number per method
x task) are passed separately as `set_scores` rows {method, task, metric, value, n}; they have no CI.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refedit.eval.metrics import mean_ci95

ID_COLUMNS = ("method", "task", "sample_id")
SUMMARY_COLUMNS = ("method", "task", "metric", "mean", "ci95", "n")
TIME_METRIC = "seconds"
# Direction by name fragment (first match wins); unknown metrics get no arrow and no "best" marking.
_LOWER = ("fid", "kid", "fvd", "fd_", "seconds", "time", "mem", "error", "loss")
_HIGHER = ("psnr", "ssim", "identity", "clip", "dino", "score", "acc", "consistency")


def higher_is_better(metric: str) -> bool | None:
    m = metric.lower()
    if any(k in m for k in _LOWER):
        return False
    if any(k in m for k in _HIGHER):
        return True
    return None


def _num(v: Any) -> float | None:
    """A row value as a float, or None when it is not a number (ids, strings)."""
    if isinstance(v, torch.Tensor):
        return float(v.detach().reshape(-1)[0]) if v.numel() == 1 else None
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


def _ordered(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric columns of the rows (first-seen order), id columns excluded."""
    return _ordered(k for r in rows for k, v in r.items() if k not in ID_COLUMNS and _num(v) is not None)


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for i, r in enumerate(rows):
        missing = [k for k in ("method", "task") if k not in r]
        if missing:
            raise KeyError(f"result row {i} has no {missing} (keys: {sorted(r)})")


# ------------------------------------------------------------------------------------------------ summary
def summarize(rows: Sequence[Mapping[str, Any]], set_scores: Sequence[Mapping[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
    """One row per method x task x metric: mean, ci95 (half width, t-distribution), n (finite values).
    Order: tasks, then methods, then metrics as first seen."""
    _check_rows(rows)
    metrics = metric_names(rows)
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["task"]), str(r["method"])), []).append(r)
    out: list[dict[str, Any]] = []
    for (task, method), rs in groups.items():
        for m in metrics:
            vals = [x for x in (_num(r.get(m)) for r in rs) if x is not None]
            if not vals:
                continue
            mean, ci = mean_ci95(vals)
            out.append({"method": method, "task": task, "metric": m, "mean": mean, "ci95": ci,
                        "n": int(np.isfinite(vals).sum())})
    for s in set_scores or ():
        missing = [k for k in ("method", "task", "metric", "value") if k not in s]
        if missing:
            raise KeyError(f"set score {dict(s)} has no {missing}")
        out.append({"method": str(s["method"]), "task": str(s["task"]), "metric": str(s["metric"]),
                    "mean": float(s["value"]), "ci95": math.nan, "n": int(s.get("n", 0))})
    tasks = _ordered(r["task"] for r in out)
    methods = _ordered(r["method"] for r in out)
    mets = _ordered(r["metric"] for r in out)
    out.sort(key=lambda r: (tasks.index(r["task"]), methods.index(r["method"]), mets.index(r["metric"])))
    return out


def _table(summary: Sequence[Mapping[str, Any]], task: str, metrics: Sequence[str] | None = None
           ) -> tuple[list[str], list[str], dict[tuple[str, str], Mapping[str, Any]]]:
    rows = [s for s in summary if s["task"] == task]
    mets = list(metrics) if metrics is not None else _ordered(s["metric"] for s in rows)
    mets = [m for m in mets if any(s["metric"] == m for s in rows)]
    methods = _ordered(s["method"] for s in rows)
    cells = {(s["method"], s["metric"]): s for s in rows}
    return methods, mets, cells


def _decimals(v: float) -> int:
    if not math.isfinite(v) or v == 0:
        return 2
    return int(min(4, max(1, 2 - math.floor(math.log10(abs(v))))))


def format_cell(mean: float, ci: float) -> str:
    """'25.4 ± 0.8' (three significant digits, CI at the mean's precision); a bare mean without a CI."""
    if not math.isfinite(mean):
        return "n/a" if math.isnan(mean) else str(mean)
    d = _decimals(mean)
    return f"{mean:.{d}f} ± {ci:.{d}f}" if math.isfinite(ci) else f"{mean:.{d}f}"


def _best(cells: Mapping[tuple[str, str], Mapping[str, Any]], methods: Sequence[str], metric: str
          ) -> set[str]:
    """Methods with the best mean of a metric of known direction; none when all tie."""
    hib = higher_is_better(metric)
    vals = {m: cells[(m, metric)]["mean"] for m in methods if (m, metric) in cells
            and math.isfinite(cells[(m, metric)]["mean"])}
    if hib is None or len(set(vals.values())) < 2:
        return set()
    best = (max if hib else min)(vals.values())
    return {m for m, v in vals.items() if v == best}


def _header_name(metric: str) -> str:
    hib = higher_is_better(metric)
    return metric + ("" if hib is None else (" ↑" if hib else " ↓"))


def _text_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def print_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> str:
    """Plain-text tables (one per task, methods x metrics, 'mean ± ci') for the terminal."""
    blocks = []
    for task in _ordered(s["task"] for s in summary):
        methods, mets, cells = _table(summary, task, metrics)
        head = ["method"] + [_header_name(m) for m in mets]
        body = [[m] + [format_cell(cells[(m, k)]["mean"], cells[(m, k)]["ci95"]) if (m, k) in cells else "-"
                       for k in mets] for m in methods]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = [_text_row(r, widths) for r in [head, *body]]
        blocks.append("\n".join([f"task: {task}", lines[0], "  ".join("-" * w for w in widths), *lines[1:]]))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------- files
def write_results_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Per-sample rows: id columns first, then every other column (numbers as floats, others as text)."""
    _check_rows(rows)
    cols = list(ID_COLUMNS) + [k for k in _ordered(k for r in rows for k in r) if k not in ID_COLUMNS]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (_num(v) if _num(v) is not None else v) for k, v in r.items()})
    return p


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(SUMMARY_COLUMNS))
        w.writeheader()
        for s in summary:
            w.writerow({k: s[k] for k in SUMMARY_COLUMNS})
    return p


def read_summary_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{**r, "mean": float(r["mean"]), "ci95": float(r["ci95"] or "nan"), "n": int(r["n"])}
                for r in csv.DictReader(f)]


def _header_value(v: Any) -> str:
    if isinstance(v, (Mapping, list, tuple)):
        return "`" + json.dumps(v, default=str) + "`"
    return str(v)


def markdown_report(summary: Sequence[Mapping[str, Any]], header: Mapping[str, Any] | None = None,
                    plots: Mapping[str, str] | None = None, title: str = "refedit comparison",
                    metrics: Sequence[str] | None = None) -> str:
    """The report: a setup section (data, steps, seeds, budget... as given), then per task a table
    (rows = methods, columns = metrics, cells 'mean ± 95% CI half width', best per column in bold) and its
    plots (`plots`: name -> relative path; names starting with a task's name go under that task)."""
    lines = [f"# {title}", ""]
    if header:
        lines += ["## Setup", ""] + [f"- **{k}**: {_header_value(v)}" for k, v in header.items()] + [""]
    lines += ["Cells: mean ± half width of the 95% t-interval over samples (n per cell in summary.csv). "
              "Set-level scores (FID/KID/FVD) have no interval. ↑ higher is better, ↓ lower is better; "
              "best per column in bold.", ""]
    plots = dict(plots or {})
    for task in _ordered(s["task"] for s in summary):
        methods, mets, cells = _table(summary, task, metrics)
        n = max((int(s["n"]) for s in summary if s["task"] == task), default=0)
        lines += [f"## {task}", "", f"Samples per method: up to {n}.", ""]
        lines.append("| method | " + " | ".join(_header_name(m) for m in mets) + " |")
        lines.append("|---|" + "---:|" * len(mets))
        best = {m: _best(cells, methods, m) for m in mets}
        for meth in methods:
            row = []
            for m in mets:
                c = cells.get((meth, m))
                txt = format_cell(c["mean"], c["ci95"]) if c else "-"
                row.append(f"**{txt}**" if c and meth in best[m] else txt)
            lines.append(f"| {meth} | " + " | ".join(row) + " |")
        lines.append("")
        for name in [k for k in plots if k.startswith(task)]:
            lines += [f"![{name}]({plots.pop(name)})", ""]
    for name, rel in plots.items():
        lines += [f"![{name}]({rel})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path: str | os.PathLike, dpi: int) -> Path:
    """Lay out, write (parent dirs created) and close a figure."""
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi)
    plt.close(fig)
    return p


def plot_metric_bars(summary: Sequence[Mapping[str, Any]], task: str, path: str | os.PathLike,
                     metrics: Sequence[str] | None = None) -> Path:
    """One PNG for a task: a panel per metric (own scale), one bar per method with its 95% CI."""
    plt = _plt()
    methods, mets, cells = _table(summary, task, metrics)
    if not mets:
        raise ValueError(f"plot_metric_bars: no metrics for task '{task}'")
    ncol = min(4, len(mets))
    nrow = math.ceil(len(mets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(len(methods)) % 10)
    for ax, m in zip(axes.flat, mets):
        means = [cells[(k, m)]["mean"] if (k, m) in cells else np.nan for k in methods]
        errs = [cells[(k, m)]["ci95"] if (k, m) in cells else np.nan for k in methods]
        errs = [e if math.isfinite(e) else 0.0 for e in errs]
        ax.bar(np.arange(len(methods)), means, yerr=errs, color=colours, capsize=3)
        ax.set_title(_header_name(m), fontsize=9)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=40, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(mets):]:
        ax.axis("off")
    fig.suptitle(f"{task} (mean ± 95% CI)", fontsize=10)
    return _save_figure(plt, fig, path, dpi=110)


def plot_quality_vs_time(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str,
                         time_metric: str = TIME_METRIC, task: str | None = None) -> Path:
    """Scatter of `metric` (y) against seconds per sample (x), one point per method x task (colour = method,
    marker = task), both with 95% CI error bars."""
    plt = _plt()
    cells = {(s["method"], s["task"], s["metric"]): s for s in summary if task is None or s["task"] == task}
    pts = [(m, t) for (m, t, k) in cells if k == metric and (m, t, time_metric) in cells]
    if not pts:
        raise ValueError(f"plot_quality_vs_time: no method has both '{metric}' and '{time_metric}'")
    methods = _ordered(m for m, _ in pts)
    tasks = _ordered(t for _, t in pts)
    colours = plt.get_cmap("tab10")
    markers = "os^DvP*X"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, t in pts:
        x, y = cells[(m, t, time_metric)], cells[(m, t, metric)]
        ax.errorbar(x["mean"], y["mean"], xerr=x["ci95"] if math.isfinite(x["ci95"]) else None,
                    yerr=y["ci95"] if math.isfinite(y["ci95"]) else None, fmt=markers[tasks.index(t) % 8],
                    color=colours(methods.index(m) % 10), capsize=2, ms=6)
        ax.annotate(m, (x["mean"], y["mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    xs = [cells[(m, t, time_metric)]["mean"] for m, t in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    for t in tasks:  # legend entries for the markers
        ax.plot([], [], markers[tasks.index(t) % 8], color="gray", label=t)
    ax.legend(fontsize=7, title="task", title_fontsize=7)
    ax.set_xlabel(f"{time_metric} per sample")
    ax.set_ylabel(_header_name(metric))
    ax.grid(alpha=0.3)
    return _save_figure(plt, fig, path, dpi=110)


def to_uint8_image(img: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tensors (3,H,W) with values in `value_range` ([-1, 1], the project convention, by default; pass
    (0, 1) for [0, 1] images), 1-channel tensors (masks; non-negative ones are read as [0, 1]), (H,W,3)
    uint8 arrays or PIL images -> (H, W, 3) uint8."""
    if isinstance(img, torch.Tensor):
        x = img.detach().float().cpu()
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"grid image tensors must be (3,H,W) or (1,H,W), got {tuple(x.shape)}")
        lo, hi = (0.0, 1.0) if x.shape[0] == 1 and x.min() >= 0 else value_range
        x = ((x - lo) / (hi - lo)).clamp(0, 1)
        x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
        return (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.dtype != np.uint8:
        raise ValueError(f"grid image arrays must be uint8 (H,W,3), got {a.dtype} {a.shape}")
    return a


def save_sample_grid(rows_of_images: Sequence[Sequence[Any]], path: str | os.PathLike,
                     col_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
                     title: str | None = None, cell_inches: float = 1.3,
                     value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """A labelled grid PNG: rows_of_images[r][c] is an image (see `to_uint8_image`; tensors in
    `value_range`, [-1, 1] by default) or None (an empty cell). Typically rows = samples and columns =
    source / reference / methods..., or the transpose."""
    plt = _plt()
    nrow = len(rows_of_images)
    ncol = max((len(r) for r in rows_of_images), default=0)
    if nrow == 0 or ncol == 0:
        raise ValueError("save_sample_grid: no images")
    if col_labels is not None and len(col_labels) != ncol:
        raise ValueError(f"save_sample_grid: {len(col_labels)} column labels for {ncol} columns")
    if row_labels is not None and len(row_labels) != nrow:
        raise ValueError(f"save_sample_grid: {len(row_labels)} row labels for {nrow} rows")
    fig, axes = plt.subplots(nrow, ncol, figsize=(cell_inches * ncol + 0.6, cell_inches * nrow + 0.4),
                             squeeze=False)
    for r in range(nrow):
        for c in range(ncol):
            ax = axes[r, c]
            img = rows_of_images[r][c] if c < len(rows_of_images[r]) else None
            if img is not None:
                ax.imshow(to_uint8_image(img, value_range), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(img is not None)
            if r == 0 and col_labels is not None:
                ax.set_title(col_labels[c], fontsize=7)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save_figure(plt, fig, path, dpi=100)


# ------------------------------------------------------------------------------------------- one call
def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 header: Mapping[str, Any] | None = None,
                 set_scores: Sequence[Mapping[str, Any]] | None = None,
                 quality_metric: str | None = None, grids: Mapping[str, str | os.PathLike] | None = None,
                 metrics: Sequence[str] | None = None, title: str = "refedit comparison"
                 ) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Write results.csv, summary.csv, plots/<task>_bars.png, plots/quality_vs_time.png (when
    `quality_metric` and seconds exist) and report.md into out_dir. `grids`: name -> existing sample-grid
    PNGs (named '<task>...' to sit under their task) to link from the report. Returns (summary, paths)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, set_scores)
    paths: dict[str, Path] = {"results": write_results_csv(rows, out / "results.csv"),
                              "summary": write_summary_csv(summary, out / "summary.csv")}
    plots: dict[str, str] = {}
    for task in _ordered(s["task"] for s in summary):
        p = plot_metric_bars(summary, task, out / "plots" / f"{task}_bars.png", metrics)
        paths[f"{task}_bars"] = p
        plots[f"{task}_bars"] = os.path.relpath(p, out)
    for name, g in (grids or {}).items():
        plots[name] = os.path.relpath(Path(g), out)
    if quality_metric is not None:
        have = {s["metric"] for s in summary}
        if quality_metric in have and TIME_METRIC in have:
            p = plot_quality_vs_time(summary, out / "plots" / "quality_vs_time.png", quality_metric)
            paths["quality_vs_time"] = p
            plots["quality_vs_time"] = os.path.relpath(p, out)
    report = markdown_report(summary, header, plots, title=title, metrics=metrics)
    (out / "report.md").write_text(report)
    paths["report"] = out / "report.md"
    return summary, paths


# ---------------------------------------------------------------------------------------------- W&B
def log_to_wandb(summary: Sequence[Mapping[str, Any]], images: Mapping[str, Any] | None = None,
                 group: str = "compare", logger: Any = None) -> dict[str, Any]:
    """Log the summary as a table and `images` (name -> PNG path, tensor, array or PIL image) under `group/`:
    through a Lightning `WandbLogger`'s `log_table` / `log_image` when one is given, else into the active
    wandb run (this never calls wandb.init). Returns what was logged (key -> wandb.Table / wandb.Image)."""
    import wandb

    if logger is None and wandb.run is None:
        raise RuntimeError("log_to_wandb needs an active W&B run (wandb.init / the wandb logger); "
                           "none is active")
    columns = list(SUMMARY_COLUMNS)
    rows = [[s[k] for k in SUMMARY_COLUMNS] for s in summary]
    named = {name: str(img) if isinstance(img, (str, os.PathLike)) else to_uint8_image(img)
             for name, img in (images or {}).items()}
    if logger is not None:
        logger.log_table(f"{group}/summary", columns=columns, data=rows)
        for name, img in named.items():
            logger.log_image(f"{group}/{name}", images=[img], caption=[name])
    payload: dict[str, Any] = {f"{group}/summary": wandb.Table(columns=columns, data=rows)}
    payload.update({f"{group}/{name}": wandb.Image(img, caption=name) for name, img in named.items()})
    if logger is None:
        wandb.run.log(payload)
    return payload
