"""Training samples from video folders: frame pairs (MimicBrush), coarse-edit pairs (Magic Fixup) and
captioned subject clips (MagDiff). The folder layout and sidecars are described in :mod:`refedit.data.video`.

Pairs are two frames ``gap ~ U[min_gap, max_gap]`` seconds apart (capped by the clip length; a clip
shorter than ``min_gap`` is bad data). Rejection rules are filters, tried in order on each drawn pair;
after ``max_tries`` rejected draws the item is skipped like bad data (counted under "rejected by the
filters", no warning per file). Every random draw comes from ``(seed, epoch, index)``, so a sample does
not depend on the worker that builds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import kornia
import numpy as np
import torch

from refedit.data.errors import (
    AnnotationError,
    MaskSizeError,
    MissingFileError,
    PairRejectedError,
    RobustDataset,
    VideoTooShortError,
)
from refedit.data.flow import DISFlow, FlowEstimator, chain_flow, compose_flows, flow_magnitude
from refedit.data.io import (
    depth_to_tensor,
    image_to_tensor,
    mask_to_tensor,
    video_to_tensor,
)
from refedit.data.transforms import (
    crop,
    dilate,
    grid_mask,
    mask_to_box,
    random_box_mask,
    random_square_window,
    resize,
    sift_matches,
    square_pad,
)
from refedit.data.video import ReaderCache, VideoEntry, VideoFolder
from refedit.data.warp import forward_splat, piecewise_affine_warp, segments_from_flow

# ------------------------------------------------------------------------------------------ filters


class PairContext:
    """What a filter may look at; the flow (and the warp's valid mask) are computed once, on demand."""

    def __init__(self, source: np.ndarray, target: np.ndarray, flow_fn: Callable[[], np.ndarray] | None = None,
                 flow: np.ndarray | None = None) -> None:
        self.source, self.target = source, target
        self._flow_fn, self._flow = flow_fn, flow
        self._valid: np.ndarray | None = None

    @property
    def flow(self) -> np.ndarray:
        if self._flow is None:
            if self._flow_fn is None:
                raise ValueError("this filter needs flow but the dataset has no flow estimator")
            self._flow = self._flow_fn()
        return self._flow

    @property
    def splat_valid(self) -> np.ndarray:
        if self._valid is None:
            _, self._valid = forward_splat(self.source[..., :1], self.flow, mode="nearest")
        return self._valid


class SSIMBand:
    """MimicBrush: reject pairs that are too alike (nothing to learn) or too different (no correspondence).
    SSIM of the grey frames at ``size`` px (shorter side), 11 px window (kornia)."""

    def __init__(self, low: float = 0.2, high: float = 0.9, size: int = 128) -> None:
        if not low < high:
            raise ValueError(f"SSIMBand needs low < high, got {low}, {high}")
        self.low, self.high, self.size = float(low), float(high), int(size)

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        def prep(x: np.ndarray) -> torch.Tensor:
            g = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY)
            h, w = g.shape
            s = self.size / min(h, w)
            if s < 1:
                g = cv2.resize(g, (max(11, round(w * s)), max(11, round(h * s))), interpolation=cv2.INTER_AREA)
            return torch.from_numpy(g)[None, None].float() / 255.0

        return float(kornia.metrics.ssim(prep(a), prep(b), 11).mean())

    def __call__(self, ctx: PairContext) -> str | None:
        s = self.score(ctx.source, ctx.target)
        return None if self.low <= s <= self.high else f"ssim {s:.3f} outside [{self.low}, {self.high}]"


class FlowMagnitudeFilter:
    """Magic Fixup: reject when ``>= max_fraction`` of pixels have flow ``>= threshold_px``. The threshold is
    given for frames ``reference_width`` px wide and scaled to the working width."""

    def __init__(self, threshold_px: float = 350.0, max_fraction: float = 0.1, reference_width: int = 512) -> None:
        self.threshold_px, self.max_fraction, self.reference_width = float(threshold_px), float(max_fraction), \
            int(reference_width)

    def __call__(self, ctx: PairContext) -> str | None:
        thr = self.threshold_px * ctx.source.shape[1] / self.reference_width
        frac = float((flow_magnitude(ctx.flow) >= thr).mean())
        return None if frac < self.max_fraction else f"{frac:.1%} of pixels move >= {thr:.1f}px"


