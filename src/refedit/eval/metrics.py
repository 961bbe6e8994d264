"""Per-sample image metrics, set-level distribution scores, timing and confidence intervals.

Conventions (the project's batch schema): images are float (N, 3, H, W) in [-1, 1]; masks are (N, 1, H, W)
in {0, 1} with **1 = the edited region**. Pixel metrics map images to [0, 1] first (data range 1).

Every per-sample metric returns a tensor (N,) so the report can give mean ± 95% CI over samples; a sample
whose region is empty (empty mask for a masked metric, full mask for `psnr_unmasked`) gets NaN, which
`mean_ci95` skips.

PSNR of identical regions is infinite; all PSNRs here are capped at ``PSNR_CAP_DB`` = 100 dB (MSE 1e-10)
so that means and CIs stay finite. A capped value therefore means "identical up to float noise".
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid
from torchmetrics.image.kid import KernelInceptionDistance

FeatureFn = Callable[[torch.Tensor], torch.Tensor]

PSNR_CAP_DB = 100.0
BBOX_SIZE = 64


# ------------------------------------------------------------------------------------------------ helpers
def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def _check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                *, name: str) -> None:
    if pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"{name}: pred must be (N, 3, H, W), got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is not None:
        want = (pred.shape[0], 1, *pred.shape[-2:])
        if tuple(mask.shape) != want:
            raise ValueError(f"{name}: mask must be {want} (N, 1, H, W) like the images, got "
                             f"{tuple(mask.shape)}")


def _cap(psnr: torch.Tensor) -> torch.Tensor:
    return psnr.clamp(max=PSNR_CAP_DB)  # +inf (identical) -> cap; NaN (empty region) stays NaN


def _weighted_psnr(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PSNR (data range 1) over the pixels where weight = 1; NaN where the region is empty."""
    err = (_to01(pred) - _to01(target)).square() * weight
    count = weight.sum(dim=(1, 2, 3)) * pred.shape[1]
    mse = err.sum(dim=(1, 2, 3)) / count  # 0/0 -> NaN for empty regions
    return _cap(10 * torch.log10(1.0 / mse.double())).float()


# ----------------------------------------------------------------------------------------------- PSNR/SSIM
def psnr_masked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR inside the edit region (how well the edit matches the ground truth), (N,) dB, capped."""
    _check_pair(pred, target, mask, name="psnr_masked")
    return _weighted_psnr(pred, target, (mask > 0.5).float())


def psnr_unmasked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR outside the edit region (background preservation), (N,) dB, capped at PSNR_CAP_DB."""
    _check_pair(pred, target, mask, name="psnr_unmasked")
    return _weighted_psnr(pred, target, (mask <= 0.5).float())


