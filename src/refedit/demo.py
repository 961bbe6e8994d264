"""A local web editor: one edit with one or several checkpoints, results side by side.

    refedit-demo [ckpts=CKPT_OR_DIR[,...]] [host=127.0.0.1] [port=7860] [max_file_mb=10]
    make demo [CKPTS="a.ckpt b.ckpt" | CKPTS=<dir>] [HOST=127.0.0.1] [PORT=7860]
    refedit-demo screenshot=out.png [ckpts=...]   # headless chromium: toyworld example -> edit -> PNG

Without ckpts= it offers the checkpoints of the newest `make compare` run (logs/compare/runs/<newest>). A
directory is searched for `final.ckpt` files (else any `*.ckpt`); a comparison run directory gives its methods'
checkpoints. Every edit goes through `refedit.edit.edit_with_model`, the path `python -m refedit.edit` takes.

Safe by default: binds 127.0.0.1 (another host only with host=, with a warning), never a share link, serves only
its own results and gradio's upload cache (allowed_paths = its output folder), refuses uploads above
max_file_mb (gradio's max_file_size; file inputs are checked again here, and must lie in gradio's upload folder)
and images above max_side pixels a side, and loads only the checkpoints named on its command line: the page
chooses among them by index, a request never names a file.

Needs the `demo` extra (pip install 'refedit[demo]'); nothing else in refedit imports gradio.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from refedit.utils.cli import UsageError, parse_kv, report_input_errors

log = logging.getLogger("refedit.demo")

#: the page's tasks: what the user edits, and the methods that do it natively
TASKS: dict[str, str] = {
    "text_inpaint": "Inpaint with a caption",
    "exemplar_inpaint": "Inpaint with a reference image",
    "coarse_edit": "Fix up a coarse edit (move an object)",
    "subject_video": "Animate a subject (video)",
}
METHOD_TASK: dict[str, str] = {"sd_inpaint": "text_inpaint", "paint_by_example": "exemplar_inpaint",
                               "mimicbrush": "exemplar_inpaint", "magic_fixup": "coarse_edit",
                               "magdiff": "subject_video"}
#: page inputs, by the batch key they fill
FIELDS: dict[str, str] = {"source": "source image", "mask": "mask (brush / box on the source)",
                          "reference": "reference image", "reference_mask": "reference mask",
                          "depth": "depth map", "caption": "caption", "coarse": "coarse edit",
                          "valid": "coarse edit's valid mask", "subject": "subject image",
                          "subject_inplace": "subject in place"}
#: small toyworld images (64 px) are shown enlarged, without smoothing
CSS = (".refedit-pixels img, .refedit-pixels video {width: 100% !important; height: 240px !important; "
       "object-fit: contain; image-rendering: pixelated;}")
CHROMIUM = os.environ.get("REFEDIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("REFEDIT_CHROMEDRIVER", "/usr/bin/chromedriver")
#: chromium flags that keep a headless browser from stalling on a closed network
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage")


class DemoError(ValueError):
    """Bad input from the page: the message is shown there as it is."""


# ---------------------------------------------------------------------------------------------- checkpoints
@dataclass
class CheckpointInfo:
    """What the page needs to know about a checkpoint before loading it (read from its metadata)."""

    index: int
    path: Path
    method: str
    task: str
    resolution: int
    needs: tuple[str, ...]
    frames: int = 1
    sampling: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        parent = self.path.parent.parent.name if self.path.parent.name == "checkpoints" else self.path.parent.name
        return f"{self.index}: {self.method} ({parent}/{self.path.name})"


def _needs(method: str, hp: dict[str, Any]) -> tuple[str, ...]:
    """The page inputs a method uses (required ones first; the rest are optional)."""
    if method == "sd_inpaint":
        return ("source", "caption") if hp.get("mode") == "sdedit" else ("source", "mask", "caption")
    if method == "paint_by_example":
        return ("source", "mask", "reference")
    if method == "mimicbrush":
        return ("source", "mask", "reference", "reference_mask", "depth")
    if method == "magic_fixup":
        return ("source", "coarse", "mask")  # the mask selects the object that is moved
    if method == "magdiff":
        return ("subject", "caption", "subject_inplace")
    raise ValueError(method)


def checkpoint_info(index: int, path: str | os.PathLike) -> CheckpointInfo:
    from refedit.utils.checkpoint import read_checkpoint

    p = Path(path)
    ckpt = read_checkpoint(p, mmap=True)
    target = ckpt.get("refedit_method")
    if not target:
        raise ValueError(f"{p} is not a refedit checkpoint (no 'refedit_method' entry)")
    hp = dict(ckpt.get("hyper_parameters") or {})
    method = str(hp.get("name") or target.rsplit(".", 2)[-2])
    if method not in METHOD_TASK:
        raise ValueError(f"{p}: method '{method}' has no page in the demo (known: {', '.join(METHOD_TASK)})")
    backbone = dict(hp.get("backbone") or {})
    return CheckpointInfo(index=index, path=p, method=method, task=METHOD_TASK[method],
                          resolution=int(backbone.get("resolution", 64)), needs=_needs(method, hp),
                          frames=int(hp.get("num_frames", 1)), sampling=dict(hp.get("sampling") or {}))


def find_checkpoints(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Checkpoint files from command-line paths: files as given; a comparison run directory gives the
    checkpoints it benchmarked; any other directory its `final.ckpt` files (else every `*.ckpt`)."""
    from refedit.compare import run_checkpoints

    out: list[Path] = []
    for raw in paths:
        for part in str(raw).split(","):
            if not part.strip():
                continue
            p = Path(part.strip()).expanduser()
            if p.is_file():
                out.append(p)
            elif p.is_dir():
                found = list(run_checkpoints(p).values()) if (p / "train").is_dir() else []
                found = [Path(f) for f in found] or sorted(p.rglob("final.ckpt")) or sorted(p.rglob("*.ckpt"))
                if not found:
                    raise FileNotFoundError(f"ckpts={p}: no .ckpt file in this directory")
                out.extend(found)
            else:
                raise FileNotFoundError(f"ckpts={p}: no such file or directory")
    unique: list[Path] = []
    for p in out:
        if p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def default_checkpoints() -> list[Path]:
    """The checkpoints of the newest `make compare` run."""
    from refedit.compare import latest_run_checkpoints
    from refedit.utils.config import project_root

    root = project_root()
    run, ckpts = latest_run_checkpoints(root / "logs")
    if run is None:
        raise FileNotFoundError(f"no ckpts= given and no `make compare` run with checkpoints under "
                                f"{root / 'logs' / 'compare' / 'runs'}: run `make compare` or pass ckpts=")
    print(f"refedit-demo: checkpoints of the comparison run {run}", flush=True)
    return [Path(p) for p in ckpts.values()]