class FlowPercentileFilter:
    """Keep pairs whose ``q``-th percentile of flow magnitude (px at ``reference_width``) lies in
    ``[min_px, max_px]`` - e.g. ``q=90, min_px=2`` rejects nearly static pairs."""

    def __init__(self, q: float = 90.0, min_px: float | None = None, max_px: float | None = None,
                 reference_width: int = 512) -> None:
        self.q, self.min_px, self.max_px, self.reference_width = float(q), min_px, max_px, int(reference_width)

    def __call__(self, ctx: PairContext) -> str | None:
        scale = ctx.source.shape[1] / self.reference_width
        p = float(np.percentile(flow_magnitude(ctx.flow), self.q))
        if self.min_px is not None and p < self.min_px * scale:
            return f"flow p{self.q:g} {p:.2f}px < {self.min_px * scale:.2f}px"
        if self.max_px is not None and p > self.max_px * scale:
            return f"flow p{self.q:g} {p:.2f}px > {self.max_px * scale:.2f}px"
        return None


class ValidFractionFilter:
    """Reject when the forward-splatted source covers less than ``min_valid`` of the target frame."""

    def __init__(self, min_valid: float = 0.5) -> None:
        self.min_valid = float(min_valid)

    def __call__(self, ctx: PairContext) -> str | None:
        v = float(ctx.splat_valid.mean())
        return None if v >= self.min_valid else f"valid warped fraction {v:.2f} < {self.min_valid}"


def first_rejection(filters: Sequence[Callable[[PairContext], str | None]], ctx: PairContext) -> str | None:
    for f in filters:
        r = f(ctx)
        if r is not None:
            return r
    return None


def sample_pair_times(num_frames: int, fps: float, rng: np.random.Generator, min_gap: float, max_gap: float,
                      *, path: Any = "", random_order: bool = True) -> tuple[float, float]:
    """Two frame times ``gap ~ U[min_gap, min(max_gap, clip)]`` apart; raises if the clip is too short."""
    last = (num_frames - 1) / fps
    if last + 1e-9 < min_gap:
        raise VideoTooShortError(path, f"{num_frames} frames = {last:.2f}s between first and last frame, "
                                       f"min_gap is {min_gap}s")
    gap = float(rng.uniform(min_gap, min(max_gap, last))) if max_gap > min_gap else float(min_gap)
    gap = min(gap, last)
    t0 = float(rng.uniform(0.0, last - gap)) if last > gap else 0.0
    t1 = t0 + gap
    if random_order and rng.random() < 0.5:
        t0, t1 = t1, t0
    return t0, t1


# ------------------------------------------------------------------------------------------ datasets


class _Geometry:
    """How decoded frames (and their sidecars) become ``size x size``: one draw per sample, shared by all."""

    def __init__(self, native_hw: tuple[int, int], size: int, fit: str, rng: np.random.Generator) -> None:
        self.size, self.fit, self.native_hw = size, fit, native_hw
        h, w = native_hw
        if fit in ("center_crop", "random_crop"):
            s = size / min(h, w)
            self.kw: dict[str, Any] = {"shorter": size}
        elif fit == "pad":
            s = size / max(h, w)
            self.kw = {"longer": size}
        elif fit == "resize":
            self.kw = {"hw": (size, size)}
            self.decoded_hw = (size, size)
            return
        else:
            raise ValueError(f"unknown fit {fit!r}; use center_crop, random_crop, pad or resize")
        self.decoded_hw = (max(1, round(h * s)), max(1, round(w * s)))
        dh, dw = self.decoded_hw
        if fit == "center_crop":
            x0, y0 = (dw - min(dh, dw)) // 2, (dh - min(dh, dw)) // 2
            self.window = (x0, y0, x0 + min(dh, dw), y0 + min(dh, dw))
        elif fit == "random_crop":
            self.window = random_square_window(self.decoded_hw, rng)

    def flow(self, f: np.ndarray) -> np.ndarray:
        """A native-resolution flow field (H, W, 2): resampled and its vectors rescaled, then cropped/padded."""
        h, w = f.shape[:2]
        dh, dw = self.decoded_hw
        g = cv2.resize(f, (dw, dh), interpolation=cv2.INTER_LINEAR) if (h, w) != (dh, dw) else f.copy()
        g[..., 0] *= dw / w
        g[..., 1] *= dh / h
        if self.fit == "pad":
            out, _, _, _ = square_pad(g)
            k = self.size / out.shape[0]
            return cv2.resize(out, (self.size, self.size), interpolation=cv2.INTER_LINEAR) * k \
                if out.shape[0] != self.size else out
        return g if self.fit == "resize" else crop(g, self.window)[0]

    def __call__(self, a: np.ndarray, *, mask: bool = False) -> np.ndarray:
        """Apply to a decoded frame, or to a native-resolution sidecar (mask / label map / depth)."""
        if a.shape[:2] != self.decoded_hw:
            interp = cv2.INTER_NEAREST if mask else cv2.INTER_LINEAR
            a, _, _ = resize(a, self.decoded_hw, interpolation=interp)
        if self.fit == "resize":
            return a
        if self.fit == "pad":
            out, _, _, _ = square_pad(a)
            return cv2.resize(out, (self.size, self.size), interpolation=cv2.INTER_NEAREST) \
                if out.shape[0] != self.size else out
        return crop(a, self.window)[0]


