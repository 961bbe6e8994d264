"""Bad-data errors and the one mechanism that skips them.

Real data is dirty: a truncated JPEG, a clip shorter than the requested gap, a box outside its
image, a mask saved at another size. A loader raises a :class:`DataError` subclass naming the file;
:class:`SkipBadSamples` (or any :class:`RobustDataset`) turns that into a warning, a counted entry in
``bad_samples_summary()`` and a deterministic retry on another index, so that a bad file is never a
silent wrong sample and never kills a long run — unless ``on_error="raise"``.

Worker processes each keep their own counter; every sample that replaced a bad one carries the
skipped files in ``meta["skipped"]`` so that the main process can aggregate the epoch summary from
the batches it receives (:meth:`BadSampleLog.update_from_batch`).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from refedit.utils.cli import ReportedError

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


class DataError(ReportedError):
    """A data file (or one record in it) cannot give a correct sample. ``path`` names the file (an entry point
    reports it on one line)."""

    reason = "bad data"
    warn = True  # False for expected rejections (filters) that are counted but not worth a warning each

    def __init__(self, path: str | Any, detail: str = "") -> None:
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{self.reason}: {self.path}" + (f" ({detail})" if detail else ""))


class CorruptFileError(DataError):
    reason = "corrupt or unreadable file"


class MissingFileError(DataError):
    reason = "missing file"


class AnnotationError(DataError):
    reason = "bad annotation"


class BoxOutsideImageError(AnnotationError):
    reason = "box outside the image"


class MaskSizeError(DataError):
    reason = "mask size differs from its image"


class VideoTooShortError(DataError):
    reason = "video shorter than the requested gap"


class PairRejectedError(DataError):
    reason = "every sampled pair rejected by the filters"
    warn = False


class TooManyBadSamplesError(ReportedError, RuntimeError):
    """Consecutive retries all hit bad data: the dataset (or its config) is broken, not one file."""


def check_on_error(on_error: str) -> OnError:
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    return on_error  # type: ignore[return-value]


@dataclass
class BadSampleLog:
    """Bad files with their reasons (``by_reason`` counts distinct files) and the number of replaced
    samples (``skipped``); mergeable across workers through batch meta."""

    files: dict[str, str] = field(default_factory=dict)  # path -> reason
    events: int = 0  # samples that had to be replaced (a bad file hit twice counts twice)
    bad_index: dict[int, DataError] = field(default_factory=dict)  # index -> its file error, not re-read

    def record(self, path: str, reason: str, *, warn: bool = True, detail: str = "", event: bool = True) -> None:
        first = path not in self.files
        self.files[path] = reason
        self.events += int(event)
        if warn and first:
            msg = f"skipping {path}: {reason}" + (f" ({detail})" if detail else "")
            warnings.warn(msg, BadDataWarning, stacklevel=3)

    def record_error(self, err: DataError, *, event: bool = True) -> None:
        self.record(err.path, err.reason, warn=err.warn, detail=err.detail, event=event)

    @property
    def total(self) -> int:
        return self.events

    @property
    def counts(self) -> Counter:
        return Counter(self.files.values())

    def summary(self) -> dict[str, Any]:
        return {"skipped": self.events, "files": len(self.files), "by_reason": dict(self.counts),
                "examples": dict(list(self.files.items())[:20])}

    def update_from_batch(self, batch: Mapping[str, Any]) -> None:
        """Aggregate what workers skipped, from the ``meta`` list of a collated batch."""
        for m in batch.get("meta", []) or []:
            for item in (m or {}).get("skipped", []):
                self.files[item["path"]] = item["reason"]
                self.events += 1

    def reset(self) -> None:
        self.files.clear()
        self.events = 0


class BadDataWarning(UserWarning):
    """A data file was skipped (``on_error=skip``)."""


def retry_index(seed: int, index: int, attempt: int, n: int) -> int:
    """Deterministic replacement index: same seed, index and attempt give the same file in every worker."""
    return int(np.random.default_rng([seed & 0xFFFFFFFF, index, attempt, 0x5B1D]).integers(n))


def fetch_with_retry(
    load: Any, index: int, n: int, log_: BadSampleLog, *, on_error: OnError, seed: int, max_retries: int,
    salted: bool = False,
) -> dict[str, Any]:
    """``load(i)`` (or ``load(i, (index, attempt))`` when ``salted``, so that a replacement is a fresh
    random draw rather than a copy of sample ``i``), retrying other indices on :class:`DataError`."""
    skipped: list[dict[str, str]] = []
    i = index
    for attempt in range(max_retries + 1):
        try:
            known = log_.bad_index.get(i)
            if known is not None:  # a file error repeats itself: do not decode the file again
                raise known
            sample = load(i, (index, attempt) if attempt else None) if salted else load(i)
        except DataError as err:
            if on_error == "raise":
                raise
            log_.record_error(err)
            if err.warn:  # file-level errors are deterministic; filter rejections depend on the draw
                log_.bad_index[i] = err
            skipped.append({"path": err.path, "reason": err.reason})
            i = retry_index(seed, index, attempt, n)
            continue
        if skipped and isinstance(sample, dict):
            meta = dict(sample.get("meta") or {})
            meta["skipped"] = list(meta.get("skipped", [])) + skipped
            sample["meta"] = meta
        return sample
    last = skipped[-1] if skipped else {}
    raise TooManyBadSamplesError(
        f"{max_retries + 1} consecutive bad samples starting at index {index} (last: {last.get('path')}: "
        f"{last.get('reason')}); check the data paths and config. Summary: {log_.summary()}"
    )


class RobustDataset(Dataset):
    """Base class: subclasses implement ``load(index)`` and raise :class:`DataError` on bad data."""

    def __init__(self, *, on_error: str = "skip", seed: int = 0, max_retries: int = 20) -> None:
        self.on_error = check_on_error(on_error)
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        self.epoch = 0
        self.bad = BadSampleLog()
        self._salt: tuple[int, int] | None = None

    def load(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Vary the random draws per epoch (workers see it when they are re-created each epoch)."""
        self.epoch = int(epoch)

    def rng(self, index: int, *salt: int) -> np.random.Generator:
        """Per-sample generator: the same sample whatever the worker, batch size or worker count."""
        extra = (*self._salt, 1) if self._salt is not None else ()
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, int(index), *salt, *extra])

    def _load_salted(self, index: int, salt: tuple[int, int] | None) -> dict[str, Any]:
        self._salt = salt
        try:
            return self.load(index)
        finally:
            self._salt = None

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        return fetch_with_retry(self._load_salted, index, n, self.bad, on_error=self.on_error, seed=self.seed,
                                max_retries=self.max_retries, salted=True)

    def report(self, err: DataError) -> None:
        """Index-time bad data (found while scanning annotations): fatal or counted, as configured."""
        if self.on_error == "raise":
            raise err
        self.bad.record_error(err, event=False)

    def bad_samples_summary(self) -> dict[str, Any]:
        return self.bad.summary()


class SkipBadSamples(Dataset):
    """Wrap any map-style dataset whose ``__getitem__`` may raise :class:`DataError`."""

    def __init__(self, dataset: Dataset, *, on_error: str = "skip", seed: int = 0, max_retries: int = 20) -> None:
        self.dataset = dataset
        self.on_error = check_on_error(on_error)
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        self.bad = BadSampleLog()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return fetch_with_retry(self.dataset.__getitem__, index, len(self), self.bad, on_error=self.on_error,
                                seed=self.seed, max_retries=self.max_retries)

    def bad_samples_summary(self) -> dict[str, Any]:
        inner = getattr(self.dataset, "bad_samples_summary", None)
        out = self.bad.summary()
        if callable(inner):
            out["inner"] = inner()
        return out


def summarize(datasets: Iterable[Any]) -> dict[str, Any]:
    """Merge the summaries of several datasets (e.g. train and val) for an epoch report."""
    total: Counter = Counter()
    skipped = 0
    for d in datasets:
        fn = getattr(d, "bad_samples_summary", None)
        if callable(fn):
            s = fn()
            total.update(s.get("by_reason", {}))
            skipped += s.get("skipped", 0)
    return {"skipped": skipped, "files": sum(total.values()), "by_reason": dict(total)}
