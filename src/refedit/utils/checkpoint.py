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


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False,
                    expect_method: str | None = None, training_checkpoint: bool = True) -> dict[str, Any]:
    """Load a whole checkpoint or raise CheckpointError naming the file. `mmap=True` maps tensors lazily (cheap
    when only metadata is read); `expect_method` ('module.Class') rejects another method's checkpoint;
    `training_checkpoint=False` also accepts other torch.save payloads (Lightning's ddp_spawn weight hand-over)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p}: empty file (a write that never finished?)")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p} is corrupt or truncated and was not loaded: "
                              f"{type(e).__name__}: {str(e)[:200]}") from e
    if not training_checkpoint and not (isinstance(ckpt, dict) and "state_dict" in ckpt):
        return ckpt
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {p} has no 'state_dict': not a Lightning/refedit checkpoint")
    stored = ckpt.get("refedit_method")
    if expect_method and stored and stored != expect_method:
        raise CheckpointError(f"checkpoint {p} was written by {stored}, not by the configured method "
                              f"{expect_method}: choose the matching method=<name> (or another checkpoint)")
    return ckpt


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temp file in the same directory, fsync, then rename: a crash never leaves a partial file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        _fsync_dir(p.parent)  # the rename itself survives a crash
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a partial file nor the old one touched
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not fsync directories
        pass
    finally:
        os.close(fd)
