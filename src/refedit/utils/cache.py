"""Cached artefacts built on first use (stage-1 foundations, the feature probe)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def build_once(path: str | os.PathLike, is_ready: Callable[[Path], bool], build: Callable[[Path], object]) -> Path:
    """`path` (user-expanded) after `build(path)` has run unless `is_ready(path)`. The check and the build run under
    a file lock next to `path`, so concurrent jobs (multirun, several users) build it once."""
    from filelock import FileLock

    p = Path(os.path.expanduser(str(path)))
    if is_ready(p):
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p) + ".lock"):
        if not is_ready(p):
            build(p)
    return p