# ---------------------------------------------------------------------------------------------- inputs
def _u8_rgb(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise DemoError(f"{FIELDS.get(name, name)}: expected an RGB image, got an array of shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 4:  # transparent pixels over black (cut-outs are "on black" everywhere in refedit)
        alpha = a[..., 3:4].astype(np.float32) / 255
        a = (a[..., :3].astype(np.float32) * alpha).round().astype(np.uint8)
    return a


def _u8_mask(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., 3] if a.shape[2] == 4 and a[..., 3].min() < 255 else a[..., :3].max(-1)
    if a.ndim != 2:
        raise DemoError(f"{FIELDS.get(name, name)}: expected a grey mask, got an array of shape {a.shape}")
    return np.where(a >= 128, 255, 0).astype(np.uint8)


def editor_image_and_mask(value: Any, box: Sequence[Any] = ()) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(source RGB, mask) from gr.ImageEditor's value (background + brush layers) and an optional box
    x0, y0, x1, y1 (pixels, x1/y1 exclusive): mask = painted pixels of any layer | the box."""
    if value is None:
        return None, None
    bg = value.get("background") if isinstance(value, dict) else value
    if bg is None:
        return None, None
    src = _u8_rgb(bg, "source")
    h, w = src.shape[:2]
    mask = np.zeros((h, w), bool)
    for layer in (value.get("layers") or []) if isinstance(value, dict) else []:
        if layer is None:
            continue
        a = np.asarray(layer)
        paint = a[..., 3] > 0 if a.ndim == 3 and a.shape[2] == 4 else (a.max(-1) if a.ndim == 3 else a) > 0
        if paint.shape != (h, w):  # a canvas of another size than the background: fit it
            from PIL import Image

            paint = np.asarray(Image.fromarray(paint.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
        mask |= paint
    vals = [b for b in box if b not in (None, "")]
    if vals and all(float(v) == 0 for v in vals):
        vals = []  # untouched number fields: no box
    if vals:
        if len(vals) != 4:
            raise DemoError("box: give all four of x0, y0, x1, y1 (or none)")
        x0, y0, x1, y1 = (int(round(float(v))) for v in vals)
        x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
        y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
        if x1 <= x0 or y1 <= y0:
            raise DemoError(f"box ({x0}, {y0}, {x1}, {y1}): x1 must exceed x0 and y1 exceed y0, inside the "
                            f"{w}x{h} source")
        mask[y0:y1, x0:x1] = True
    return src, mask


@dataclass
class Settings:
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    strength: float | None = None

    @classmethod
    def parse(cls, steps: Any, guidance: Any, seed: Any, strength: Any) -> Settings:
        def num(v, name, kind, lo, hi):
            if isinstance(v, str):
                v = v.strip()
            if v in (None, ""):
                return None
            try:
                x = kind(float(v)) if kind is int else float(v)
            except (TypeError, ValueError) as e:
                raise DemoError(f"{name}: '{v}' is not a number") from e
            if kind is int and float(v) != x:
                raise DemoError(f"{name}: {v} must be a whole number")
            if not lo <= x <= hi:
                raise DemoError(f"{name}: {v} must be in [{lo}, {hi}]")
            return x

        s = cls(num(steps, "steps", int, 1, 250), num(guidance, "guidance", float, 0, 50),
                num(seed, "seed", int, 0, 2**31 - 1) or 0, num(strength, "strength", float, 0, 1))
        if s.strength is not None and s.strength <= 0:
            raise DemoError("strength must be in (0, 1]")
        return s

    def args(self) -> dict[str, str]:
        out = {"seed": str(self.seed)}
        if self.steps is not None:
            out["steps"] = str(self.steps)
        if self.guidance is not None:
            out["guidance"] = str(self.guidance)
        if self.strength is not None:
            out["strength"] = str(self.strength)
        return out

    def used(self, model: Any) -> dict[str, Any]:
        """The values the edit ran with: the given ones, else the checkpoint's sampling defaults."""
        s = model.sampling_cfg
        default_strength = s.get("start_strength", s["strength"]) if model.name == "magic_fixup" else s["strength"]
        return {"steps": self.steps or int(s["num_steps"]),
                "guidance": float(s["guidance_scale"] if self.guidance is None else self.guidance),
                "seed": self.seed,
                "strength": float(default_strength if self.strength is None else self.strength)}


@dataclass
class Inputs:
    """Everything the page sends for one edit, already decoded (no file path from a request)."""

    source: Any = None  # gr.ImageEditor value (or a plain RGB array)
    box: tuple = ()
    reference: np.ndarray | None = None
    reference_mask: np.ndarray | None = None
    depth: str | None = None  # a file in gradio's upload folder
    caption: str = ""
    coarse: np.ndarray | None = None
    valid: np.ndarray | None = None
    moves: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0)  # dx, dy, scale, angle
    subject: np.ndarray | None = None
    subject_inplace: np.ndarray | None = None


@dataclass
class Result:
    info: CheckpointInfo
    seconds: float
    settings: dict[str, Any]
    image: np.ndarray | None = None  # (H, W, 3) uint8
    clip: Path | None = None  # mp4

    @property
    def caption(self) -> str:
        s = self.settings
        return (f"**{self.info.index}: {self.info.method}** · {self.seconds:.2f} s · steps {s['steps']} · "
                f"guidance {s['guidance']:g} · seed {s['seed']} · strength {s['strength']:g}")


def build_coarse(source: np.ndarray, mask: np.ndarray, moves: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(coarse RGB uint8, valid uint8 0/255) moving the masked object by (dx, dy, scale, angle)."""
    from refedit.methods.magic_fixup import ObjectMove, coarse_from_moves

    if mask is None or not mask.any():
        raise DemoError("coarse edit: select the object to move first (paint it on the source, or give a box)")
    dx, dy, scale, angle = (float(v) for v in moves)
    if not 0.05 <= scale <= 20:
        raise DemoError(f"scale {scale}: must be in [0.05, 20]")
    coarse, valid = coarse_from_moves(source, [ObjectMove(mask, dx=dx, dy=dy, scale=scale, angle=angle)])
    rgb = ((coarse.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return rgb, (valid[0].numpy() > 0.5).astype(np.uint8) * 255


# ---------------------------------------------------------------------------------------------- the engine
class DemoEngine:
    """The page's logic without gradio: checkpoints (loaded on first use), inputs -> files -> `edit_with_model`."""

    def __init__(self, ckpts: Sequence[str | os.PathLike], workdir: str | os.PathLike | None = None,
                 device: str | None = None, max_side: int = 4096, max_file_bytes: int = 10 * 2**20):
        self.infos = [checkpoint_info(i, p) for i, p in enumerate(ckpts)]
        if not self.infos:
            raise ValueError("refedit-demo: no checkpoint to offer")
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="refedit-demo-") if workdir is None else workdir).resolve()
        self.outputs = self.workdir / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.max_side, self.max_file_bytes = int(max_side), int(max_file_bytes)
        self._models: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- choices
    @property
    def tasks(self) -> list[str]:
        return [t for t in TASKS if any(i.task == t for i in self.infos)]

    def chosen(self, indices: Sequence[Any] | None) -> list[CheckpointInfo]:
        out = []
        for v in indices or []:
            try:
                i = int(v)
            except (TypeError, ValueError):
                i = next((c.index for c in self.infos if c.label == v), -1)
            if not 0 <= i < len(self.infos) or isinstance(v, bool):
                raise DemoError(f"checkpoint {v!r}: not one of the {len(self.infos)} this demo was started with")
            if self.infos[i] not in out:
                out.append(self.infos[i])
        return out

    def needs(self, infos: Sequence[CheckpointInfo], task: str) -> set[str]:
        """The inputs to show: those of the chosen checkpoints of `task` (all of the task's, when none is)."""
        fit = [i for i in infos if i.task == task] or [i for i in self.infos if i.task == task]
        out = {k for i in fit for k in i.needs}
        if task == "coarse_edit":
            out |= {"moves"}
        return out

    def model(self, info: CheckpointInfo):
        if info.index not in self._models:
            from refedit.methods import load_method

            self._models[info.index] = load_method(info.path).to(self.device)
        return self._models[info.index]

    # -------------------------------------------------------------- checks
    def check_size(self, arr: np.ndarray | None, name: str) -> None:
        if arr is None:
            return
        h, w = np.asarray(arr).shape[:2]
        if max(h, w) > self.max_side:
            raise DemoError(f"{FIELDS.get(name, name)}: {w}x{h} pixels is above this demo's limit of "
                            f"{self.max_side} px a side")

    def check_upload(self, path: str | None, name: str) -> None:
        """A file gradio handed over: inside its upload folder (never a path a request named) and not too big."""
        if path is None:
            return
        from gradio.utils import get_upload_folder, is_in_or_equal

        if not is_in_or_equal(str(Path(path).resolve()), str(Path(get_upload_folder()).resolve())):
            raise DemoError(f"{FIELDS.get(name, name)}: not an uploaded file")
        size = Path(path).stat().st_size
        if size > self.max_file_bytes:
            raise DemoError(f"{FIELDS.get(name, name)}: {size / 2**20:.1f} MB is above this demo's upload limit "
                            f"of {self.max_file_bytes / 2**20:.0f} MB")

    # -------------------------------------------------------------- an edit
    def _files(self, inp: Inputs, d: Path) -> dict[str, str]:
        """Write the page's inputs as the files `refedit.edit` reads; keys as its options."""
        from PIL import Image

        files: dict[str, str] = {}
        src, mask = editor_image_and_mask(inp.source, inp.box)
        images = {"source": src, "reference": inp.reference, "coarse": inp.coarse, "subject": inp.subject,
                  "subject_inplace": inp.subject_inplace}
        for k, v in images.items():
            if v is not None:
                self.check_size(v, k)
                Image.fromarray(_u8_rgb(v, k)).save(d / f"{k}.png")
                files[k] = str(d / f"{k}.png")
        if mask is not None and not mask.any():
            mask = None  # nothing painted and no box: "no mask drawn" (below), not an empty mask file
        masks = {"mask": None if mask is None else mask.astype(np.uint8) * 255,
                 "reference_mask": inp.reference_mask, "valid": inp.valid}
        for k, v in masks.items():
            if v is not None:
                self.check_size(v, k)
                Image.fromarray(_u8_mask(v, k)).save(d / f"{k}.png")
                files[k] = str(d / f"{k}.png")
        if inp.depth is not None:
            self.check_upload(inp.depth, "depth")
            files["depth"] = inp.depth
        return files

    def _args(self, info: CheckpointInfo, model: Any, files: dict[str, str], inp: Inputs) -> dict[str, str]:
        keys = set(model.sample_keys) | {k for k in info.needs if k in ("reference_mask", "depth")}
        if "coarse" in keys:
            keys.add("valid")
        args = {k: files[k] for k in sorted(keys) if k in files}
        if "subject_inplace" in model.sample_keys and "subject_inplace" not in args and "subject" in args:
            args["subject_inplace"] = args["subject"]  # default: the subject itself, filling the frame
        if "caption" in model.sample_keys:
            args["caption"] = inp.caption or ""
        missing = [k for k in model.sample_keys if k not in args]
        if missing:
            what = {"mask": "no mask drawn: paint the region to edit on the source with the brush, or give a box",
                    "source": "no source image: upload one, or use the toyworld example",
                    "reference": "no reference image: upload one, or use the toyworld example",
                    "coarse": "no coarse edit: move / scale / rotate the selected object, or upload a coarse edit",
                    "subject": "no subject image: upload a cut-out of the subject on black, or use the toyworld "
                               "example"}
            raise DemoError(f"{info.index}: {info.method}: " + "; ".join(what.get(k, f"needs the {FIELDS.get(k, k)}")
                                                                        for k in missing))
        return args

    def _prepare(self, infos: list[CheckpointInfo], task: str, inp: Inputs) -> Inputs:
        if not infos:
            raise DemoError("choose at least one checkpoint")
        if task not in TASKS:
            raise DemoError(f"task {task!r}: choose one of {', '.join(TASKS)}")
        wrong = [i for i in infos if i.task != task]
        if wrong:
            raise DemoError("; ".join(f"checkpoint {i.label} is a {i.method} model for '{TASKS[i.task]}', not for "
                                      f"'{TASKS[task]}'" for i in wrong) + ": untick it or change the task")
        if task == "coarse_edit" and inp.coarse is None:  # the coarse edit is built from the moves
            src, mask = editor_image_and_mask(inp.source, inp.box)
            if src is not None and mask is not None and mask.any() and tuple(inp.moves) != (0.0, 0.0, 1.0, 0.0):
                self.check_size(src, "source")
                coarse, valid = build_coarse(src, mask, inp.moves)
                inp = Inputs(**{**inp.__dict__, "coarse": coarse, "valid": valid})
        if inp.coarse is not None and inp.valid is not None:
            if np.asarray(inp.valid).shape[:2] != np.asarray(inp.coarse).shape[:2]:
                inp = Inputs(**{**inp.__dict__, "valid": None})  # a stale mask of an earlier coarse edit
        return inp

    def run(self, indices: Sequence[Any], task: str, inp: Inputs, settings: Settings,
            progress: Any = None) -> list[Result]:
        """Edit with every chosen checkpoint; raises DemoError (a message for the page) on bad input."""
        from refedit.edit import edit_with_model, save_result
        from refedit.utils.checkpoint import CheckpointError
        from refedit.utils.cli import UsageError
        from refedit.utils.images import InputError

        infos = self.chosen(indices)
        inp = self._prepare(infos, task, inp)
        req = self.workdir / "requests" / uuid.uuid4().hex
        req.mkdir(parents=True)
        results = []
        try:
            files = self._files(inp, req)
            with self._lock:
                for n, info in enumerate(infos):
                    if progress is not None:
                        progress(n / len(infos), desc=f"{info.method}: loading" if info.index not in self._models
                                 else f"{info.method}: editing")
                    try:
                        model = self.model(info)
                    except (CheckpointError, RuntimeError, ValueError, OSError) as e:
                        raise DemoError(f"checkpoint {info.label} could not be loaded: {str(e).splitlines()[0]}") from e
                    args = {**self._args(info, model, files, inp), **settings.args()}
                    t0 = time.perf_counter()
                    try:
                        result, orig_hw = edit_with_model(model, args, progress=progress is not None)
                    except (InputError, UsageError) as e:
                        msg = str(e)
                        for k, path in files.items():
                            msg = msg.replace(f"{k}={path}", FIELDS.get(k, k))
                        raise DemoError(f"{info.index}: {info.method}: {msg}") from e
                    seconds = time.perf_counter() - t0
                    used = settings.used(model)
                    out_dir = self.outputs / req.name
                    if result.dim() == 5:
                        clip = save_result(result.cpu(), model.name, orig_hw, out_dir / f"{info.index}_{info.method}.mp4")
                        results.append(Result(info, seconds, used, clip=clip))
                    else:
                        png = save_result(result.cpu(), model.name, orig_hw, out_dir / f"{info.index}_{info.method}.png")
                        from PIL import Image

                        with Image.open(png) as im:
                            results.append(Result(info, seconds, used, image=np.asarray(im.convert("RGB"))))
        finally:
            shutil.rmtree(req, ignore_errors=True)
        return results

    # -------------------------------------------------------------- toyworld example
    def example(self, task: str, indices: Sequence[Any], index: int = 0) -> dict[str, Any]:
        """Inputs of sample `index` of the toyworld benchmark split for `task`, at the chosen checkpoints' size."""
        from refedit.data.toyworld import ToyWorldDataset

        if task not in TASKS:
            raise DemoError(f"task {task!r}: choose one of {', '.join(TASKS)}")
        infos = [i for i in self.chosen(indices) if i.task == task] or [i for i in self.infos if i.task == task]
        size = max((i.resolution for i in infos), default=64)
        frames = max((i.frames for i in infos), default=8)
        toy_task = task
        if task == "exemplar_inpaint" and any(i.method == "mimicbrush" for i in infos):
            toy_task = "reference_imitation"  # the same inputs, plus a depth map
        index = int(index or 0)
        ds = ToyWorldDataset(toy_task, split="benchmark", size=size, frames=max(frames, 2))
        if not 0 <= index < len(ds):
            raise DemoError(f"example #{index}: the benchmark split has samples 0 to {len(ds) - 1}")
        s = ds[index]

        def rgb(t):
            return ((t.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

        def grey(t):
            return (t[0].float() > 0.5).numpy().astype(np.uint8) * 255

        out: dict[str, Any] = {"caption": str(s.get("caption", "")), "task": toy_task, "index": index}
        if "source" in s:
            src = rgb(s["source"])
            m = s["mask"][0].numpy() > 0.5
            layer = np.zeros((*m.shape, 4), np.uint8)
            layer[m] = (255, 0, 0, 160)
            comp = src.copy()
            comp[m] = (0.6 * comp[m] + 0.4 * np.array([255, 0, 0])).astype(np.uint8)
            out["source"] = {"background": src, "layers": [layer], "composite": comp}
        for k in ("reference", "coarse", "subject", "subject_inplace"):
            if k in s:
                out[k] = rgb(s[k])
        for k in ("reference_mask", "valid"):
            if k in s:
                out[k] = grey(s[k])
        if "depth" in s:
            from PIL import Image

            d = (s["depth"][0].float().clamp(0, 1).numpy() * 65535).round().astype(np.uint16)
            path = self.outputs / "examples" / f"{toy_task}_{index}_depth.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(d).save(path)
            out["depth"] = str(path)
        return out

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the page
def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no calls home, before gradio is imported
    try:
        import gradio as gr
    except ImportError as e:
        raise SystemExit("refedit-demo needs gradio: pip install -e '.[demo]'") from e
    return gr


def build_app(engine: DemoEngine, task: str | None = None):
    """The gr.Blocks page over `engine` (not launched); it opens on `task` (default: the first checkpoint's) with
    every checkpoint of that task ticked."""
    gr = _gradio()

    infos = engine.infos
    tasks = engine.tasks
    if task is not None and task not in tasks:
        raise ValueError(f"task={task}: none of the checkpoints does it (their tasks: {', '.join(tasks)})")
    task0 = task or infos[0].task
    chosen0 = [i.index for i in infos if i.task == task0]
    need0 = engine.needs([infos[i] for i in chosen0], task0)
    with gr.Blocks(title="refedit web editor", analytics_enabled=False) as app:
        gr.Markdown("# refedit web editor\nChoose checkpoints and a task, give the inputs (or use a toyworld "
                    "example), run. Results appear side by side with the time and settings of each edit.")
        with gr.Row():
            ckpts = gr.CheckboxGroup(choices=[(i.label, i.index) for i in infos], value=chosen0, type="value",
                                     label="Checkpoints", elem_id="ckpts", scale=3)
            task = gr.Radio(choices=[(TASKS[t], t) for t in tasks], value=task0, label="Task", elem_id="task",
                            scale=2)
        with gr.Row():
            example_btn = gr.Button("Use toyworld example", elem_id="example-btn")
            example_idx = gr.Number(value=0, precision=0, minimum=0, label="Example # (benchmark split)")
        with gr.Row():
            with gr.Column(visible="source" in need0) as source_col:
                source = gr.ImageEditor(label="Source: paint the region to edit (or the object to move)",
                                        type="numpy", image_mode="RGBA", format="png", elem_id="source",
                                        brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"), layers=False,
                                        transforms=(), sources=("upload", "clipboard"))
                with gr.Row(visible="mask" in need0) as box_row:
                    x0 = gr.Number(label="box x0", precision=0, minimum=0)
                    y0 = gr.Number(label="box y0", precision=0, minimum=0)
                    x1 = gr.Number(label="box x1", precision=0, minimum=0)
                    y1 = gr.Number(label="box y1", precision=0, minimum=0)
            with gr.Column(visible=bool({"reference", "subject"} & need0)) as ref_col:
                reference = gr.Image(label="Reference image", type="numpy", image_mode="RGB",
                                     visible="reference" in need0, elem_id="reference")
                reference_mask = gr.Image(label="Reference mask (optional, MimicBrush)", type="numpy",
                                          image_mode="L", visible="reference_mask" in need0)
                depth = gr.File(label="Depth of the source (optional, MimicBrush: 8/16-bit grey PNG, white = near)",
                                file_types=[".png", ".tif", ".tiff"], type="filepath", visible="depth" in need0)
                subject = gr.Image(label="Subject (cut-out on black)", type="numpy", image_mode="RGB",
                                   visible="subject" in need0, elem_id="subject")
                subject_inplace = gr.Image(label="Subject in place in frame 0, on black (optional; default: the "
                                                 "subject filling the frame)", type="numpy", image_mode="RGB",
                                           visible="subject_inplace" in need0)
        caption = gr.Textbox(label="Caption", visible="caption" in need0, elem_id="caption")
        with gr.Group(visible="moves" in need0) as moves_group:
            gr.Markdown("Move the selected object (painted or boxed on the source), then build the coarse edit "
                        "(or upload one: pure-black pixels are its holes).")
            with gr.Row():
                dx = gr.Number(value=0, label="dx (px, right)")
                dy = gr.Number(value=0, label="dy (px, down)")
                scale = gr.Number(value=1.0, label="scale")
                angle = gr.Number(value=0, label="angle (deg, counter-clockwise)")
            coarse_btn = gr.Button("Build coarse edit from the move")
            coarse = gr.Image(label="Coarse edit", type="numpy", image_mode="RGB", elem_id="coarse")
        valid = gr.State(None)
        with gr.Accordion("Settings (empty: the checkpoint's own)", open=True):
            with gr.Row():
                steps = gr.Number(value=20, precision=0, minimum=1, maximum=250, label="steps")
                guidance = gr.Textbox(value="", placeholder="checkpoint's own", label="guidance")
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                strength = gr.Textbox(value="", placeholder="checkpoint's own, in (0, 1]", label="strength")
        run_btn = gr.Button("Run edit", variant="primary", elem_id="run-btn")
        status = gr.Markdown("", elem_id="status")
        slots = []
        with gr.Row():
            for info in infos:
                with gr.Column(visible=False, elem_id=f"result-{info.index}") as col:
                    md = gr.Markdown(f"**{info.label}**")
                    img = gr.Image(label=info.method, type="numpy", format="png", interactive=False, height=256,
                                   buttons=["download", "fullscreen"], elem_id=f"result-image-{info.index}",
                                   elem_classes=["refedit-pixels"])
                    vid = gr.Video(label=info.method, interactive=False, format="mp4", visible=False, height=256,
                                   autoplay=True, loop=True, buttons=["download"],
                                   elem_id=f"result-video-{info.index}", elem_classes=["refedit-pixels"])
                slots.append((col, md, img, vid))

        # ------------------------------------------------------------------ events
        def shown(indices, task_value):
            try:
                chosen = engine.chosen(indices)
            except DemoError:
                chosen = []
            if chosen and task_value not in {i.task for i in chosen}:
                task_value = chosen[0].task
            need = engine.needs(chosen, task_value)
            return [gr.update(value=task_value), gr.update(visible="source" in need),
                    gr.update(visible="mask" in need or "moves" in need),
                    gr.update(visible=bool({"reference", "subject"} & need)),
                    gr.update(visible="reference" in need), gr.update(visible="reference_mask" in need),
                    gr.update(visible="depth" in need), gr.update(visible="subject" in need),
                    gr.update(visible="subject_inplace" in need), gr.update(visible="caption" in need),
                    gr.update(visible="moves" in need)]

        vis_outputs = [task, source_col, box_row, ref_col, reference, reference_mask, depth, subject,
                       subject_inplace, caption, moves_group]
        ckpts.change(shown, [ckpts, task], vis_outputs, api_visibility="private")
        task.change(shown, [ckpts, task], vis_outputs, api_visibility="private")

        def fill_example(task_value, indices, index):
            try:
                ex = engine.example(task_value, indices, index)
            except DemoError as e:
                raise gr.Error(str(e)) from None
            return (ex.get("source"), None, None, None, None, ex.get("reference"), ex.get("reference_mask"),
                    ex.get("depth"), ex["caption"], ex.get("coarse"), ex.get("valid"), 0, 0, 1.0, 0,
                    ex.get("subject"), ex.get("subject_inplace"),
                    f"Filled with toyworld benchmark sample #{ex['index']} ({ex['task']}).")

        example_btn.click(fill_example, [task, ckpts, example_idx],
                          [source, x0, y0, x1, y1, reference, reference_mask, depth, caption, coarse, valid, dx, dy,
                           scale, angle, subject, subject_inplace, status], api_name="example")

        def make_coarse(editor, bx0, by0, bx1, by1, mdx, mdy, mscale, mangle):
            try:
                src, mask = editor_image_and_mask(editor, (bx0, by0, bx1, by1))
                if src is None:
                    raise DemoError("coarse edit: upload a source image first")
                engine.check_size(src, "source")
                c, v = build_coarse(src, mask, (mdx or 0, mdy or 0, 1.0 if mscale in (None, "") else mscale,
                                                mangle or 0))
            except (DemoError, ValueError) as e:
                raise gr.Error(str(e)) from None
            return c, v

        coarse_btn.click(make_coarse, [source, x0, y0, x1, y1, dx, dy, scale, angle], [coarse, valid],
                         api_name="coarse")
        coarse.upload(lambda _: None, [coarse], [valid], api_visibility="private")  # an upload has no mask

        def edit(indices, task_value, editor, bx0, by0, bx1, by1, ref, ref_mask, depth_file, text, coarse_img,
                 mdx, mdy, mscale, mangle, subj, subj_inplace, n_steps, cfg, seed_value, strength_value,
                 valid_mask=None, progress=gr.Progress(track_tqdm=True)):
            try:
                settings = Settings.parse(n_steps, cfg, seed_value, strength_value)
                inp = Inputs(source=editor, box=(bx0, by0, bx1, by1), reference=ref, reference_mask=ref_mask,
                             depth=depth_file, caption=text or "", coarse=coarse_img, valid=valid_mask,
                             moves=(float(mdx or 0), float(mdy or 0), 1.0 if mscale in (None, "") else float(mscale),
                                    float(mangle or 0)),
                             subject=subj, subject_inplace=subj_inplace)
                results = engine.run(indices, task_value, inp, settings, progress)
            except DemoError as e:
                raise gr.Error(str(e)) from None
            except Exception as e:  # noqa: BLE001 - the app keeps serving; the page says what failed
                log.exception("edit failed")
                raise gr.Error(f"the edit failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
                    from None
            by_index = {r.info.index: r for r in results}
            rows = "\n".join(f"| {r.info.index} | {r.info.method} | {r.seconds:.2f} | {r.settings['steps']} | "
                             f"{r.settings['guidance']:g} | {r.settings['seed']} | {r.settings['strength']:g} |"
                             for r in results)
            out: list[Any] = [f"Done: {len(results)} edit(s).\n\n| # | method | seconds | steps | guidance | seed | "
                              f"strength |\n|---|---|---|---|---|---|---|\n{rows}"]
            for info in infos:
                r = by_index.get(info.index)
                if r is None:
                    out += [gr.update(visible=False), gr.update(), gr.update(value=None), gr.update(value=None)]
                else:
                    out += [gr.update(visible=True), r.caption,
                            gr.update(value=r.image, visible=r.image is not None),
                            gr.update(value=None if r.clip is None else str(r.clip), visible=r.clip is not None)]
            return out

        run_btn.click(edit, [ckpts, task, source, x0, y0, x1, y1, reference, reference_mask, depth, caption, coarse,
                             dx, dy, scale, angle, subject, subject_inplace, steps, guidance, seed, strength, valid],
                      [status, *[c for s in slots for c in s]], api_name="edit")
    app.queue(default_concurrency_limit=1, max_size=16)
    return app


def launch(app, engine: DemoEngine, host: str = "127.0.0.1", port: int | None = None, max_file_mb: float = 10,
           block: bool = True):
    """Serve the page. `host` other than localhost is a deliberate choice (a warning says so); never a share link."""
    gr = _gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts from the internet
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"refedit-demo: WARNING: serving on {host}: anyone who can reach this machine on port {port} can run "
              f"edits and see results. There is no authentication.", file=sys.stderr, flush=True)
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, inbrowser=False,
               show_error=False, allowed_paths=[str(engine.outputs)], max_file_size=f"{int(max_file_mb * 1024)}kb",
               ssr_mode=False, mcp_server=False, enable_monitoring=False, quiet=not block, footer_links=[],
               theme=theme, css=CSS)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- browser
def chromium_missing() -> str | None:
    """Why a headless-chromium session cannot start here (None when it can)."""
    for p in (CHROMIUM, CHROMEDRIVER):
        if not (Path(p).is_file() and os.access(p, os.X_OK)):
            return f"{p} not found (apt-get install chromium chromium-driver, or set REFEDIT_CHROMIUM / " \
                   f"REFEDIT_CHROMEDRIVER)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def _toasts(driver) -> list[str]:
    """The text of the error toasts (gr.Error) on the page."""
    from selenium.webdriver.common.by import By

    return [(el.get_attribute("textContent") or "").strip()
            for el in driver.find_elements(By.CSS_SELECTOR, ".toast-body")]


def browser_edit(url: str, screenshot: str | os.PathLike, timeout: float = 300, example: int = 0,
                 width: int = 1400, height: int = 2000) -> Path:
    """Open the page in headless chromium, click 'Use toyworld example', run the edit, wait for the first result
    and save a screenshot (PNG). Raises TimeoutError naming the step that did not happen."""
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    why = chromium_missing()
    if why:
        raise RuntimeError(why)
    out = Path(screenshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="refedit-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (*CHROMIUM_ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(a)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    step = "open the page"
    try:
        driver.set_page_load_timeout(timeout)
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        wait.until(EC.element_to_be_clickable((By.ID, "example-btn")))
        if example:
            num = driver.find_elements(By.CSS_SELECTOR, "input[type=number]")[0]
            num.clear()
            num.send_keys(str(example))
        step = "fill the toyworld example"
        driver.find_element(By.ID, "example-btn").click()
        wait.until(lambda d: "Filled with toyworld" in d.find_element(By.ID, "status").text)
        step = "run the edit and show a result"
        driver.find_element(By.ID, "run-btn").click()
        wait.until(lambda d: "Done:" in d.find_element(By.ID, "status").text or _toasts(d))
        if _toasts(driver):
            raise RuntimeError(f"browser: the edit failed; the page says: {' | '.join(_toasts(driver))}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[id^=result-image-] img, [id^=result-video-] video"))
        full = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(width, max(height, full + 40))  # the whole page, results included
        time.sleep(1.0)  # let the result images paint
        driver.save_screenshot(str(out))
    except TimeoutException as e:
        driver.save_screenshot(str(out.with_name(out.stem + "_failed.png")))
        raise TimeoutError(f"browser: could not {step} within {timeout:.0f} s; page errors: {_toasts(driver)}") from e
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- CLI
_OPTIONS = {  # key=value options, as every refedit entry point takes them: (type, default, help)
    "ckpts": (str, None, "checkpoint files or directories, comma separated; default: the newest `make compare` "
                         "run's"),
    "host": (str, "127.0.0.1", "address to bind (default 127.0.0.1: this machine only)"),
    "port": (int, 7860, "port to serve on"),
    "device": (str, None, "cuda or cpu (default: cuda when available)"),
    "max_file_mb": (float, 10.0, "largest upload accepted (MB)"),
    "max_side": (int, 4096, "largest image side accepted (pixels)"),
    "screenshot": (str, None, "a PNG path: serve on a free localhost port, edit the toyworld example in headless "
                              "chromium, save a screenshot of the page there and exit"),
    "task": (str, None, f"the task the page opens on, with all its checkpoints ticked ({' | '.join(TASKS)}; "
                        "default: the first checkpoint's)"),
    "example": (int, 0, "with screenshot=: the benchmark sample to edit"),
}


def usage() -> str:
    lines = [f"usage: refedit-demo [key=value ...]\n\n{__doc__.split(chr(10) * 2)[0]}\n\noptions:"]
    lines += [f"  {k}=  {h} (default: {d})" for k, (_, d, h) in _OPTIONS.items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> SimpleNamespace:
    """key=value options (the style of refedit.edit / refedit.export and Hydra's overrides)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage())
        raise SystemExit(0)
    given = parse_kv(argv, optional=tuple(_OPTIONS))
    values: dict[str, Any] = {}
    for key, (kind, default, _) in _OPTIONS.items():
        if key not in given:
            values[key] = default
            continue
        try:
            values[key] = kind(given[key])
        except ValueError:
            raise UsageError(f"{key}={given[key]!r}: not a{'n integer' if kind is int else ' number'}") from None
    if values["task"] is not None and values["task"] not in TASKS:
        raise UsageError(f"task={values['task']!r}: one of {', '.join(TASKS)}")
    return SimpleNamespace(**values)


@report_input_errors("refedit-demo")
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = find_checkpoints([args.ckpts]) if args.ckpts else default_checkpoints()
        engine = DemoEngine(paths, device=args.device, max_side=args.max_side,
                            max_file_bytes=int(args.max_file_mb * 2**20))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"refedit-demo: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for info in engine.infos:
        print(f"  {info.label}  [{TASKS[info.task]}]  {info.path}", flush=True)
    try:
        app = build_app(engine, args.task)
    except ValueError as e:
        print(f"refedit-demo: error: {e}", file=sys.stderr)
        engine.close()
        return 2
    try:
        if args.screenshot:
            port = free_port()
            launch(app, engine, "127.0.0.1", port, args.max_file_mb, block=False)
            out = browser_edit(f"http://127.0.0.1:{port}/", args.screenshot, example=args.example)
            print(f"wrote {out}")
            return 0
        launch(app, engine, args.host, args.port, args.max_file_mb, block=True)
    finally:
        app.close()
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