class _VideoDataset(RobustDataset):
    def __init__(self, root: str | os.PathLike, size: int, *, fit: str = "center_crop",
                 samples_per_video: int = 1, fps: float = 24.0, prefer: str = "file",
                 captions: str | None = "captions.jsonl", depth_kind: str = "inverse",
                 depth_scale: float = 1.0 / 1000.0, sidecars: dict[str, str] | None = None, max_open: int = 8,
                 threads: int = 1, on_error: str = "skip", seed: int = 0) -> None:
        super().__init__(on_error=on_error, seed=seed)
        self.folder = VideoFolder(root, captions=captions, fps=fps, prefer=prefer, depth_kind=depth_kind,
                                  depth_scale=depth_scale, sidecars=sidecars)
        self.size, self.fit, self.samples_per_video = int(size), fit, int(samples_per_video)
        self.cache = ReaderCache(max_open=max_open, threads=threads, fps=fps)
        _Geometry((2 * size, 2 * size), size, fit, np.random.default_rng(0))  # validates ``fit`` early

    def __len__(self) -> int:
        return len(self.folder) * self.samples_per_video

    def entry(self, index: int) -> VideoEntry:
        return self.folder.entries[index // self.samples_per_video]

    def _open(self, entry: VideoEntry) -> tuple[Any, dict[str, Any]]:
        reader = self.cache.get(entry)
        try:
            return reader, reader.info()
        except Exception:
            self.cache.drop(entry)
            raise

    def _sidecar(self, kind: str, entry: VideoEntry, frame: int, native_hw: tuple[int, int], *,
                 required: bool) -> np.ndarray | None:
        p = self.folder.sidecar(kind, entry, frame)
        if p is None:
            if required:
                raise MissingFileError(self.folder.expected_sidecar(kind, entry, frame),
                                       f"{kind} sidecar for frame {frame} of {entry.path.name}")
            return None
        a = self.folder.read_sidecar(kind, p)
        if a.shape[:2] != tuple(native_hw):
            raise MaskSizeError(p, f"{a.shape[1::-1]} vs video frame {tuple(native_hw)[::-1]} ({entry.path.name})")
        return a

    def _base_meta(self, entry: VideoEntry, index: int) -> dict[str, Any]:
        return {"video": entry.id, "path": str(entry.path), "index": index, "seed": self.seed}


class VideoFramePairs(_VideoDataset):
    """MimicBrush-style pairs: ``source`` = frame s, ``reference`` = frame t, ``target`` = source, and a
    default edit ``mask`` (``grid``: the paper's N x N grid, cells with SIFT matches to the reference masked
    with ``p_matched``; ``box``: one random box; ``none``: no mask key, the method draws its own).
    ``with_depth`` adds the depth sidecar of the source frame."""

    def __init__(self, root: str | os.PathLike, size: int = 512, *, min_gap: float = 0.5, max_gap: float = 3.0,
                 filters: Sequence[Callable[[PairContext], str | None]] = (), max_tries: int = 5,
                 mask: str = "grid", grid: tuple[int, int] = (3, 10), p_matched: float = 0.75, p_other: float = 0.5,
                 keypoints: str = "sift", box_scale: tuple[float, float] = (0.2, 0.6), with_depth: bool = False,
                 flow: FlowEstimator | None = None, **kw: Any) -> None:
        super().__init__(root, size, **kw)
        if mask not in ("grid", "box", "none"):
            raise ValueError(f"mask must be grid, box or none, got {mask!r}")
        if keypoints not in ("sift", "none"):
            raise ValueError(f"keypoints must be sift or none, got {keypoints!r}")
        self.min_gap, self.max_gap, self.max_tries = float(min_gap), float(max_gap), int(max_tries)
        self.filters = list(filters)
        self.mask, self.grid, self.p_matched, self.p_other = mask, tuple(grid), float(p_matched), float(p_other)
        self.keypoints, self.box_scale, self.with_depth = keypoints, tuple(box_scale), bool(with_depth)
        self.flow = flow if flow is not None else DISFlow()

    def load(self, index: int) -> dict[str, Any]:
        entry = self.entry(index)
        rng = self.rng(index)
        reader, info = self._open(entry)
        geo = _Geometry((info["height"], info["width"]), self.size, self.fit, rng)
        reasons = []
        for _ in range(self.max_tries):
            t0, t1 = sample_pair_times(info["num_frames"], info["fps"], rng, self.min_gap, self.max_gap,
                                       path=entry.path)
            raw, idx = reader.read([t0, t1], **geo.kw)
            src, ref = geo(raw[0]), geo(raw[1])
            ctx = PairContext(src, ref, flow_fn=lambda s=src, r=ref: self.flow(s, r))
            reason = first_rejection(self.filters, ctx)
            if reason is None:
                break
            reasons.append(reason)
        else:
            raise PairRejectedError(entry.path, "; ".join(reasons[:3]))
        out: dict[str, Any] = {"source": image_to_tensor(src), "reference": image_to_tensor(ref)}
        out["target"] = out["source"].clone()
        if self.mask == "grid":
            pts = sift_matches(src, ref, max_keypoints=500) if self.keypoints == "sift" else None
            out["mask"] = mask_to_tensor(grid_mask(src.shape[:2], rng, n_range=self.grid, p=self.p_other,
                                                   priority_points=pts, p_priority=self.p_matched))
        elif self.mask == "box":
            out["mask"] = mask_to_tensor(random_box_mask(src.shape[:2], rng, scale=self.box_scale))
        if self.with_depth:
            d = self._sidecar("depth", entry, idx[0], (info["height"], info["width"]), required=True)
            out["depth"] = depth_to_tensor(geo(d))
        out["caption"] = entry.caption or ""
        out["meta"] = {**self._base_meta(entry, index), "times": [t0, t1], "frames": idx,
                       "gap": abs(t1 - t0), "rejected": len(reasons)}
        return out


def changed_region(flow: np.ndarray, valid: np.ndarray, *, motion_px: float = 1.0, dilate_px: int = 4) -> np.ndarray:
    """Magic Fixup's region to repaint: holes of the warp, plus where content moves relative to the dominant
    (median, i.e. camera) motion - both where it left and where it landed - dilated by ``dilate_px``."""
    rel = flow - np.median(flow.reshape(-1, 2), axis=0)
    moved = flow_magnitude(rel) > motion_px
    _, landed = forward_splat(moved.astype(np.float32), flow, mode="nearest", mask=moved)
    return dilate(~valid | moved | landed, dilate_px)


class VideoCoarsePairs(_VideoDataset):
    """Magic Fixup pairs: frame s warped to frame t by ``motion`` (``flow`` = forward splat of the dense flow,
    ``piecewise_affine`` = one similarity per segment, ``mixed`` = either with p=0.5) -> ``coarse`` and
    ``valid``; ``reference`` = ``source`` = frame s, ``target`` = frame t, ``mask`` = holes + changed region.

    Flow s->t: the exact per-frame ``flow`` sidecars composed over s..t when the clip has them and
    ``flow_sidecar`` (then s < t), else the estimator (OpenCV DIS by default) composed over ``flow_hops``
    equal steps (large gaps defeat single-step flow). Segments: the ``instances`` sidecar of frame s, else
    its ``masks`` sidecar (subject vs rest), else k-means on the flow. The depth sidecar, when present, is
    the z-buffer of the splat and the back-to-front order of the segments (else largest segment first)."""

    def __init__(self, root: str | os.PathLike, size: int = 512, *, min_gap: float = 1.0, max_gap: float = 10.0,
                 filters: Sequence[Callable[[PairContext], str | None]] = (), max_tries: int = 5,
                 motion: str = "mixed", flow: FlowEstimator | None = None, flow_hops: int = 4,
                 flow_sidecar: bool = True, splat: str = "nearest", segments: int = 4, motion_px: float = 1.0,
                 mask_dilate: int = 4, **kw: Any) -> None:
        super().__init__(root, size, **kw)
        if motion not in ("flow", "piecewise_affine", "mixed"):
            raise ValueError(f"motion must be flow, piecewise_affine or mixed, got {motion!r}")
        self.min_gap, self.max_gap, self.max_tries = float(min_gap), float(max_gap), int(max_tries)
        self.filters, self.motion, self.flow_hops, self.splat = list(filters), motion, max(1, int(flow_hops)), splat
        self.flow, self.flow_sidecar = (flow if flow is not None else DISFlow()), bool(flow_sidecar)
        self.segments, self.motion_px, self.mask_dilate = int(segments), float(motion_px), int(mask_dilate)

    def _exact_flow(self, entry: VideoEntry, a: int, b: int, native: tuple[int, int]) -> np.ndarray:
        flow = self._sidecar("flow", entry, a, native, required=True)
        for f in range(a + 1, b):
            flow, _ = compose_flows(flow, self._sidecar("flow", entry, f, native, required=True))
        return flow

    def load(self, index: int) -> dict[str, Any]:
        entry = self.entry(index)
        rng = self.rng(index)
        reader, info = self._open(entry)
        native = (info["height"], info["width"])
        geo = _Geometry(native, self.size, self.fit, rng)
        exact = self.flow_sidecar and self.folder.has_sidecar("flow", entry)
        reasons = []
        for _ in range(self.max_tries):
            t0, t1 = sample_pair_times(info["num_frames"], info["fps"], rng, self.min_gap, self.max_gap,
                                       path=entry.path, random_order=not exact)
            if exact:
                raw, idx = reader.read([t0, t1], **geo.kw)
                frames = [geo(f) for f in raw]
                flow = geo.flow(self._exact_flow(entry, idx[0], idx[1], native)) if idx[1] > idx[0] else \
                    np.zeros((*frames[0].shape[:2], 2), np.float32)
            else:
                raw, idx = reader.read(np.linspace(t0, t1, self.flow_hops + 1).tolist(), **geo.kw)
                frames = [geo(f) for f in raw]
                flow, _ = chain_flow(frames, self.flow)
            ctx = PairContext(frames[0], frames[-1], flow=flow)
            reason = first_rejection(self.filters, ctx)
            if reason is None:
                break
            reasons.append(reason)
        else:
            raise PairRejectedError(entry.path, "; ".join(reasons[:3]))
        src, tgt = frames[0], frames[-1]
        depth = self._sidecar("depth", entry, idx[0], native, required=False)
        z = None if depth is None else 1.0 / (geo(depth) + 1e-3)  # batch polarity (larger = nearer) -> z-buffer
        motion = self.motion if self.motion != "mixed" else ("flow" if rng.random() < 0.5 else "piecewise_affine")
        if motion == "flow":
            coarse, valid = forward_splat(src, flow, mode=self.splat, depth=z)
            extra: dict[str, Any] = {}
        else:
            labels, seg_from = None, "flow"
            for kind in ("instances", "masks"):
                labels = self._sidecar(kind, entry, idx[0], native, required=False)
                if labels is not None:
                    labels, seg_from = geo(labels.astype(np.int32), mask=True), kind
                    break
            if labels is None:
                labels = segments_from_flow(flow, self.segments, seed=int(rng.integers(2**31)))
            coarse, valid, mats = piecewise_affine_warp(src, flow, labels, depth=z, rng=rng)
            extra = {"segments": seg_from, "transforms": {int(k): v.round(4).tolist() for k, v in mats.items()}}
        mask = changed_region(flow, valid, motion_px=self.motion_px, dilate_px=self.mask_dilate)
        s = image_to_tensor(src)
        return {"source": s, "reference": s.clone(), "coarse": image_to_tensor(coarse),
                "valid": mask_to_tensor(valid), "target": image_to_tensor(tgt), "mask": mask_to_tensor(mask),
                "caption": entry.caption or "",
                "meta": {**self._base_meta(entry, index), "times": [t0, t1], "frames": [idx[0], idx[-1]],
                         "gap": abs(t1 - t0), "motion": motion, "flow": "sidecar" if exact else "estimated",
                         "valid_fraction": float(valid.mean()), "rejected": len(reasons), **extra}}


class VideoClips(_VideoDataset):
    """MagDiff clips: ``video`` (F, 3, H, W) of ``num_frames`` frames every ``1 / clip_fps`` s (native rate
    when None), ``subject`` = the first frame cut out by its subject mask on black (cropped to the mask's
    box, padded square, ``subject_size`` px), ``subject_inplace`` = the same cut-out left in place (the whole
    first frame, black but for the subject), ``caption`` from the sidecar ("" when absent). The subject
    mask sidecar is required; ``subject_id`` picks one instance of an id map (default: every non-zero)."""

    def __init__(self, root: str | os.PathLike, size: int = 256, *, num_frames: int = 8,
                 clip_fps: float | None = None, subject_size: int = 224, subject_id: int | None = None,
                 subject_margin: float = 0.05, require_caption: bool = False, **kw: Any) -> None:
        super().__init__(root, size, **kw)
        self.num_frames, self.clip_fps, self.subject_size = int(num_frames), clip_fps, int(subject_size)
        self.subject_id, self.subject_margin, self.require_caption = subject_id, float(subject_margin), require_caption

    def load(self, index: int) -> dict[str, Any]:
        entry = self.entry(index)
        if self.require_caption and not entry.caption:
            raise AnnotationError(entry.path, "no caption in the captions sidecar")
        rng = self.rng(index)
        reader, info = self._open(entry)
        native = (info["height"], info["width"])
        step = 1.0 / (self.clip_fps or info["fps"])
        span = (self.num_frames - 1) * step
        last = (info["num_frames"] - 1) / info["fps"]
        if last + 1e-6 < span:
            raise VideoTooShortError(entry.path, f"{last:.2f}s < {span:.2f}s needed for {self.num_frames} "
                                                 f"frames at {1 / step:g} fps")
        t0 = float(rng.uniform(0, last - span)) if last > span else 0.0
        # snap to the native frame grid so the mask sidecar of the first frame exists
        t0 = round(t0 * info["fps"]) / info["fps"]
        geo = _Geometry(native, self.size, self.fit, rng)
        raw, idx = reader.read([t0 + k * step for k in range(self.num_frames)], **geo.kw)
        frames = np.stack([geo(f) for f in raw])
        labels = self._sidecar("masks", entry, idx[0], native, required=True)
        subj = labels > 0 if self.subject_id is None else labels == self.subject_id
        subj = geo(subj.astype(np.uint8), mask=True) > 0
        box = mask_to_box(subj)
        if box is None:
            raise AnnotationError(self.folder.sidecar("masks", entry, idx[0]), "empty subject mask")
        cut = frames[0] * subj[..., None]
        m = self.subject_margin * max(box[2] - box[0], box[3] - box[1])
        side = int(np.ceil(max(box[2] - box[0], box[3] - box[1]) + 2 * m))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        subject = cv2.resize(crop(cut, (x0, y0, x0 + side, y0 + side))[0], (self.subject_size,) * 2,
                             interpolation=cv2.INTER_AREA)
        return {"video": video_to_tensor(frames), "subject": image_to_tensor(subject),
                "subject_inplace": image_to_tensor(cut),
                "caption": entry.caption or "",
                "meta": {**self._base_meta(entry, index), "frames": idx, "subject_box": box.tolist(),
                         "has_caption": bool(entry.caption)}}
