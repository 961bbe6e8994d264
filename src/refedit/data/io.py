"""File readers/writers shared by the real-data loaders.

Readers return numpy arrays (uint8 RGB images, bool masks, float32 depth) and raise a
:class:`~refedit.data.errors.DataError` naming the file when it is missing or cannot be decoded, so
that the skip mechanism can count it. Conversions to the batch schema (float [-1, 1], masks {0, 1}) are
`refedit.utils.images`' (one convention for data loaders and user inputs), re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from refedit.data.errors import AnnotationError, CorruptFileError, MissingFileError
from refedit.utils.images import binary_mask, image_to_tensor, mask_to_tensor  # noqa: F401 - the loaders' converters
from refedit.utils.video import write_video  # noqa: F401 - the one encoder, for the loaders' tests and synthetic data

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")

PathLike = str | os.PathLike


def _require(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(p)
    return p


def read_image(path: PathLike) -> np.ndarray:
    """RGB uint8 (H, W, 3); grey images are expanded, alpha dropped."""
    p = _require(path)
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise CorruptFileError(p, "OpenCV could not decode it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_single_channel(path: PathLike) -> np.ndarray:
    """The file's values unchanged (8/16-bit), colour channels collapsed by max: masks saved as RGB still work."""
    p = _require(path)
    m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if m is None or m.size == 0:
        raise CorruptFileError(p, "OpenCV could not decode it")
    return m[..., :3].max(axis=2) if m.ndim == 3 else m


def read_mask(path: PathLike) -> np.ndarray:
    """Bool (H, W), True = edit, by the one mask convention (`refedit.utils.images.binary_mask`: 8-bit masks
    255 = edit, threshold 128; 16-bit 32768; 0/1 masks accepted too)."""
    return binary_mask(_read_single_channel(path))


def read_label_map(path: PathLike) -> np.ndarray:
    """Integer (H, W) map: an instance-id mask (0 = background) or a binary 0/255 mask (-> 0/1)."""
    m = _read_single_channel(path)
    m = m.astype(np.int32)
    vals = np.unique(m)
    if len(vals) <= 2 and vals.max() == 255:
        m = (m > 127).astype(np.int32)
    return m


def read_depth(path: PathLike, scale: float = 1.0) -> np.ndarray:
    """Float32 (H, W) depth: ``.npy`` as stored, 16-bit / 8-bit images multiplied by ``scale``."""
    p = _require(path)
    if p.suffix == ".npy":
        try:
            d = np.load(p).astype(np.float32)
        except (ValueError, OSError, EOFError) as e:
            raise CorruptFileError(p, str(e)) from e
    else:
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise CorruptFileError(p, "OpenCV could not decode it")
        d = raw.astype(np.float32) * scale
    if d.ndim == 3:
        d = d[..., 0]
    if d.ndim != 2 or not np.isfinite(d).all():
        raise CorruptFileError(p, f"depth must be a finite (H, W) array, got shape {d.shape}")
    return d


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines ignored; the error names the file and line."""
    p = _require(path)
    rows: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AnnotationError(p, f"line {n}: {e.msg}") from e
            if not isinstance(row, dict):
                raise AnnotationError(p, f"line {n}: expected a JSON object")
            rows.append(row)
    return rows


def read_json(path: PathLike) -> Any:
    p = _require(path)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(p, f"line {e.lineno}: {e.msg}") from e


def write_image(path: PathLike, image: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_mask(path: PathLike, mask: np.ndarray) -> None:
    """Writes 255 = edit."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), (np.asarray(mask) > 0).astype(np.uint8) * 255):
        raise OSError(f"could not write {path}")


def find_with_stem(folder: Path, stems: Sequence[str], exts: Sequence[str] = IMAGE_EXTS) -> Path | None:
    """First existing ``folder/<stem><ext>``, trying stems in order (e.g. the authors' and plain names)."""
    for stem in stems:
        for ext in exts:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def list_files(folder: Path, exts: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


# ---------------------------------------------------------------------------------------- tensors


def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return t.div_(127.5).sub_(1.0)


def depth_to_tensor(depth: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).clamp_min(0)[None]


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    x = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()
