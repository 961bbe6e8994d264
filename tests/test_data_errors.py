"""The reusable skip mechanism: warning naming the file, counted summary, deterministic retry, raise mode."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from refedit.batch import collate_edit
from refedit.data.errors import (
    BadDataWarning,
    BadSampleLog,
    CorruptFileError,
    DataError,
    RobustDataset,
    SkipBadSamples,
    TooManyBadSamplesError,
    summarize,
)


class Files(Dataset):
    """Sample i comes from file f'{i}.png'; the files in ``bad`` are corrupt."""

    def __init__(self, n: int, bad: set[int]):
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i in self.bad:
            raise CorruptFileError(f"/data/{i}.png", "truncated")
        return {"target": torch.full((3, 2, 2), i / 10), "meta": {"i": i}}


def test_skip_warns_with_the_file_counts_and_replaces_deterministically():
    ds = SkipBadSamples(Files(10, {3, 7}), seed=5)
    with pytest.warns(BadDataWarning, match=r"/data/3\.png.*corrupt"):
        s3 = ds[3]
    assert s3["meta"]["i"] not in (3, 7)
    assert s3["meta"]["skipped"] == [{"path": "/data/3.png", "reason": "corrupt or unreadable file"}]
    with pytest.warns(BadDataWarning):
        again = SkipBadSamples(Files(10, {3, 7}), seed=5)[3]
    assert again["meta"]["i"] == s3["meta"]["i"]  # same seed, same replacement
    with pytest.warns(BadDataWarning, match=r"/data/7\.png"):
        samples = [ds[i] for i in range(10)]
    got = [s["meta"]["i"] for s in samples]
    assert [g for i, g in enumerate(got) if i not in (3, 7)] == [0, 1, 2, 4, 5, 6, 8, 9]  # nothing else lost
    n_skips = len(s3["meta"]["skipped"]) + sum(len(s["meta"].get("skipped", [])) for s in samples)
    summary = ds.bad_samples_summary()
    assert summary["skipped"] == n_skips >= 3 and summary["files"] == 2  # index 3 twice, 7 once (at least)
    assert summary["by_reason"] == {"corrupt or unreadable file": 2}  # distinct files
    assert set(summary["examples"]) == {"/data/3.png", "/data/7.png"}


def test_raise_mode_is_fatal_and_names_the_file():
    ds = SkipBadSamples(Files(4, {2}), on_error="raise")
    with pytest.raises(DataError, match=r"/data/2\.png"):
        ds[2]
    assert ds[1]["meta"]["i"] == 1
    with pytest.raises(ValueError, match="on_error"):
        SkipBadSamples(Files(4, set()), on_error="ignore")


def test_all_bad_raises_instead_of_looping():
    ds = SkipBadSamples(Files(3, {0, 1, 2}), max_retries=4)
    with pytest.warns(BadDataWarning), pytest.raises(TooManyBadSamplesError, match="consecutive bad samples"):
        ds[0]


def test_summary_aggregates_across_dataloader_workers_through_meta():
    ds = SkipBadSamples(Files(12, {1, 5, 9}))
    log = BadSampleLog()
    seen = []
    for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_edit):  # workers warn on stderr
        log.update_from_batch(batch)
        seen += [m["i"] for m in batch["meta"]]
    assert len(seen) == 12 and not {1, 5, 9} & set(seen)
    assert set(seen) >= {0, 2, 3, 4, 6, 7, 8, 10, 11}
    assert log.total >= 3 and set(log.files) == {"/data/1.png", "/data/5.png", "/data/9.png"}
    assert ds.bad_samples_summary()["skipped"] == 0  # the main process's copy saw nothing: hence the meta route


class Toy(RobustDataset):
    def __init__(self, **kw):
        super().__init__(**kw)

    def __len__(self) -> int:
        return 6

    def load(self, index: int):
        if index == 2:
            raise CorruptFileError("/x/2.jpg")
        return {"target": torch.zeros(3, 2, 2), "meta": {"draw": float(self.rng(index).random()), "i": index}}


def test_robust_dataset_replacement_is_a_fresh_draw_and_epoch_varies():
    ds = Toy(seed=1)
    with pytest.warns(BadDataWarning, match=r"/x/2\.jpg"):
        s2 = ds[2]
    j = s2["meta"]["i"]
    assert s2["meta"]["draw"] != ds[j]["meta"]["draw"]  # not a copy of sample j
    a = ds[0]["meta"]["draw"]
    assert Toy(seed=1)[0]["meta"]["draw"] == a and Toy(seed=2)[0]["meta"]["draw"] != a
    ds.set_epoch(1)
    assert ds[0]["meta"]["draw"] != a
    assert summarize([ds, Toy()])["skipped"] == 1
    with pytest.raises(IndexError):
        ds[6]


def test_a_bad_file_is_not_read_again():
    class Counting(Files):
        calls: dict[int, int] = {}

        def __getitem__(self, i: int):
            self.calls[i] = self.calls.get(i, 0) + 1
            return super().__getitem__(i)

    inner = Counting(6, {2})
    ds = SkipBadSamples(inner)
    with pytest.warns(BadDataWarning):
        first = ds[2]
    again = ds[2]
    assert inner.calls[2] == 1  # the second request goes straight to the (same) replacement
    assert again["meta"]["i"] == first["meta"]["i"]
    assert ds.bad_samples_summary()["skipped"] == 2 * len(first["meta"]["skipped"])
