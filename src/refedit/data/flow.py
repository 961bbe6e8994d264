"""Optical flow for the video pipelines: OpenCV DIS (no weights) by default, any learned model pluggable.

Flow convention everywhere: ``flow[y, x] = (u, v)`` moves pixel ``(x, y)`` of the first frame to
``(x + u, y + v)`` in the second (forward flow, pixel-index coordinates), float32 (H, W, 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@runtime_checkable
class FlowEstimator(Protocol):
    """Forward flow between two RGB uint8 frames of the same size -> float32 (H, W, 2)."""

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray: ...


class DISFlow:
    """OpenCV's Dense Inverse Search flow on grey frames. The OpenCV object is created lazily per process
    (it is not picklable), so the estimator can live in a dataset sent to DataLoader workers."""

    def __init__(self, preset: str = "medium", *, finest_scale: int | None = None,
                 patch_size: int | None = None, patch_stride: int | None = None,
                 gradient_descent_iterations: int | None = None, variational_refinement_iterations: int | None = None,
                 use_spatial_propagation: bool | None = None) -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(DIS_PRESETS)}")
        self.preset = preset
        self.overrides = {
            "FinestScale": finest_scale, "PatchSize": patch_size, "PatchStride": patch_stride,
            "GradientDescentIterations": gradient_descent_iterations,
            "VariationalRefinementIterations": variational_refinement_iterations,
            "UseSpatialPropagation": use_spatial_propagation,
        }
        self._dis: Any = None
        self._pid: int | None = None

    def _get(self) -> Any:
        if self._dis is None or self._pid != os.getpid():
            dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])
            for name, val in self.overrides.items():
                if val is not None:
                    getattr(dis, f"set{name}")(val)
            self._dis, self._pid = dis, os.getpid()
        return self._dis

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dis": None, "_pid": None}

    def __call__(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        if frame0.shape != frame1.shape:
            raise ValueError(f"frames differ in shape: {frame0.shape} vs {frame1.shape}")
        g0, g1 = (_grey(f) for f in (frame0, frame1))
        return self._get().calc(g0, g1, None).astype(np.float32)


def _grey(frame: np.ndarray) -> np.ndarray:
    f = np.ascontiguousarray(frame)
    if f.dtype != np.uint8:
        f = np.clip(f, 0, 255).astype(np.uint8)
    return cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f


class TorchFlow:
    """Adapter for a learned flow network (e.g. RAFT) given as an ``nn.Module`` and local weights.

    ``model(img0, img1)`` must take two (1, 3, H, W) float tensors and return (1, 2, H, W) flow (or a list
    whose last entry is that, as RAFT does). Inputs are scaled to ``input_range`` and padded to a multiple
    of ``pad_to``. Nothing is downloaded: ``weights`` is a local state-dict path.
    """

    def __init__(self, model: torch.nn.Module | Callable[[], torch.nn.Module], weights: str | os.PathLike | None = None,
                 *, device: str = "cpu", input_range: tuple[float, float] = (0.0, 255.0), pad_to: int = 8,
                 state_dict_key: str | None = None) -> None:
        net = model if isinstance(model, torch.nn.Module) else model()
        if weights is not None:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"flow weights not found: {weights}")
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            if state_dict_key:
                sd = sd[state_dict_key]
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
            net.load_state_dict(sd)
        self.net = net.eval().to(device)
        self.device, self.input_range, self.pad_to = device, input_range, int(pad_to)

    @torch.no_grad()
    def __call__(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        lo, hi = self.input_range
        h, w = frame0.shape[:2]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to

        def prep(f: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float().to(self.device)
            t = t / 255.0 * (hi - lo) + lo
            return torch.nn.functional.pad(t, (0, pw, 0, ph), mode="replicate")

        out = self.net(prep(frame0), prep(frame1))
        if isinstance(out, (list, tuple)):
            out = out[-1]
        return out[0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy()


def build_flow_estimator(name: str = "dis", **kwargs: Any) -> FlowEstimator:
    """``dis`` (default, no weights) or ``torch`` (``model=..., weights=...``)."""
    if name == "dis":
        return DISFlow(**kwargs)
    if name == "torch":
        return TorchFlow(**kwargs)
    raise ValueError(f"unknown flow estimator {name!r}; use 'dis' or 'torch' (learned model with local weights)")


def pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs, ys


def sample_flow(flow: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``flow`` at float positions (border-replicated)."""
    return cv2.remap(flow, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def compose_flows(f01: np.ndarray, f12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f02(x) = f01(x) + f12(x + f01(x))``; the mask is False where ``x + f01(x)`` leaves the frame."""
    h, w = f01.shape[:2]
    xs, ys = pixel_grid(h, w)
    x1, y1 = xs + f01[..., 0], ys + f01[..., 1]
    inside = (x1 >= 0) & (x1 <= w - 1) & (y1 >= 0) & (y1 <= h - 1)
    return f01 + sample_flow(f12, x1, y1), inside


def chain_flow(frames: Sequence[np.ndarray], estimator: FlowEstimator) -> tuple[np.ndarray, np.ndarray]:
    """Flow from ``frames[0]`` to ``frames[-1]`` composed over consecutive pairs (large gaps need hops)."""
    if len(frames) < 2:
        raise ValueError("chain_flow needs at least two frames")
    flow = estimator(frames[0], frames[1])
    valid = np.ones(flow.shape[:2], dtype=bool)
    for a, b in zip(frames[1:-1], frames[2:]):
        flow, inside = compose_flows(flow, estimator(a, b))
        valid &= inside
    return flow, valid


def flow_magnitude(flow: np.ndarray) -> np.ndarray:
    return np.sqrt((flow.astype(np.float32) ** 2).sum(-1))


def endpoint_error(flow: np.ndarray, flow_gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel end-point error, restricted to ``mask`` (1-D array) when given."""
    epe = flow_magnitude(flow - flow_gt)
    return epe[mask.astype(bool)] if mask is not None else epe.ravel()
