"""`ToyWorldDataset`: an index -> seed map over disjoint seed ranges per split; nothing is stored."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .tasks import MASK_KINDS, TASKS, build_sample

# Seed ranges [start, stop) per split. Fixed forever (the benchmark split above all): changing them
# changes every published number.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000_000),
    "val": (1_000_000_000, 1_001_000_000),
    "test": (1_001_000_000, 1_002_000_000),
    "benchmark": (1_002_000_000, 1_002_010_000),
}
DEFAULT_LENGTHS: dict[str, int] = {"train": 1_000_000, "val": 64, "test": 256, "benchmark": 200}


def seed_of(split: str, index: int) -> int:
    """The seed of sample `index` of a split."""
    if split not in SPLITS:
        raise ValueError(f"unknown toyworld split {split!r}; valid splits: {', '.join(SPLITS)}")
    start, stop = SPLITS[split]
    if not 0 <= index < stop - start:
        raise IndexError(f"toyworld split {split!r} has seeds for indices [0, {stop - start}), got {index}")
    return start + index


class ToyWorldDataset(Dataset):
    """Samples of one toyworld task; `ds[i] = build_sample(task, seed_of(split, i), ...)`."""

    def __init__(self, task: str, split: str = "train", size: int = 64, length: int | None = None,
                 frames: int = 8, reference_size: int | None = None, mask_kind: str = "mixed"):
        if task not in TASKS:
            raise ValueError(f"unknown toyworld task {task!r}; valid tasks: {', '.join(TASKS)}")
        if split not in SPLITS:
            raise ValueError(f"unknown toyworld split {split!r}; valid splits: {', '.join(SPLITS)}")
        if mask_kind not in MASK_KINDS:
            raise ValueError(f"unknown toyworld mask_kind {mask_kind!r}; valid: {', '.join(MASK_KINDS)}")
        n = DEFAULT_LENGTHS[split] if length is None else int(length)
        start, stop = SPLITS[split]
        if not 0 < n <= stop - start:
            raise ValueError(f"toyworld split {split!r}: length must be in [1, {stop - start}], got {n}")
        self.task, self.split, self.size, self.length = task, split, int(size), n
        self.frames, self.reference_size, self.mask_kind = int(frames), reference_size, mask_kind

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"ToyWorldDataset({self.task!r}, {self.split!r}) has {self.length} samples, "
                             f"got index {index}")
        return build_sample(self.task, seed_of(self.split, index), size=self.size, frames=self.frames,
                            reference_size=self.reference_size, mask_kind=self.mask_kind)

    def __repr__(self) -> str:
        return (f"ToyWorldDataset(task={self.task!r}, split={self.split!r}, size={self.size}, "
                f"length={self.length}, frames={self.frames})")
