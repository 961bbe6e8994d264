"""COCOEE and the generic folder / JSONL benchmark layouts, with their bad-data cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refedit.batch import collate_edit, validate_sample
from refedit.data.benchmarks import CocoEEBenchmark, FolderBenchmark
from refedit.data.errors import BadDataWarning, MaskSizeError, MissingFileError
from refedit.data.io import tensor_to_image, write_image, write_mask
from refedit.data.synthetic import textured_image


def _cocoee(root, ids=("000001", "000002", "000003"), authors=False, size=64):
    rng = np.random.default_rng(0)
    gt, ref, mask = ("GT_3500", "Ref_3500", "Mask_bbox_3500") if authors else ("GT", "Ref", "Mask")
    truth = {}
    for k, i in enumerate(ids):
        img = textured_image((size, size), rng)
        m = np.zeros((size, size), bool)
        m[8 + k: 30 + k, 10:40] = True
        write_image(root / gt / f"{i}_GT.png", img)
        write_image(root / ref / f"{i}_ref.png", textured_image((50, 30), rng))
        write_mask(root / mask / f"{i}_mask.png", m)
        truth[i] = (img, m)
    return truth


@pytest.mark.parametrize("authors", [False, True])
def test_cocoee_layouts_read_exactly(tmp_path, authors):
    truth = _cocoee(tmp_path, authors=authors)
    ds = CocoEEBenchmark(tmp_path, size=64, reference_size=32)
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        validate_sample(s)
        img, m = truth[s["meta"]["id"]]
        np.testing.assert_array_equal(tensor_to_image(s["source"]), img)  # PNG: exact
        np.testing.assert_array_equal(s["mask"][0].numpy() > 0, m)  # 255 = edit -> 1
        assert torch.equal(s["source"], s["target"]) and s["reference"].shape == (3, 32, 32)
    assert collate_edit([ds[0], ds[1]])["mask"].shape == (2, 1, 64, 64)


def test_cocoee_plain_names_and_captions(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "GT" / "7.png", textured_image((32, 32), rng))
    write_image(tmp_path / "Ref" / "7.jpg", textured_image((32, 32), rng))
    write_mask(tmp_path / "Mask" / "7.png", np.ones((32, 32), bool))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"id": "7", "caption": "a cat"}) + "\n")
    s = CocoEEBenchmark(tmp_path, size=32, reference_size=16)[0]
    assert s["caption"] == "a cat" and s["mask"].all()


def test_cocoee_bad_items_are_reported_and_the_rest_comes_through(tmp_path):
    _cocoee(tmp_path, ids=("a", "b", "c", "d"))
    write_mask(tmp_path / "Mask" / "b_mask.png", np.ones((40, 64), bool))  # another size
    (tmp_path / "Ref" / "c_ref.png").unlink()  # missing counterpart
    (tmp_path / "GT" / "d_GT.png").write_bytes(b"not an image")
    with pytest.warns(BadDataWarning, match=r"c_ref\.png: missing file"):
        ds = CocoEEBenchmark(tmp_path, size=64)
    assert [it["id"] for it in ds.items] == ["a", "b", "d"]
    with pytest.warns(BadDataWarning) as rec:
        ids = [ds[i]["meta"]["id"] for i in range(len(ds))]
    msgs = " | ".join(str(w.message) for w in rec)
    assert "b_mask.png: mask size differs from its image" in msgs and "(64, 40) vs image (64, 64)" in msgs
    assert "d_GT.png: corrupt or unreadable file" in msgs
    assert ids == ["a", "a", "a"]
    assert ds.bad_samples_summary()["files"] == 3
    with pytest.raises(MissingFileError, match="c_ref.png"):
        CocoEEBenchmark(tmp_path, on_error="raise")
    (tmp_path / "GT" / "c_GT.png").unlink()
    with pytest.raises(MaskSizeError, match="b_mask.png"):
        CocoEEBenchmark(tmp_path, on_error="raise")[1]


def _folder(root, n=3, with_coarse=True, size=48):
    rng = np.random.default_rng(1)
    for i in range(n):
        write_image(root / "source" / f"s{i}.png", textured_image((size, size + 16), rng))
        m = np.zeros((size, size + 16), bool)
        m[5:20, 5:30] = True
        write_mask(root / "mask" / f"s{i}.png", m)
        write_image(root / "reference" / f"s{i}.jpg", textured_image((40, 24), rng))
        if with_coarse:
            write_image(root / "coarse" / f"s{i}.png", textured_image((size, size + 16), rng))
    (root / "captions.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "caption": f"cap {i}"}) + "\n"
                                                 for i in range(n)))


def test_folder_benchmark_keys_and_defaults(tmp_path):
    _folder(tmp_path)
    ds = FolderBenchmark(tmp_path, size=32, reference_size=16)
    assert ds.keys == ["reference", "coarse"]
    s = ds[1]
    validate_sample(s)
    assert set(s) == {"source", "mask", "reference", "coarse", "valid", "target", "caption", "meta"}
    assert s["valid"].all() and s["caption"] == "cap 1" and not s["meta"]["has_target"]
    assert torch.equal(s["target"], s["source"])
    write_image(tmp_path / "target" / "s0.png", textured_image((48, 64), np.random.default_rng(0)))
    with pytest.warns(UserWarning, match="only some"):
        partial = FolderBenchmark(tmp_path, size=32)
    assert "target" not in partial.keys
    strict = FolderBenchmark(tmp_path, size=32, keys=["reference", "target"])
    assert strict[0]["meta"]["has_target"]
    with pytest.warns(BadDataWarning, match="has no 'target'"):
        assert strict[1]["meta"]["id"] == "s0"


def test_folder_benchmark_from_jsonl_manifest_and_mask_size(tmp_path):
    _folder(tmp_path / "data", n=2, with_coarse=False)
    write_mask(tmp_path / "data" / "mask" / "s1.png", np.ones((10, 10), bool))
    rows = [{"id": f"x{i}", "source": f"data/source/s{i}.png", "mask": f"data/mask/s{i}.png",
             "reference": f"data/reference/s{i}.jpg", "caption": "hello"} for i in range(2)]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = FolderBenchmark(tmp_path / "bench.jsonl", size=32, reference_size=16)
    s = ds[0]
    assert s["caption"] == "hello" and s["meta"]["id"] == "x0" and s["reference"].shape == (3, 16, 16)
    with pytest.warns(BadDataWarning, match=r"s1\.png: mask size differs"):
        assert ds[1]["meta"]["id"] == "x0"
    (tmp_path / "broken.jsonl").write_text('{"id": 1, "source": "a.png"}\n')
    with pytest.raises(Exception, match="needs 'source' and 'mask'"):
        FolderBenchmark(tmp_path / "broken.jsonl")
