"""Checkpoint files: atomic writes and reads that report a corrupt or partial file instead of half-loading it."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    pass


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p}: empty file (a write that never finished?)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p} is corrupt or truncated and was not loaded: "
                              f"{type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {p} has no 'state_dict': not a Lightning/refedit checkpoint")
    return ckpt


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temp file in the same directory, fsync, then rename: a crash never leaves a partial file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