def ssim_masked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of torchmetrics' full SSIM map (Gaussian 11 px window, reflect-padded, averaged over channels)
    inside the mask. The window still sees up to 5 px of context outside the mask."""
    _check_pair(pred, target, mask, name="ssim_masked")
    if min(pred.shape[-2:]) < 6:
        raise ValueError(f"ssim_masked: images must be at least 6 px (SSIM window), got {tuple(pred.shape)}")
    _, full = structural_similarity_index_measure(_to01(pred), _to01(target), data_range=1.0,
                                                  reduction="none", return_full_image=True)
    w = (mask > 0.5).float()
    return (full.mean(1, keepdim=True) * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))


def mask_bbox(mask: torch.Tensor) -> torch.Tensor:
    """Tight boxes (N, 4) long [x0, y0, x1, y1) (exclusive ends) of the masks; all zeros for an empty mask."""
    m = mask[:, 0] > 0.5 if mask.dim() == 4 else mask > 0.5
    rows, cols = m.any(-1), m.any(-2)  # (N, H), (N, W)
    H, W = m.shape[-2:]
    ar_h = torch.arange(H, device=m.device)
    ar_w = torch.arange(W, device=m.device)
    big = torch.iinfo(torch.long).max
    y0 = torch.where(rows, ar_h, big).amin(-1)
    y1 = torch.where(rows, ar_h, -1).amax(-1) + 1
    x0 = torch.where(cols, ar_w, big).amin(-1)
    x1 = torch.where(cols, ar_w, -1).amax(-1) + 1
    box = torch.stack([x0, y0, x1, y1], -1)
    return torch.where(m.flatten(1).any(-1, keepdim=True), box, torch.zeros_like(box))


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int | None, *, square: bool = False,
               fill: float = -1.0) -> list[torch.Tensor] | torch.Tensor:
    """Crop each image to its box. `square=True` grows the box's short side about its centre (pixels
    outside the image are `fill`, black by default) so resizing keeps the aspect ratio. With `size`, crops
    are resized (bilinear, antialiased) to size x size and stacked; without, a list of native crops."""
    out = []
    H, W = images.shape[-2:]
    for img, (x0, y0, x1, y1) in zip(images, boxes.tolist()):
        if x1 <= x0 or y1 <= y0:
            raise ValueError("crop_boxes: empty box (empty mask); filter those samples first")
        if square:
            side = max(x1 - x0, y1 - y0)
            x0, y0 = x0 - (side - (x1 - x0)) // 2, y0 - (side - (y1 - y0)) // 2
            x1, y1 = x0 + side, y0 + side
            pad = (max(0, -x0), max(0, x1 - W), max(0, -y0), max(0, y1 - H))
            if any(pad):
                img = F.pad(img, pad, value=fill)
                x0, x1, y0, y1 = x0 + pad[0], x1 + pad[0], y0 + pad[2], y1 + pad[2]
        out.append(img[:, y0:y1, x0:x1])
    if size is None:
        return out
    return torch.cat([F.interpolate(c[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=c.shape[-1] > size or c.shape[-2] > size) for c in out])


def _bbox_pairs(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, size: int | None
                ) -> tuple[torch.Tensor, list | torch.Tensor, list | torch.Tensor]:
    boxes = mask_bbox(mask)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    idx = valid.nonzero()[:, 0]
    return valid, crop_boxes(pred[idx], boxes[idx], size), crop_boxes(target[idx], boxes[idx], size)


def psnr_bbox(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, size: int | None = None
              ) -> torch.Tensor:
    """PSNR on the crop to the mask's bounding box (MimicBrush's protocol). `size=None` (default) scores the
    native crop exactly; an int resizes both crops to size x size first. (N,) dB, capped; NaN if no mask."""
    _check_pair(pred, target, mask, name="psnr_bbox")
    valid, p, t = _bbox_pairs(pred, target, mask, size)
    out = torch.full((pred.shape[0],), float("nan"), device=pred.device)
    vals = [peak_signal_noise_ratio(_to01(a)[None], _to01(b)[None], data_range=1.0) for a, b in zip(p, t)]
    if vals:
        out[valid] = _cap(torch.stack(vals).float())
    return out


def ssim_bbox(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, size: int = BBOX_SIZE
              ) -> torch.Tensor:
    """SSIM on the crop to the mask's bounding box (MimicBrush's protocol), both crops resized to size x
    size (default 64) so that boxes smaller than the 11 px SSIM window still score. (N,); NaN if no mask."""
    _check_pair(pred, target, mask, name="ssim_bbox")
    valid, p, t = _bbox_pairs(pred, target, mask, size)
    out = torch.full((pred.shape[0],), float("nan"), device=pred.device)
    if valid.any():
        out[valid] = structural_similarity_index_measure(_to01(p), _to01(t), data_range=1.0, reduction="none")
    return out


# ------------------------------------------------------------------------------------------------ identity
def region_crops(images: torch.Tensor, mask: torch.Tensor | None, size: int = BBOX_SIZE, *,
                 remove_background: bool = True) -> torch.Tensor:
    """The object region as the identity metrics see it: pixels outside the mask set to black (-1) when
    `remove_background`, cropped to the mask's box grown to a square (black padding), resized to size.
    mask=None: the whole image (padded to a square). Empty masks fall back to the whole image."""
    if mask is None:
        mask = torch.ones_like(images[:, :1])
    elif tuple(mask.shape) != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(f"region_crops: mask {tuple(mask.shape)} does not match images "
                         f"{tuple(images.shape)}")
    m = (mask > 0.5).float()
    empty = m.flatten(1).sum(1) == 0
    m = torch.where(empty[:, None, None, None], torch.ones_like(m), m)
    x = torch.where(m > 0, images.float(), torch.full_like(images.float(), -1.0)) if remove_background \
        else images.float()
    return crop_boxes(x, mask_bbox(m), size, square=True)


@torch.no_grad()
def identity_score(pred: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
                   reference_mask: torch.Tensor | None, feature_fn: FeatureFn, *, size: int = BBOX_SIZE,
                   remove_background: bool = True) -> torch.Tensor:
    """Cosine (N,) between features of the generated region and of the reference region.

    Generated region: `pred` cropped to the box of `mask` (background outside the mask set to black).
    Reference region: `reference` cropped to the box of `reference_mask` (background removed), or the
    whole reference when reference_mask is None. Both are padded to squares and resized to `size`
    before `feature_fn` (images in [-1, 1] -> (N, D)); extractors resize further to their own input size.
    This is MimicBrush's DINO-I / CLIP-I protocol; Paint-by-Example's "CLIP score" is
    100 x identity_score(..., reference_mask=None, remove_background=False) with CLIP ViT-B/32 features.
    """
    if pred.shape[0] != reference.shape[0]:
        raise ValueError(f"identity_score: {pred.shape[0]} predictions but {reference.shape[0]} references")
    a = feature_fn(region_crops(pred, mask, size, remove_background=remove_background))
    b = feature_fn(region_crops(reference, reference_mask, size, remove_background=remove_background))
    return F.cosine_similarity(a.float(), b.float().to(a.device), dim=-1)


# ----------------------------------------------------------------------------------- distribution scores
class _FeatureModule(torch.nn.Module):
    """Adapts a feature_fn on [-1, 1] images to torchmetrics' custom-extractor contract: inputs arrive as
    float [0, 1] (normalize=True; torchmetrics passes them through untouched for a custom model), and
    `num_features` spares torchmetrics a dummy 299 px forward."""

    def __init__(self, feature_fn: FeatureFn, num_features: int):
        super().__init__()
        self.fn = feature_fn  # registered as a submodule when it is one, so .to(device) moves it
        self.num_features = int(num_features)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(x01 * 2 - 1)


def _num_features(feature_fn: FeatureFn, dim: int | None) -> int:
    d = dim if dim is not None else getattr(feature_fn, "dim", None)
    if d is None:
        raise ValueError("pass dim= (feature size) for a feature_fn without a `dim` attribute")
    return int(d)


class FrechetDistance(FrechetInceptionDistance):
    """FID in any feature space (toyworld probe, CLIP as in Paint-by-Example's CLIP-FID, DINO, Inception).

    `update(images, real)` takes images in [-1, 1] (the project convention) and feeds torchmetrics [0, 1]
    floats with normalize=True; `update_features(feats, real)` feeds features computed elsewhere.
    With a small benchmark (tens of samples, fewer than the feature size) the covariances are rank
    deficient and the score is noisy and biased upwards: compare methods on the same samples only.
    """

    def __init__(self, feature_fn: FeatureFn, dim: int | None = None, **kwargs: Any):
        super().__init__(feature=_FeatureModule(feature_fn, _num_features(feature_fn, dim)), normalize=True,
                         **kwargs)

    def update(self, imgs: torch.Tensor, real: bool) -> None:  # type: ignore[override]
        super().update(_to01(imgs), real)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        self._computed, self._update_count = None, self._update_count + 1  # as torchmetrics' update wrapper
        f = features.detach().double().reshape(features.shape[0], -1)
        if f.shape[1] != self.real_features_sum.shape[0]:
            raise ValueError(f"features have {f.shape[1]} dims, the metric expects "
                             f"{self.real_features_sum.shape[0]}")
        self.orig_dtype = torch.float32
        if real:
            self.real_features_sum += f.sum(0)
            self.real_features_cov_sum += f.t().mm(f)
            self.real_features_num_samples += f.shape[0]
        else:
            self.fake_features_sum += f.sum(0)
            self.fake_features_cov_sum += f.t().mm(f)
            self.fake_features_num_samples += f.shape[0]


class KernelDistance(KernelInceptionDistance):
    """KID (polynomial-kernel MMD) in any feature space; returns (mean, std) over subsets like torchmetrics.

    `subset_size` adapts to small benchmarks: min(subset_size, n_real, n_fake) at compute time (with n
    samples every subset is then the whole set and std is 0). Subsets are drawn from a fixed `seed`, so a
    score is reproducible. Small-sample KID is unbiased but noisy: report it with its n.
    """

    def __init__(self, feature_fn: FeatureFn, dim: int | None = None, subsets: int = 100,
                 subset_size: int = 1000, seed: int | None = 0, **kwargs: Any):
        with warnings.catch_warnings():  # torchmetrics warns that KID buffers all features: known, intended
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(feature=_FeatureModule(feature_fn, _num_features(feature_fn, dim)),
                             subsets=subsets, subset_size=subset_size, normalize=True, **kwargs)
        self.requested_subset_size = subset_size
        self.seed = seed

    def update(self, imgs: torch.Tensor, real: bool) -> None:  # type: ignore[override]
        super().update(_to01(imgs), real)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        self._computed, self._update_count = None, self._update_count + 1  # as torchmetrics' update wrapper
        (self.real_features if real else self.fake_features).append(features.detach().float())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_real = sum(f.shape[0] for f in self.real_features) if isinstance(self.real_features, list) \
            else self.real_features.shape[0]
        n_fake = sum(f.shape[0] for f in self.fake_features) if isinstance(self.fake_features, list) \
            else self.fake_features.shape[0]
        n = min(n_real, n_fake)
        if n < 2:
            raise RuntimeError(f"KernelDistance needs >= 2 real and fake samples, got {n_real} real, "
                               f"{n_fake} fake")
        self.subset_size = min(self.requested_subset_size, n)
        if self.seed is None:
            return super().compute()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return super().compute()


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (torchmetrics' FID formula)."""
    a, b = real_features.double().flatten(1), fake_features.double().flatten(1)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"frechet_distance needs >= 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return _compute_fid(a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1), b.mean(0),
                        torch.cov(b.T).reshape(b.shape[1], -1)).float()


