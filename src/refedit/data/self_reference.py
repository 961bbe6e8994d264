"""Paint-by-Example self-reference pairs from any boxed source (COCO, OpenImages, toyworld scenes...).

For one box of an image: the reference is the box crop (padded by up to ``max_pad`` px) with
Paint-by-Example's augmentation at the authors' strength (:class:`~refedit.data.reference_augment.ReferenceAugment`:
resize to 224, hflip p=0.5, rotation +-20 deg p=0.5 with reflected borders, box blur p=0.3, albumentations 0.4.3's
elastic transform p=0.3; then resized to ``reference_size``), on parameters drawn from the sample's own numpy
generator, so a sample is reproducible from ``(seed, epoch, index)`` whatever the worker;
the edit mask is, with p=0.5, an irregular shape from four quadratic Bezier curves (one per box side,
endpoints at the box corners, middle control point on the extended box edge, ``bezier_points`` points
per curve jittered by 1-5 px) and otherwise the extended-box rectangle; then a random square crop
containing the extended box is resized to ``size``. ``source`` is the unmasked image: the method
applies the mask itself (1 = edit, project convention).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from refedit.data.errors import AnnotationError, RobustDataset
from refedit.data.io import image_to_tensor, mask_to_tensor
from refedit.data.reference_augment import ReferenceAugment
from refedit.data.transforms import crop_resize, random_square_window


def pad_box(box: np.ndarray, hw: tuple[int, int], rng: np.random.Generator, max_pad: int = 10) -> np.ndarray:
    """Integer box grown by ``U{0..max_pad}`` px per side, clipped to the image."""
    h, w = hw
    p = rng.integers(0, max_pad + 1, size=4) if max_pad > 0 else np.zeros(4, dtype=int)
    x0, y0 = max(int(np.floor(box[0])) - p[0], 0), max(int(np.floor(box[1])) - p[1], 0)
    x1, y1 = min(int(np.ceil(box[2])) + p[2], w), min(int(np.ceil(box[3])) + p[3], h)
    return np.array([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], dtype=np.int64)


def extend_box(box: np.ndarray, hw: tuple[int, int], rng: np.random.Generator, frac: float = 0.4) -> np.ndarray:
    """Each side grows by ``randint(0, frac x free space on that side)``."""
    h, w = hw
    x0, y0, x1, y1 = (float(v) for v in box)
    free = np.array([x0, y0, w - x1, h - y1]).clip(0, None)
    grow = np.array([rng.integers(0, int(frac * f) + 1) for f in free], dtype=np.float32)
    return np.array([x0 - grow[0], y0 - grow[1], x1 + grow[2], y1 + grow[3]], dtype=np.float32)


def bezier_curve(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2


def bezier_polygon(box: np.ndarray, ext: np.ndarray, rng: np.random.Generator, n_points: int = 20,
                   jitter: tuple[int, int] = (1, 5)) -> np.ndarray:
    """Closed polygon (K, 2) x/y: four quadratic curves bulging from the box towards the extended box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ex0, ey0, ex1, ey1 = (float(v) for v in ext)
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    tl, tr, br, bl = (np.array(p) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
    sides = [(tl, np.array([mx, ey0]), tr), (tr, np.array([ex1, my]), br),
             (br, np.array([mx, ey1]), bl), (bl, np.array([ex0, my]), tl)]
    pts = np.concatenate([bezier_curve(a, c, b, n_points) for a, c, b in sides])
    mag = rng.integers(jitter[0], jitter[1] + 1, size=pts.shape)
    sign = rng.choice(np.array([-1, 1]), size=pts.shape)
    return pts + mag * sign


def polygon_mask(poly: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Fill a polygon given in continuous coordinates (pixel i covers [i, i+1)); sub-pixel accurate."""
    m = np.zeros(hw, dtype=np.uint8)
    pts = np.round((poly - 0.5) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return m > 0


def bezier_mask(box: np.ndarray, ext: np.ndarray, hw: tuple[int, int], rng: np.random.Generator,
                n_points: int = 20, jitter: tuple[int, int] = (1, 5)) -> np.ndarray:
    return polygon_mask(bezier_polygon(box, ext, rng, n_points, jitter), hw)


def rect_mask(box: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = np.zeros(hw, dtype=bool)
    m[max(int(round(y0)), 0): int(round(y1)), max(int(round(x0)), 0): int(round(x1))] = True
    return m


class SelfReference:
    """Builds one Paint-by-Example training sample from an image and one of its boxes."""

    def __init__(self, size: int = 512, reference_size: int = 224, max_pad: int = 10, extend_frac: float = 0.4,
                 p_bezier: float = 0.5, bezier_points: int = 20, jitter: tuple[int, int] = (1, 5),
                 min_crop_frac: float = 1.0, fill: int = 0, augment: dict[str, Any] | None = None) -> None:
        self.size, self.max_pad, self.extend_frac = int(size), int(max_pad), float(extend_frac)
        self.p_bezier, self.bezier_points, self.jitter = float(p_bezier), int(bezier_points), tuple(jitter)
        self.min_crop_frac, self.fill = float(min_crop_frac), fill
        self.reference_size = int(reference_size)
        self.augment = ReferenceAugment(**(augment or {}))

    def __call__(self, image: np.ndarray, box: np.ndarray, rng: np.random.Generator, caption: str = "",
                 meta: dict[str, Any] | None = None) -> dict[str, Any]:
        hw = image.shape[:2]
        box = np.asarray(box, dtype=np.float32)
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"empty box {box.tolist()}")
        pb = pad_box(box, hw, rng, self.max_pad)
        reference, aug = self.augment(image[pb[1]: pb[3], pb[0]: pb[2]], rng, out_size=self.reference_size)
        ext = extend_box(box, hw, rng, self.extend_frac)
        if rng.random() < self.p_bezier:
            mask, kind = bezier_mask(box, ext, hw, rng, self.bezier_points, self.jitter), "bezier"
        else:
            mask, kind = rect_mask(ext, hw), "box"
        win = random_square_window(hw, rng, contain=ext, min_frac=self.min_crop_frac)
        img, boxes, (mask,) = crop_resize(image, win, (self.size, self.size), boxes=np.stack([box, ext]),
                                          masks=[mask], fill=self.fill)
        m = dict(meta or {})
        m.update({"box": boxes[0].tolist(), "extended_box": boxes[1].tolist(), "crop": list(win),
                  "mask_kind": kind, "reference_box": pb.tolist(), "augment": aug})
        src = image_to_tensor(img)
        return {"source": src, "mask": mask_to_tensor(mask), "reference": reference, "target": src.clone(),
                "caption": caption, "meta": m}


class SelfReferenceDataset(RobustDataset):
    """One random box per item of a boxed source -> ``source, mask, reference, target, caption, meta``.

    ``source`` is any :class:`~refedit.data.boxes.BoxedImages` (or object with ``__len__`` and
    ``load(i) -> {image, boxes, categories, path, image_id}`` raising ``DataError`` on bad data).
    """

    def __init__(self, source: Any, size: int = 512, reference_size: int = 224, *, max_pad: int = 10,
                 extend_frac: float = 0.4, p_bezier: float = 0.5, bezier_points: int = 20,
                 jitter: tuple[int, int] = (1, 5), min_crop_frac: float = 1.0,
                 augment: dict[str, Any] | None = None, on_error: str = "skip", seed: int = 0) -> None:
        super().__init__(on_error=on_error, seed=seed)
        self.source = source
        if hasattr(source, "bad"):
            self.bad = source.bad  # one log: index-time drops of the source and load-time skips
        self.build = SelfReference(size=size, reference_size=reference_size, max_pad=max_pad,
                                   extend_frac=extend_frac, p_bezier=p_bezier, bezier_points=bezier_points,
                                   jitter=tuple(jitter), min_crop_frac=min_crop_frac,
                                   augment=dict(augment) if augment else None)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> dict[str, Any]:
        item = self.source.load(index)
        boxes = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            raise AnnotationError(item["path"], "no box")
        rng = self.rng(index)
        k = int(rng.integers(len(boxes)))
        cats = item.get("categories") or []
        caption = cats[k] if k < len(cats) and cats[k] else ""
        meta = {"path": item["path"], "image_id": item.get("image_id"), "box_index": k, "source_box":
                boxes[k].tolist(), "seed": self.seed, "index": index}
        return self.build(item["image"], boxes[k], rng, caption=caption, meta=meta)
