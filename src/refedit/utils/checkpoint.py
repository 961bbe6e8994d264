"""Checkpoint files: atomic writes, and reads that report a corrupt, partial or unsafe file instead of loading it.

Every read unpickles with `weights_only=True`: tensors, plain containers and numbers load, and so do the few
other types a refedit checkpoint holds (`SAFE_GLOBALS`); a file that needs any other class or function (which
a pickle could use to run code) is refused, naming the file and the global. Training resume reads the same
way: refedit's own checkpoints (Lightning's loop, optimiser, scheduler and callback state, the EMA and the RNG
states) need nothing outside the allow-list, so no path loads a checkpoint with full pickle.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refedit.utils.cli import ReportedError, first_line


class CheckpointError(ReportedError, RuntimeError):
    pass


def _numpy_globals() -> list[Any]:
    """What `numpy.random.get_state()` (stored with the RNG states for exact resume) pickles to. Files written
    under numpy 1 name `numpy.core.multiarray`, under numpy 2 `numpy._core.multiarray`: both are listed."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct")]


# the globals a refedit checkpoint may reference besides what torch's weights-only unpickler allows already
SAFE_GLOBALS: list[Any] = _numpy_globals()

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refusal(p: Path, e: pickle.UnpicklingError) -> CheckpointError:
    """The one-line refusal of a file whose pickle needs more than the allow-list, naming what it needs."""
    text = str(e)
    m = _GLOBAL.search(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    what = f"the global '{m.group(1)}'" if m else f"something else ({lines[-1][:160] if lines else 'unknown'})"
    return CheckpointError(f"checkpoint {p} was refused: its pickle needs {what}, which refedit does not load "
                           f"(weights-only: tensors, containers, numbers and refedit's own state only)")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False,
                    expect_method: str | None = None, training_checkpoint: bool = True) -> dict[str, Any]:
    """Load a whole checkpoint (weights-only, see the module docstring) or raise CheckpointError naming the
    file. `mmap=True` maps tensors lazily (cheap when only metadata is read); `expect_method` ('module.Class')
    rejects another method's checkpoint; `training_checkpoint=False` also accepts other torch.save payloads
    (Lightning's ddp_spawn weight hand-over)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p}: no such file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p}: empty file (a write that never finished?)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
            raise _refusal(p, e) from None
        raise CheckpointError(f"checkpoint {p} is corrupt or truncated and was not loaded: "
                              f"{type(e).__name__}: {first_line(e).split('. ')[0][:200]}") from e
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
