"""Paint-by-Example self-reference construction: Bezier masks, extended boxes, reference augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refedit.batch import collate_edit, validate_sample
from refedit.data.boxes import CocoBoxes
from refedit.data.self_reference import (
    ReferenceAugment,
    SelfReference,
    SelfReferenceDataset,
    bezier_mask,
    bezier_polygon,
    extend_box,
    pad_box,
    rect_mask,
)
from refedit.data.synthetic import textured_image, write_coco_folder


def _random_box(rng, h, w):
    bw, bh = rng.uniform(30, w / 2), rng.uniform(30, h / 2)
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.array([x0, y0, x0 + bw, y0 + bh], np.float32)


@pytest.mark.parametrize("seed", range(25))
def test_bezier_mask_covers_the_box_and_stays_in_the_extended_box(seed):
    rng = np.random.default_rng(seed)
    h, w = 240, 320
    box = _random_box(rng, h, w)
    ext = extend_box(box, (h, w), rng, 0.4)
    mask = bezier_mask(box, ext, (h, w), rng, n_points=20, jitter=(1, 5))
    j = 5  # the jitter margin
    x0, y0, x1, y1 = box
    inner = mask[int(np.ceil(y0 + j)): int(np.floor(y1 - j)), int(np.ceil(x0 + j)): int(np.floor(x1 - j))]
    assert inner.size > 0 and inner.mean() >= 0.95, inner.mean()
    grown = rect_mask(np.array([ext[0] - j - 1, ext[1] - j - 1, ext[2] + j + 1, ext[3] + j + 1]), (h, w))
    assert not (mask & ~grown).any()
    assert mask.sum() > 0.9 * (x1 - x0 - 2 * j) * (y1 - y0 - 2 * j)


def test_bezier_polygon_has_jittered_points_per_side():
    rng = np.random.default_rng(0)
    box, ext = np.array([50, 50, 100, 90.0]), np.array([30, 40, 130, 100.0])
    poly = bezier_polygon(box, ext, rng, n_points=20, jitter=(1, 5))
    assert poly.shape == (80, 2)
    # without jitter the top curve's apex sits half-way to the extended top edge (quadratic Bezier)
    clean = bezier_polygon(box, ext, rng, n_points=21, jitter=(0, 0))
    np.testing.assert_allclose(clean[10], [75, (50 + 40) / 2])
    d = np.abs(poly - bezier_polygon(box, ext, np.random.default_rng(0), 20, (0, 0)))
    assert d.max() <= 5 and d.min() >= 1


@pytest.mark.parametrize("seed", range(10))
def test_extend_box_grows_each_side_within_40_percent_of_free_space(seed):
    rng = np.random.default_rng(seed)
    h, w = 200, 300
    box = _random_box(rng, h, w)
    ext = extend_box(box, (h, w), rng, 0.4)
    free = np.array([box[0], box[1], w - box[2], h - box[3]])
    grow = np.array([box[0] - ext[0], box[1] - ext[1], ext[2] - box[2], ext[3] - box[3]])
    assert (grow >= 0).all() and (grow <= 0.4 * free + 1e-4).all()
    pb = pad_box(box, (h, w), rng, 10)
    assert (pb[:2] >= 0).all() and pb[2] <= w and pb[3] <= h
    assert pb[0] >= np.floor(box[0]) - 10 and pb[2] <= np.ceil(box[2]) + 10


def test_reference_augmentation_keeps_shape_range_and_is_reproducible():
    crop = textured_image((37, 61), np.random.default_rng(0))
    aug = ReferenceAugment(size=64, p_flip=1, p_rotate=1, p_blur=1, p_elastic=1)
    out, params = aug(crop, np.random.default_rng(1))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert set(params) == {"hflip", "angle", "blur", "elastic"} and abs(params["angle"]) <= 20
    again, _ = aug(crop, np.random.default_rng(1))
    assert torch.equal(out, again)  # the same seed: the same augmentation, bit for bit
    plain, p0 = ReferenceAugment(size=64, p_flip=0, p_rotate=0, p_blur=0, p_elastic=0)(crop, np.random.default_rng(1))
    assert p0 == {} and not torch.equal(plain, out)
    flipped, _ = ReferenceAugment(size=64, p_flip=1, p_rotate=0, p_blur=0, p_elastic=0)(crop, np.random.default_rng(1))
    assert torch.equal(flipped, plain.flip(-1))  # a flip moves pixels, it computes nothing


def test_self_reference_sample_follows_the_schema():
    rng = np.random.default_rng(0)
    img = textured_image((120, 200), rng)
    box = np.array([60, 30, 120, 90], np.float32)
    build = SelfReference(size=64, reference_size=32, p_bezier=1.0)
    s = build(img, box, np.random.default_rng(4), caption="dog", meta={"id": 1})
    validate_sample(s)
    assert s["source"].shape == (3, 64, 64) and s["reference"].shape == (3, 32, 32) and s["mask"].shape == (1, 64, 64)
    assert torch.equal(s["source"], s["target"]) and s["caption"] == "dog"
    m = s["meta"]
    assert m["mask_kind"] == "bezier" and m["id"] == 1
    x0, y0, x1, y1 = m["box"]
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64  # the box survives the crop
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    assert s["mask"][0, cy, cx] == 1
    r = SelfReference(size=64, reference_size=32, p_bezier=0.0)(img, box, np.random.default_rng(4))
    ex = np.array(r["meta"]["extended_box"])
    assert r["meta"]["mask_kind"] == "box"
    assert abs(r["mask"].sum().item() - (ex[2] - ex[0]) * (ex[3] - ex[1])) < 2 * (ex[2] - ex[0] + ex[3] - ex[1]) + 4


def test_self_reference_dataset_over_coco_is_deterministic_and_batches(tmp_path):
    root = write_coco_folder(tmp_path, images=4, size=(96, 128))
    src = CocoBoxes(root / "instances.json", root / "images", min_area=0.02, max_area=0.8)
    ds = SelfReferenceDataset(src, size=64, reference_size=32, seed=3)
    a, b = ds[1], SelfReferenceDataset(CocoBoxes(root / "instances.json", root / "images"), size=64,
                                       reference_size=32, seed=3)[1]
    for k in ("source", "mask", "reference"):
        assert torch.equal(a[k], b[k]), k  # the same seed and index: the same sample, bit for bit
    assert a["caption"] in {"cat", "dog"}
    assert a["meta"]["path"].endswith("0001.png")
    batch = collate_edit([ds[i] for i in range(len(ds))])
    validate_sample(batch, batched=True)
    assert batch["mask"].shape == (4, 1, 64, 64)
    kinds = {ds[i]["meta"]["mask_kind"] for i in range(len(ds)) for ds in [SelfReferenceDataset(src, size=32,
             reference_size=16, seed=s) for s in range(4)]}
    assert kinds == {"bezier", "box"}
