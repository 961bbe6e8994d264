"""Geometric helpers that move boxes and masks together with their image, plus simple edit masks.

Conventions: images are numpy (H, W, C) or (H, W); boxes are float arrays (N, 4) ``x0, y0, x1, y1``
in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``, so a COCO box ``x, y, w, h`` is
``x, y, x + w, y + h``); masks are bool (H, W) and are always resampled with nearest neighbour so
they stay binary. Every helper returns ``(image, boxes, masks)`` with ``None`` passed through.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Boxes = np.ndarray
Masks = Sequence[np.ndarray] | None


def _interp(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    shrink = dst_hw[0] < src_hw[0] or dst_hw[1] < src_hw[1]
    return cv2.INTER_AREA if shrink else cv2.INTER_LINEAR


def _resize_arr(a: np.ndarray, hw: tuple[int, int], interp: int) -> np.ndarray:
    if a.shape[:2] == tuple(hw):
        return a
    out = cv2.resize(a, (int(hw[1]), int(hw[0])), interpolation=interp)
    return out[..., None] if a.ndim == 3 and out.ndim == 2 else out


def _resize_mask(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if m.shape[:2] == tuple(hw):
        return m
    return cv2.resize(m.astype(np.uint8), (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_NEAREST) > 0


def as_boxes(boxes: np.ndarray | Sequence[Sequence[float]] | None) -> Boxes | None:
    if boxes is None:
        return None
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return b


def boxes_inside(boxes: Boxes, hw: tuple[int, int], tol: float = 1.0) -> np.ndarray:
    """Per box: non-empty and inside the image up to ``tol`` px (annotation rounding)."""
    b = as_boxes(boxes)
    return (
        (b[:, 0] >= -tol) & (b[:, 1] >= -tol) & (b[:, 2] <= hw[1] + tol) & (b[:, 3] <= hw[0] + tol)
        & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    )


def box_to_mask(box: Sequence[float], hw: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the box."""
    x0, y0, x1, y1 = box
    m = np.zeros(hw, dtype=bool)
    m[max(int(round(y0)), 0): max(int(round(y1)), 0), max(int(round(x0)), 0): max(int(round(x1)), 0)] = True
    return m


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def resize(
    image: np.ndarray, hw: tuple[int, int], *, boxes: Boxes | None = None, masks: Masks = None,
    interpolation: int | None = None,
) -> tuple[np.ndarray, Boxes | None, list[np.ndarray] | None]:
    hw = (int(hw[0]), int(hw[1]))
    h, w = image.shape[:2]
    interp = _interp((h, w), hw) if interpolation is None else interpolation
    out = _resize_arr(image, hw, interp)
    if boxes is not None:
        boxes = as_boxes(boxes) * np.array([hw[1] / w, hw[0] / h] * 2, dtype=np.float32)
    ms = None if masks is None else [_resize_mask(m, hw) for m in masks]
    return out, boxes, ms


def crop(
    image: np.ndarray, window: Sequence[int], *, boxes: Boxes | None = None, masks: Masks = None,
    fill: int | float = 0,
) -> tuple[np.ndarray, Boxes | None, list[np.ndarray] | None]:
    """Crop ``window = (x0, y0, x1, y1)`` (ints); parts outside the image are padded with ``fill``."""
    x0, y0, x1, y1 = (int(v) for v in window)
    h, w = image.shape[:2]
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop window {window}")
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))

    def _cut(a: np.ndarray, value: float | int) -> np.ndarray:
        c = a[max(y0, 0): min(y1, h), max(x0, 0): min(x1, w)]
        if any(pad):
            if c.size == 0:
                shape = (y1 - y0, x1 - x0) + a.shape[2:]
                return np.full(shape, value, dtype=a.dtype)
            widths = ((pad[0], pad[1]), (pad[2], pad[3])) + ((0, 0),) * (a.ndim - 2)
            c = np.pad(c, widths, mode="constant", constant_values=value)
        return c

    out = _cut(image, fill)
    if boxes is not None:
        boxes = as_boxes(boxes) - np.array([x0, y0, x0, y0], dtype=np.float32)
    ms = None if masks is None else [_cut(m.astype(np.uint8), 0) > 0 for m in masks]
    return out, boxes, ms


