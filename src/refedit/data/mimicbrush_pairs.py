"""MimicBrush training pairs: video frame pairs mixed with pseudo pairs
made from single images by strong augmentation (paper 70:30), every pair masked by the paper's SIFT grid.

Masking: an N x N grid, N ~ U{n_range}; SIFT keypoints are matched between source and reference (Lowe's
ratio test); grid cells holding a matched *source* keypoint are masked with ``p_matched`` (0.75), the other
cells with ``p_other`` (0.5). The mask replaces the pair's own edit mask (1 = edit, project convention);
``reference_mask`` is left as the pair gives it.

Every random draw comes from ``(seed, epoch, index)``, so a sample does not depend on the worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kornia
import numpy as np
import torch
from torch.utils.data import Dataset

from refedit.data.transforms import sift_matches

#: the keys every MimicBrush pair carries (one schema for video and pseudo pairs, so batches collate)
PAIR_KEYS = ("source", "mask", "reference", "reference_mask", "target", "depth", "caption", "meta")


# --------------------------------------------------------------------------------------------- masking
def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3,H,W) float in [-1,1] (the batch schema) -> (H,W,3) uint8; uint8 arrays pass through."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image
    x = torch.as_tensor(image).detach().float().cpu()
    return ((x.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def sift_grid_mask(
    source_uint8: np.ndarray,
    reference_uint8: np.ndarray,
    rng: np.random.Generator,
    n_range: tuple[int, int] = (3, 10),
    p_matched: float = 0.75,
    p_other: float = 0.5,
    *,
    ratio: float = 0.75,
    min_cells: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The paper's grid mask: (mask (H,W) float32 in {0,1}, info).

    ``info``: ``n`` (grid size), ``matched`` / ``masked`` (n,n) bool cell flags, ``points`` (K,2) matched
    source keypoints. A keypoint belongs to the cell of the pixel it lies in (OpenCV: pixel centres at
    integers).
    With ``min_cells`` > 0 the cell draws are repeated (at most 100 times) until that many cells are masked:
    an empty mask teaches nothing.
    """
    lo, hi = int(n_range[0]), int(n_range[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"sift_grid_mask: n_range must satisfy 1 <= low <= high, got {n_range}")
    for name, p in (("p_matched", p_matched), ("p_other", p_other)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"sift_grid_mask: {name} must be in [0, 1], got {p}")
    h, w = source_uint8.shape[:2]
    n = int(rng.integers(lo, hi + 1))
    pts = sift_matches(source_uint8, reference_uint8, ratio)
    matched = np.zeros((n, n), dtype=bool)
    if len(pts):
        px = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        py = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        matched[(py * n) // h, (px * n) // w] = True
    probs = np.where(matched, float(p_matched), float(p_other))
    for _ in range(100):
        masked = rng.random((n, n)) < probs
        if masked.sum() >= min(int(min_cells), n * n):
            break
    ys = np.minimum((np.arange(h) * n) // h, n - 1)
    xs = np.minimum((np.arange(w) * n) // w, n - 1)
    mask = masked[ys[:, None], xs[None, :]].astype(np.float32)
    return mask, {"n": n, "matched": matched, "masked": masked, "points": pts}


# ---------------------------------------------------------------------------------- pseudo pairs
class StrongAugment:
    """The paper's strong augmentation of a single image into a pseudo reference: colour jitter, rotation,
    resize (scale), flip and random perspective, as one homography (one resampling) plus kornia's colour ops.
    Parameters come from the caller's numpy generator. Returns the augmented image in [-1,1] and the mask of
    pixels that came from inside the image (1) rather than the black border (0)."""

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.3,
        saturation: float = 0.3,
        hue: float = 0.05,
        max_angle: float = 30.0,
        scale: tuple[float, float] = (0.7, 1.3),
        p_flip: float = 0.5,
        perspective: float = 0.15,
    ):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.max_angle, self.scale, self.p_flip, self.perspective = (
            max_angle,
            tuple(scale),
            p_flip,
            perspective,
        )

    def homography(self, hw: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        h, w = hw
        flip = torch.eye(3)
        if rng.random() < self.p_flip:
            flip = torch.tensor([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        centre = torch.tensor([[(w - 1) / 2.0, (h - 1) / 2.0]])
        angle = torch.tensor([rng.uniform(-self.max_angle, self.max_angle)], dtype=torch.float32)
        s = float(rng.uniform(*self.scale))
        rot = torch.eye(3)
        rot[:2] = kornia.geometry.transform.get_rotation_matrix2d(centre, angle, torch.tensor([[s, s]]))[0]
        corners = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])
        jitter = torch.from_numpy(rng.uniform(-self.perspective, self.perspective, (4, 2))).float()
        moved = corners + jitter * torch.tensor([w, h], dtype=torch.float32)
        persp = kornia.geometry.transform.get_perspective_transform(corners[None], moved[None])[0]
        return persp @ rot @ flip

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = ((image.float()[None] + 1) / 2).clamp(0, 1)
        x = kornia.enhance.adjust_brightness(x, float(rng.uniform(-self.brightness, self.brightness)))
        x = kornia.enhance.adjust_contrast(x, float(rng.uniform(1 - self.contrast, 1 + self.contrast)))
        x = kornia.enhance.adjust_saturation(x, float(rng.uniform(1 - self.saturation, 1 + self.saturation)))
        x = kornia.enhance.adjust_hue(x, float(rng.uniform(-self.hue, self.hue) * 2 * np.pi)).clamp(0, 1)
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        m = self.homography(hw, rng)[None]
        warp = kornia.geometry.transform.warp_perspective
        out = warp(x, m, hw, mode="bilinear", padding_mode="zeros", align_corners=True)
        valid = warp(
            torch.ones_like(x[:, :1]), m, hw, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return (out[0] * 2 - 1).clamp(-1, 1), (valid[0] > 0.5).float()


# -------------------------------------------------------------------------------------- the wrapper
class MimicBrushPairs(Dataset):
    """Video pairs (``video_pairs_dataset``: samples with ``source``, ``reference``, ``target``, e.g.
    toyworld's ``reference_imitation`` or :class:`refedit.data.pairs.VideoFramePairs`) with probability
    ``video_ratio``, else a pseudo pair from one image of ``image_dataset`` (its ``image_key``, default
    ``source``; None: the video sample's own source frame): source = target = the image, reference = its
    strong augmentation.
    Every pair then gets :func:`sift_grid_mask` as its ``mask``.

    Output keys: :data:`PAIR_KEYS` (``depth`` only with ``with_depth``); a key the underlying sample lacks is
    filled (``reference_mask``: ones, or the augmentation's valid region for pseudo pairs; ``depth``: zeros,
    i.e. no shape cue; ``caption``: ""), so that video and pseudo pairs collate into one batch.
    """

    def __init__(
        self,
        video_pairs_dataset: Dataset,
        image_dataset: Dataset | None = None,
        video_ratio: float = 0.7,
        *,
        n_range: Sequence[int] = (3, 10),
        p_matched: float = 0.75,
        p_other: float = 0.5,
        ratio: float = 0.75,
        min_cells: int = 1,
        image_key: str = "source",
        with_depth: bool = True,
        augment: Mapping[str, Any] | None = None,
        seed: int = 0,
    ):
        if not 0.0 <= float(video_ratio) <= 1.0:
            raise ValueError(f"MimicBrushPairs: video_ratio must be in [0, 1], got {video_ratio}")
        if len(n_range) != 2:
            raise ValueError(f"MimicBrushPairs: n_range must be [low, high], got {n_range}")
        self.video, self.images = video_pairs_dataset, image_dataset
        self.video_ratio = float(video_ratio)
        self.n_range = (int(n_range[0]), int(n_range[1]))
        self.p_matched, self.p_other, self.ratio, self.min_cells = (
            float(p_matched),
            float(p_other),
            ratio,
            min_cells,
        )
        self.image_key, self.with_depth, self.seed = image_key, bool(with_depth), int(seed)
        self.augment = StrongAugment(**dict(augment or {}))
        self.keys = tuple(k for k in PAIR_KEYS if k != "depth" or self.with_depth)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.video)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for ds in (self.video, self.images):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, int(index), 0x4D42])

    def _pseudo(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if self.images is None:
            base, src_name = self.video[index], f"video[{index}]"
        else:
            j = int(rng.integers(len(self.images)))  # type: ignore[arg-type]
            base, src_name = self.images[j], f"image[{j}]"
        if self.image_key not in base:
            raise KeyError(
                f"MimicBrushPairs: the image sample {src_name} has no '{self.image_key}' (keys "
                f"{sorted(base)}); set image_key to its image key"
            )
        image = base[self.image_key]
        reference, valid = self.augment(image, rng)
        out = {
            "source": image,
            "target": image.clone(),
            "reference": reference,
            "reference_mask": valid,
            "caption": base.get("caption", ""),
        }
        if "depth" in base and self.image_key in ("source", "target"):
            out["depth"] = base["depth"]
        meta = base.get("meta") if isinstance(base.get("meta"), dict) else {}
        out["meta"] = {**meta, "pair": "image", "image": src_name}
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        if rng.random() < self.video_ratio:
            sample = dict(self.video[index])
            for k in ("source", "reference", "target"):
                if k not in sample:
                    raise KeyError(
                        f"MimicBrushPairs: video sample {index} has no '{k}' (keys {sorted(sample)})"
                    )
            meta = sample.get("meta") if isinstance(sample.get("meta"), dict) else {}
            sample["meta"] = {**meta, "pair": "video"}
        else:
            sample = self._pseudo(index, rng)
        mask, info = sift_grid_mask(
            to_uint8(sample["source"]),
            to_uint8(sample["reference"]),
            rng,
            self.n_range,
            self.p_matched,
            self.p_other,
            ratio=self.ratio,
            min_cells=self.min_cells,
        )
        sample["mask"] = torch.from_numpy(mask)[None]
        sample["meta"].update(
            grid=info["n"],
            matched_cells=int(info["matched"].sum()),
            masked_cells=int(info["masked"].sum()),
            keypoints=len(info["points"]),
        )
        fill = {
            "reference_mask": lambda: torch.ones_like(sample["reference"][:1]),
            "depth": lambda: torch.zeros_like(sample["source"][:1]),
            "caption": lambda: "",
        }
        return {k: sample[k] if k in sample else fill[k]() for k in self.keys}
