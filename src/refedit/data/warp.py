"""Warps that turn a source frame into Magic Fixup's coarse edit, with the mask of valid pixels.

Two motion models (the paper's): dense forward splatting by flow, and a piecewise-affine model in
which every segment moves by one similarity transform fitted to its flow, composited back to front.
All vectorised numpy/OpenCV; flows follow :mod:`refedit.data.flow` (forward, pixel-index coordinates).
"""

from __future__ import annotations

import cv2
import numpy as np

from refedit.data.flow import pixel_grid


def _as_float(image: np.ndarray) -> tuple[np.ndarray, np.dtype, bool]:
    squeeze = image.ndim == 2
    img = image[..., None] if squeeze else image
    return img.astype(np.float32), image.dtype, squeeze


def _restore(out: np.ndarray, dtype: np.dtype, squeeze: bool) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        out = np.clip(np.round(out), np.iinfo(dtype).min, np.iinfo(dtype).max)
    out = out.astype(dtype)
    return out[..., 0] if squeeze else out


def forward_splat(image: np.ndarray, flow: np.ndarray, *, mode: str = "nearest", depth: np.ndarray | None = None,
                  mask: np.ndarray | None = None, min_weight: float = 0.5, z_tol: float = 1e-3,
                  fill: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """Splat ``image`` forward along ``flow``; returns ``(warped, valid)`` where ``valid`` is False in holes.

    ``depth`` (smaller = nearer) resolves collisions with a z-buffer: only the nearest source pixels
    (within ``z_tol`` x depth) land on a target pixel; without depth colliding pixels are averaged.
    ``mode="bilinear"`` spreads each pixel over its four target neighbours (valid where the accumulated
    weight reaches ``min_weight``). ``mask`` limits which source pixels move (others are not splatted).
    """
    img, dtype, squeeze = _as_float(image)
    h, w, c = img.shape
    if flow.shape[:2] != (h, w):
        raise ValueError(f"flow {flow.shape[:2]} and image {(h, w)} differ in size")
    xs, ys = pixel_grid(h, w)
    tx, ty = (xs + flow[..., 0]).ravel(), (ys + flow[..., 1]).ravel()
    colors = img.reshape(-1, c)
    src_ok = np.isfinite(tx) & np.isfinite(ty)
    if mask is not None:
        src_ok &= mask.ravel().astype(bool)
    z = None if depth is None else depth.astype(np.float32).ravel()

    if mode == "nearest":
        ix, iy = np.floor(tx + 0.5).astype(np.int64), np.floor(ty + 0.5).astype(np.int64)
        cand = [(ix, iy, np.ones_like(tx))]
    elif mode == "bilinear":
        x0, y0 = np.floor(tx), np.floor(ty)
        fx, fy = tx - x0, ty - y0
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        cand = [(x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)]
    else:
        raise ValueError(f"splat mode must be 'nearest' or 'bilinear', got {mode!r}")

    tgt, src, wgt = [], [], []
    src_idx = np.arange(h * w)
    for cx, cy, cw in cand:
        ok = src_ok & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h) & (cw > 1e-6)
        tgt.append(cy[ok] * w + cx[ok])
        src.append(src_idx[ok])
        wgt.append(cw[ok].astype(np.float32))
    tgt_a, src_a, wgt_a = np.concatenate(tgt), np.concatenate(src), np.concatenate(wgt)

    if z is not None and len(tgt_a):
        # z-buffer: nearest depth per target pixel, keep contributions within tolerance of it
        zmin = np.full(h * w, np.inf, dtype=np.float32)
        np.minimum.at(zmin, tgt_a, z[src_a])
        keep = z[src_a] <= zmin[tgt_a] * (1 + z_tol) + 1e-6
        tgt_a, src_a, wgt_a = tgt_a[keep], src_a[keep], wgt_a[keep]

    wsum = np.bincount(tgt_a, weights=wgt_a, minlength=h * w).astype(np.float32)
    acc = np.stack([np.bincount(tgt_a, weights=wgt_a * colors[src_a, k], minlength=h * w) for k in range(c)], 1)
    thresh = min_weight if mode == "bilinear" else 0.5
    valid = wsum >= thresh
    out = np.full((h * w, c), fill, dtype=np.float32)
    out[valid] = acc[valid] / wsum[valid, None]
    return _restore(out.reshape(h, w, c), dtype, squeeze), valid.reshape(h, w)