def crop_resize(
    image: np.ndarray, window: Sequence[int], hw: tuple[int, int], *, boxes: Boxes | None = None,
    masks: Masks = None, fill: int | float = 0,
) -> tuple[np.ndarray, Boxes | None, list[np.ndarray] | None]:
    img, boxes, masks = crop(image, window, boxes=boxes, masks=masks, fill=fill)
    return resize(img, hw, boxes=boxes, masks=masks)


def square_pad(
    image: np.ndarray, *, boxes: Boxes | None = None, masks: Masks = None, fill: int | float = 0,
    center: bool = True,
) -> tuple[np.ndarray, Boxes | None, list[np.ndarray] | None, tuple[int, int]]:
    """Pad to a square (centred by default); also returns the ``(top, left)`` offset to undo it."""
    h, w = image.shape[:2]
    s = max(h, w)
    top = (s - h) // 2 if center else 0
    left = (s - w) // 2 if center else 0
    img, boxes, masks = crop(image, (-left, -top, s - left, s - top), boxes=boxes, masks=masks, fill=fill)
    return img, boxes, masks, (top, left)


def _axis_start(lo: int, hi: int, side: int, size: int, rng: np.random.Generator) -> int:
    """Start of a ``side``-long window containing ``[lo, hi)``, inside ``[0, size)`` when possible."""
    a, b = hi - side, lo  # window must satisfy a <= start <= b
    ia, ib = max(a, 0), min(b, size - side)
    if ia <= ib:
        return int(rng.integers(ia, ib + 1))
    ia, ib = max(a, size - side), min(b, 0)  # window larger than the image: cover it fully
    if ia <= ib:
        return int(rng.integers(ia, ib + 1))
    return int(rng.integers(min(a, b), max(a, b) + 1))


def random_square_window(
    hw: tuple[int, int], rng: np.random.Generator, *, contain: Sequence[float] | None = None,
    min_frac: float = 1.0,
) -> tuple[int, int, int, int]:
    """A random square window containing box ``contain``; side ``U[min_frac, 1] x`` the shorter image side,
    enlarged (and padded by :func:`crop`) when the box does not fit in the image."""
    h, w = int(hw[0]), int(hw[1])
    short = min(h, w)
    side = int(round(rng.uniform(min_frac, 1.0) * short)) if min_frac < 1.0 else short
    if contain is None:
        side = max(side, 1)
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        return x0, y0, x0 + side, y0 + side
    bx0, by0, bx1, by1 = contain
    lo_x, hi_x = int(np.floor(bx0)), int(np.ceil(bx1))
    lo_y, hi_y = int(np.floor(by0)), int(np.ceil(by1))
    side = max(side, hi_x - lo_x, hi_y - lo_y, 1)
    x0 = _axis_start(lo_x, hi_x, side, w, rng)
    y0 = _axis_start(lo_y, hi_y, side, h, rng)
    return x0, y0, x0 + side, y0 + side


def random_square_crop(
    image: np.ndarray, size: int, rng: np.random.Generator, *, contain: Sequence[float] | None = None,
    boxes: Boxes | None = None, masks: Masks = None, min_frac: float = 1.0, fill: int | float = 0,
) -> tuple[np.ndarray, Boxes | None, list[np.ndarray] | None, tuple[int, int, int, int]]:
    """Random square crop (containing ``contain`` if given) resized to ``size``; returns the window too."""
    win = random_square_window(image.shape[:2], rng, contain=contain, min_frac=min_frac)
    img, boxes, masks = crop_resize(image, win, (size, size), boxes=boxes, masks=masks, fill=fill)
    return img, boxes, masks, win


def center_square_crop(image: np.ndarray, size: int, *, boxes: Boxes | None = None, masks: Masks = None):
    h, w = image.shape[:2]
    s = min(h, w)
    x0, y0 = (w - s) // 2, (h - s) // 2
    return crop_resize(image, (x0, y0, x0 + s, y0 + s), (size, size), boxes=boxes, masks=masks)


