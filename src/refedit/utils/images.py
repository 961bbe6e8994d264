"""Image helpers shared by logging, edit and reports: grids, file I/O with clear errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from refedit.utils.cli import ReportedError


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] -> [0,1]"""
    return ((x.float() + 1) / 2).clamp(0, 1)


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x


def edit_grid(batch: Mapping[str, Any], result: torch.Tensor, condition: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """source | mask | condition | result | target, one row per sample, in [0,1]. Clips show their middle frame
    in the image grid and come back whole under 'video' (N,F,3,H,W)."""
    out: dict[str, torch.Tensor] = {}
    if result.dim() == 5:
        out["video"] = to_unit(result)
        target = batch.get("video")
        mid = result.shape[1] // 2
        result = result[:, mid]
        tgt = target[:, mid] if target is not None else None
        src = tgt
    else:
        tgt = batch.get("target")
        src = batch.get("source", tgt)
    n, _, h, w = result.shape
    blank = torch.zeros(n, 3, h, w)
    cols = [
        to_unit(src).cpu() if src is not None else blank,
        batch["mask"].float().cpu() if "mask" in batch else blank,
        to_unit(condition).cpu() if condition is not None else blank,
        to_unit(result).cpu(),
        to_unit(tgt).cpu() if tgt is not None else blank,
    ]
    cols = [_fit(c, h, w) for c in cols]
    rows = torch.cat(cols, dim=-1)  # N,3,H,5W
    out["grid"] = torch.cat(list(rows), dim=-2)
    return out


def save_image(x: torch.Tensor, path: str | os.PathLike) -> None:
    """(3,H,W) or (1,H,W) in [0,1] -> PNG/JPG."""
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    Image.fromarray(arr).save(path)


class InputError(ReportedError, ValueError):
    """Bad user input: the message names the file or option."""


def read_image(path: str | os.PathLike, *, name: str, mode: str | None = "RGB") -> np.ndarray:
    """Read an image file as uint8 HWC (RGB) or HW (L), or as stored (`mode=None`: e.g. 16-bit or float grey);
    errors name the option and the file."""
    from PIL import Image, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputError(f"{name}={p}: no such file")
    if os.path.isdir(p):
        raise InputError(f"{name}={p}: is a directory, expected an image file")
    try:
        with Image.open(p) as im:
            im.load()
            return np.asarray(im.convert(mode) if mode else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise InputError(f"{name}={p}: not a readable image ({type(e).__name__})") from e


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H,W,3) -> float32 (3,H,W) in [-1,1]: the batch schema's images, for data loaders and inputs alike."""
    return torch.from_numpy(np.asarray(arr, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def binary_mask(arr: np.ndarray) -> np.ndarray:
    """The one mask convention, True = edit: bool as given; a mask whose values are all 0 / 1: nonzero; otherwise
    the upper half of its range (uint8: >= 128, i.e. 255 = edit with JPEG noise tolerated; uint16: >= 32768;
    float: >= 0.5)."""
    m = np.asarray(arr)
    if m.dtype == np.bool_:
        return m
    if m.size and m.max() <= 1 and m.min() >= 0 and np.issubdtype(m.dtype, np.integer):
        return m > 0
    if np.issubdtype(m.dtype, np.integer):
        return m >= (np.iinfo(m.dtype).max // 2 + 1)
    return m >= 0.5


def mask_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """A mask (see `binary_mask`) -> float32 (1,H,W) in {0,1}."""
    return torch.from_numpy(np.ascontiguousarray(binary_mask(arr), dtype=np.float32))[None]


def read_depth(path: str | os.PathLike, *, name: str = "depth") -> torch.Tensor:
    """A depth map image (8- or 16-bit grey, or float TIFF) as (1,H,W) in [0,1], min-max normalised, white =
    near (inverse depth, as Depth Anything's output and toyworld's `depth`)."""
    from PIL import Image

    arr = read_image(path, name=name, mode=None)
    if arr.ndim == 3:  # a grey map saved as RGB(A): PIL's luminance, as mode="L" would give
        arr = np.asarray(Image.fromarray(arr).convert("L"))
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo < 1e-6:
        raise InputError(f"{name}={os.fspath(path)}: the depth map is constant: no shape to control")
    return torch.from_numpy((arr - lo) / (hi - lo))[None]


def resize_image(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0].clamp(-1, 1)


def resize_mask(m: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return (F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0] >= 0.5).float()