def backward_warp(image: np.ndarray, flow: np.ndarray, *, interpolation: int = cv2.INTER_LINEAR,
                  fill: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """``out(x) = image(x + flow(x))`` (flow from the output frame into ``image``); valid = sampled inside."""
    h, w = flow.shape[:2]
    xs, ys = pixel_grid(h, w)
    mx, my = xs + flow[..., 0], ys + flow[..., 1]
    out = cv2.remap(image, mx.astype(np.float32), my.astype(np.float32), interpolation,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    valid = (mx >= -0.5) & (mx <= w - 0.5) & (my >= -0.5) & (my <= h - 0.5)
    return out, valid


def fit_similarity(src: np.ndarray, dst: np.ndarray, *, ransac_px: float = 3.0,
                   rng: np.random.Generator | None = None, max_points: int = 2000) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, translation) from point pairs; mean translation fallback."""
    if len(src) > max_points:
        idx = (rng or np.random.default_rng(0)).choice(len(src), max_points, replace=False)
        src, dst = src[idx], dst[idx]
    m = None
    if len(src) >= 3:
        m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC,
                                           ransacReprojThreshold=ransac_px)
    if m is None:
        t = (dst - src).mean(0) if len(src) else np.zeros(2)
        m = np.array([[1, 0, t[0]], [0, 1, t[1]]], dtype=np.float64)
    return m


def piecewise_affine_warp(image: np.ndarray, flow: np.ndarray, segments: np.ndarray, *,
                          depth: np.ndarray | None = None, order: list[int] | None = None, min_pixels: int = 16,
                          ransac_px: float = 3.0, rng: np.random.Generator | None = None,
                          fill: float = 0) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Move each segment (integer label map) by one similarity fitted to its flow; composite back to front.

    Back-to-front order: by decreasing mean ``depth`` of the segment when given, else ``order`` (labels
    farthest first), else by decreasing segment size (the largest segment, usually background, first).
    Returns ``(coarse, valid, {label: 2x3 matrix})``; ``valid`` is False where no segment lands.
    """
    h, w = segments.shape
    if flow.shape[:2] != (h, w) or image.shape[:2] != (h, w):
        raise ValueError("image, flow and segments must share their size")
    labels, counts = np.unique(segments, return_counts=True)
    if order is None:
        if depth is not None:
            mean_depth = {int(lab): float(depth[segments == lab].mean()) for lab in labels}
            order = sorted(mean_depth, key=lambda k: -mean_depth[k])
        else:
            order = [int(lab) for lab in labels[np.argsort(-counts, kind="stable")]]
    xs, ys = pixel_grid(h, w)
    out = np.full_like(image, fill)
    valid = np.zeros((h, w), dtype=bool)
    mats: dict[int, np.ndarray] = {}
    for lab in order:
        seg = segments == lab
        n = int(seg.sum())
        if n < min_pixels:
            continue
        src = np.stack([xs[seg], ys[seg]], 1)
        mats[lab] = m = fit_similarity(src, src + flow[seg], ransac_px=ransac_px, rng=rng)
        warped = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=fill)
        wmask = cv2.warpAffine(seg.astype(np.uint8) * 255, m, (w, h), flags=cv2.INTER_LINEAR) >= 128
        out[wmask] = warped[wmask]
        valid |= wmask
    return out, valid, mats


def segments_from_flow(flow: np.ndarray, k: int = 4, *, position_weight: float = 0.5, downsample: int = 4,
                       seed: int = 0) -> np.ndarray:
    """Label map from k-means on (flow, position) - a weight-free stand-in for SAM segments on real video.
    Centres are fitted on a ``downsample``-strided grid, then every pixel takes its nearest centre."""
    h, w = flow.shape[:2]
    scale = max(float(np.abs(flow).max()), 1.0)
    xs, ys = np.meshgrid(np.linspace(0, 1, w, dtype=np.float32), np.linspace(0, 1, h, dtype=np.float32))
    feats = np.concatenate([flow / scale, position_weight * np.stack([xs, ys], -1)], -1).astype(np.float32)
    sub = feats[::downsample, ::downsample].reshape(-1, 4)
    cv2.setRNGSeed(seed)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    k = max(1, min(k, len(sub)))
    _, _, centres = cv2.kmeans(sub, k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
    d = ((feats[:, :, None, :] - centres[None, None]) ** 2).sum(-1)
    return d.argmin(-1).astype(np.int32)