def fit_square(image: np.ndarray, size: int, mode: str, rng: np.random.Generator | None = None, **kw):
    """Bring any aspect ratio to ``size x size``: ``resize`` (stretch), ``pad``, ``center_crop`` or ``random_crop``."""
    if mode == "resize":
        return resize(image, (size, size), **kw)
    if mode == "pad":
        img, boxes, masks, _ = square_pad(image, **kw)
        return resize(img, (size, size), boxes=boxes, masks=masks)
    if mode == "center_crop":
        return center_square_crop(image, size, **kw)
    if mode == "random_crop":
        if rng is None:
            raise ValueError("fit_square(mode='random_crop') needs an rng")
        img, boxes, masks, _ = random_square_crop(image, size, rng, **kw)
        return img, boxes, masks
    raise ValueError(f"unknown fit mode {mode!r}; use resize, pad, center_crop or random_crop")


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask.astype(bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


# ------------------------------------------------------------------------------------ edit masks


def sift_matches(source_uint8: np.ndarray, reference_uint8: np.ndarray, ratio: float = 0.75,
                 max_keypoints: int = 0) -> np.ndarray:
    """(K, 2) x/y of the source keypoints with a SIFT match in the reference (BFMatcher + Lowe's ratio test):
    the cells MimicBrush's grid mask favours. RGB or grey uint8; `max_keypoints` > 0 keeps the strongest only."""
    sift = cv2.SIFT_create(nfeatures=int(max_keypoints))
    grey = (cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY) if a.ndim == 3 else a
            for a in (source_uint8, reference_uint8))
    (ka, da), (kb, db) = (sift.detectAndCompute(g, None) for g in grey)
    if da is None or db is None or len(ka) < 1 or len(kb) < 2:  # a ratio test needs two reference candidates
        return np.zeros((0, 2), np.float32)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    return np.array([ka[m.queryIdx].pt for m in good], dtype=np.float32).reshape(-1, 2)


def grid_mask(
    hw: tuple[int, int], rng: np.random.Generator, *, n_range: tuple[int, int] = (3, 10), p: float = 0.5,
    priority_points: np.ndarray | None = None, p_priority: float = 0.75, min_cells: int = 1,
) -> np.ndarray:
    """MimicBrush masking: an N x N grid, N ~ U{n_range}; cells holding a priority point (e.g. matched
    keypoints, (K, 2) x/y) are masked with ``p_priority``, the others with ``p``; at least ``min_cells``."""
    h, w = hw
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    probs = np.full((n, n), p, dtype=np.float64)
    if priority_points is not None and len(priority_points):
        pts = np.asarray(priority_points, dtype=np.float64)
        cx = np.clip((pts[:, 0] * n / w).astype(int), 0, n - 1)
        cy = np.clip((pts[:, 1] * n / h).astype(int), 0, n - 1)
        probs[cy, cx] = p_priority
    cells = rng.random((n, n)) < probs
    if cells.sum() < min_cells:
        flat = rng.choice(n * n, size=min(min_cells, n * n), replace=False)
        cells.flat[flat] = True
    ys = np.minimum((np.arange(h) * n) // h, n - 1)
    xs = np.minimum((np.arange(w) * n) // w, n - 1)
    return cells[ys[:, None], xs[None, :]]


def random_box_mask(
    hw: tuple[int, int], rng: np.random.Generator, *, scale: tuple[float, float] = (0.2, 0.6)
) -> np.ndarray:
    """One axis-aligned box whose sides are ``U[scale]`` x the image sides."""
    h, w = hw
    bh = max(1, int(round(rng.uniform(*scale) * h)))
    bw = max(1, int(round(rng.uniform(*scale) * w)))
    y0 = int(rng.integers(0, h - bh + 1))
    x0 = int(rng.integers(0, w - bw + 1))
    m = np.zeros(hw, dtype=bool)
    m[y0: y0 + bh, x0: x0 + bw] = True
    return m
