"""The one batch schema shared by every data pipeline and every method.

Pixel tensors are float in [-1, 1], channels first; masks are float {0, 1} with
**1 = the region to edit** everywhere outside a method's own module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

# key -> (channels or None for non-tensors, kind). kind: "image" in [-1,1], "mask" in {0,1},
# "video" (F,3,H,W) in [-1,1], "depth" (1,H,W) float >= 0, "text" str, "meta" dict.
# subject: the segmented subject on black, cropped to it (any size). subject_inplace: the first frame of `video`
#   with every pixel but the subject's black (3,H,W), so it is pixel-aligned with that frame (MagDiff's HFA).
# coarse_filled: `coarse` with its holes (valid = 0) inpainted, added by the data workers for Magic Fixup
#   (refedit.data.holes.FillCoarseHoles); batches without it are filled by the method itself.
KEYS: dict[str, tuple[int | None, str]] = {
    "target": (3, "image"),
    "source": (3, "image"),
    "mask": (1, "mask"),
    "reference": (3, "image"),
    "reference_mask": (1, "mask"),
    "coarse": (3, "image"),
    "valid": (1, "mask"),
    "caption": (None, "text"),
    "depth": (1, "depth"),
    "video": (3, "video"),
    "subject": (3, "image"),
    "subject_inplace": (3, "image"),
    "coarse_filled": (3, "image"),
    "meta": (None, "meta"),
}
NON_TENSOR_KEYS = frozenset(k for k, (_, kind) in KEYS.items() if kind in ("text", "meta"))


class BatchKeyError(KeyError):
    """A method was given a batch without a key it needs."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def require_keys(batch: Mapping[str, Any], keys: Iterable[str], *, method: str, hint: str = "") -> None:
    """Fail with a message naming the missing key(s), the method and the data config to use."""
    missing = [k for k in keys if k not in batch]
    if missing:
        have = ", ".join(sorted(batch)) or "nothing"
        msg = f"method '{method}' needs batch key(s) {missing} but the batch has [{have}]."
        if hint:
            msg += f" {hint}"
        raise BatchKeyError(msg)


def collate_edit(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensor keys, keep captions and meta as lists. All samples must carry the same keys."""
    if not samples:
        raise ValueError("collate_edit got an empty list of samples")
    keys = set(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != keys:
            raise ValueError(f"sample {i} has keys {sorted(s)} but sample 0 has {sorted(keys)}")
    out: dict[str, Any] = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) != 1:
                raise ValueError(f"batch key '{k}' has samples of different shapes {sorted(shapes)}")
            out[k] = torch.stack(vals)
        else:
            out[k] = list(vals)
    return out


def validate_sample(sample: Mapping[str, Any], *, batched: bool = False) -> None:
    """Check keys, shapes, dtypes and value ranges of a sample (or a batch) against the schema."""
    lead = 1 if batched else 0
    for k, v in sample.items():
        if k not in KEYS:
            raise ValueError(f"unknown batch key '{k}' (known: {sorted(KEYS)})")
        ch, kind = KEYS[k]
        if kind == "text":
            ok = isinstance(v, list) and all(isinstance(x, str) for x in v) if batched else isinstance(v, str)
            if not ok:
                raise ValueError(f"'{k}' must be {'a list of str' if batched else 'a str'}, got {type(v)}")
            continue
        if kind == "meta":
            continue
        if not isinstance(v, torch.Tensor) or v.dtype != torch.float32:
            raise ValueError(f"'{k}' must be a float32 tensor, got {getattr(v, 'dtype', type(v))}")
        want_dim = (4 if kind == "video" else 3) + lead
        if v.dim() != want_dim or v.shape[-3] != ch:
            raise ValueError(f"'{k}' must have {want_dim} dims with {ch} channels at dim -3, got {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"'{k}' has non-finite values")
        if kind in ("image", "video") and (v.min() < -1 - 1e-6 or v.max() > 1 + 1e-6):
            raise ValueError(f"'{k}' must lie in [-1, 1], got [{v.min():.3f}, {v.max():.3f}]")
        if kind == "mask" and not torch.all((v == 0) | (v == 1)):
            raise ValueError(f"'{k}' must be binary {{0, 1}} (1 = edit / valid)")
        if kind == "depth" and v.min() < 0:
            raise ValueError(f"'{k}' must be >= 0")


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