@torch.no_grad()
def clip_features(clips: torch.Tensor, feature_fn: FeatureFn) -> torch.Tensor:
    """Per-clip features (N, 2D) for FVD-style scores: [mean frame feature, mean |frame-to-frame feature
    change|]. The absolute change is used because the signed mean telescopes to (f_last - f_first)/(F-1)
    and would not see flicker. One-frame clips get a zero temporal part."""
    if clips.dim() != 5 or clips.shape[2] != 3:
        raise ValueError(f"clips must be (N, F, 3, H, W), got {tuple(clips.shape)}")
    n, f = clips.shape[:2]
    feats = feature_fn(clips.flatten(0, 1)).float().reshape(n, f, -1)
    motion = (feats[:, 1:] - feats[:, :-1]).abs().mean(1) if f > 1 else torch.zeros_like(feats[:, 0])
    return torch.cat([feats.mean(1), motion], -1)


def frechet_video_distance(real_clips: torch.Tensor, fake_clips: torch.Tensor, feature_fn: FeatureFn
                           ) -> torch.Tensor:
    """FVD-style score: the Fréchet distance of `clip_features` (per-frame features of `feature_fn`, their
    mean and mean absolute temporal change). This is *not* I3D FVD (no I3D weights offline); values are
    comparable only within one feature space and one benchmark."""
    return frechet_distance(clip_features(real_clips, feature_fn), clip_features(fake_clips, feature_fn))


# --------------------------------------------------------------------------------------- time and memory
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


class Timer:
    """Wall time and peak memory of a block of work, per sample.

    Time: `time.perf_counter`, with CUDA synchronised at entry and exit. Memory, `peak_mem_mb`:
    - CUDA: `torch.cuda.max_memory_allocated` (stats reset at entry) — tensors only, weights included;
    - CPU: the process's peak resident set size during the block, from /proc/self/statm sampled every
      `interval` s by a thread (short spikes can be missed), or where /proc is absent the growth of
      getrusage's lifetime maximum. It includes everything the process holds (Python, libraries, all
      loaded models), so compare CPU numbers within one process only; `mem_delta_mb` is the peak
      minus the value at entry (what the block itself added).
    """

    def __init__(self, n: int = 1, device: torch.device | str | None = None, interval: float = 0.005):
        if n < 1:
            raise ValueError(f"Timer: n (samples) must be >= 1, got {n}")
        self.n = n
        self.device = torch.device(device) if device is not None else None
        self.interval = interval
        self.seconds = math.nan
        self.peak_mem_mb = math.nan
        self.mem_delta_mb = math.nan

    @property
    def cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / self.n

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            r = _rss_bytes()
            if r is not None:
                self._peak = max(self._peak, r)

    def __enter__(self) -> Timer:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            rss = _rss_bytes()
            self._proc = rss is not None
            self._base = rss if self._proc else _maxrss_bytes()
            self._peak = self._base
            if self._proc:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._proc:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes() or 0)
        else:
            peak = max(_maxrss_bytes(), self._base)
        self.peak_mem_mb = peak / 2**20
        self.mem_delta_mb = (peak - self._base) / 2**20

    def as_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds_per_sample, "peak_mem_mb": self.peak_mem_mb,
                "mem_delta_mb": self.mem_delta_mb}


def measure(fn: Callable[..., Any], *args: Any, n: int = 1, device: torch.device | str | None = None,
            **kwargs: Any) -> tuple[Any, dict[str, float]]:
    """Run fn(*args, **kwargs) once under a `Timer` for n samples: (result, {seconds (per sample),
    peak_mem_mb, mem_delta_mb})."""
    with Timer(n=n, device=device) as t:
        out = fn(*args, **kwargs)
    return out, t.as_dict()


# ------------------------------------------------------------------------------------------------- stats
def mean_ci95(values: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(mean, half width of the 95% t-interval) over the finite values (NaN / inf are skipped, e.g. empty
    masks). One value -> (value, nan); none -> (nan, nan)."""
    from scipy.stats import t as student_t

    v = values.detach().double().cpu().numpy() if isinstance(values, torch.Tensor) else \
        np.asarray(values, dtype=np.float64)
    v = v.reshape(-1)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    if n == 1:
        return mean, math.nan
    return mean, float(student_t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
