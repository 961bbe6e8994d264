"""Paint-by-Example self-reference construction: Bezier masks, extended boxes, reference augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from numerics import EPS, assert_close_rel
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
    aug = ReferenceAugment(p_flip=1, p_rotate=1, p_blur=1, p_elastic=1)
    out, params = aug(crop, np.random.default_rng(1), out_size=64)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert set(params) == {"hflip", "angle", "blur", "elastic"} and abs(params["angle"]) <= 20
    again, _ = aug(crop, np.random.default_rng(1), out_size=64)
    assert torch.equal(out, again)  # the same seed: the same augmentation, bit for bit
    none = dict(p_flip=0, p_rotate=0, p_blur=0, p_elastic=0)
    plain, p0 = ReferenceAugment(**none)(crop, np.random.default_rng(1), out_size=64)
    assert p0 == {} and not torch.equal(plain, out)
    flipped, _ = ReferenceAugment(**{**none, "p_flip": 1})(crop, np.random.default_rng(1), out_size=64)
    # the flip happens at 224 px before the resize: mirrored resampling sums in another order
    assert_close_rel(flipped, plain.flip(-1), rel=16 * EPS, what="flip then resize vs resize then flip")
    assert ReferenceAugment(**none)(crop, np.random.default_rng(1))[0].shape == (3, 224, 224)  # the authors' size


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


# ------------------------------------------------ the authors' augmentation (albumentations 0.4.3 defaults)
AUTHORS_SIZE = 224  # Fantasy-Studio/Paint-by-Example ldm/data/open-images.py: A.Resize(224, 224) first


def _coordinate_image(s: int) -> torch.Tensor:
    """Channels x / s and y / s: bilinear resampling of a linear image is exact, so the output reads back, at every
    pixel whose source lies inside the image, the source coordinate it sampled."""
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float64), torch.arange(s, dtype=torch.float64), indexing="ij")
    return torch.stack([xx / s, yy / s, torch.zeros_like(xx)])[None].float()


def _fit_source_map(out: torch.Tensor, half: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The affine map output pixel -> source pixel (A, b) read back from an augmented coordinate image.

    Where the source lies outside the image the read-back is reflected (BORDER_REFLECT_101), so a block of output
    pixels reads back either the true map or a folded copy of it: mirrored (det < 0), turned by 180 degrees
    (negative diagonal; the true map's diagonal is positive for every draw of the authors' parameters) or shifted
    by whole fold periods 2 (S - 1). The fit takes the block nearest the centre whose read-back is exactly affine
    and not mirrored or turned, then removes the period shift (the true source of the centre lies within half a
    period of it)."""
    s = out.shape[-1]
    src = out[0, :2].double().numpy() * s  # (2, S, S) source x, y per output pixel
    c = s // 2
    starts = sorted(((y, x) for y in range(0, s - 2 * half + 1, half) for x in range(0, s - 2 * half + 1, half)),
                    key=lambda yx: (yx[0] + half - c) ** 2 + (yx[1] + half - c) ** 2)
    for y0, x0 in starts:
        block = src[:, y0:y0 + 2 * half, x0:x0 + 2 * half].reshape(2, -1).T
        yy, xx = np.mgrid[y0:y0 + 2 * half, x0:x0 + 2 * half]
        p = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)], 1)
        sol = np.linalg.lstsq(p, block, rcond=None)[0]
        a, b = sol[:2].T, sol[2]
        exact = np.abs(p @ sol - block).max() < 1e-2  # but for the float32 read-back (~1e-5 px)
        if exact and np.linalg.det(a) > 0 and a[0, 0] > 0 and a[1, 1] > 0:
            period = 2 * (s - 1)
            centre = np.array([c, c], dtype=np.float64)
            return a, b + np.round((centre - (a @ centre + b)) / period) * period
    raise AssertionError("no block of the augmented coordinate image reads back an unfolded affine map")


def _pattern(s: int) -> torch.Tensor:
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    img = np.stack([0.5 + 0.25 * np.sin(2 * np.pi * xx / 37) + 0.25 * np.cos(2 * np.pi * yy / 53),
                    0.5 + 0.4 * np.sin(2 * np.pi * (xx + yy) / 61), 0.5 + 0.4 * np.cos(2 * np.pi * xx / 29)])
    return torch.from_numpy(img)[None]


#: OpenCV's warpAffine / remap quantise sampling positions to 1/32 px: at the test pattern's steepest slope
#: (0.09 per px) that is 0.003; twice that for the two resamplings of the elastic transform
CV2_TOL = 0.006

ONLY = dict(p_flip=0.0, p_rotate=0.0, p_blur=0.0, p_elastic=0.0)


def test_reference_augmentation_ops_are_the_authors_opencv_ops():
    """Each step against albumentations 0.4.3's own OpenCV calls (functional.rotate / blur / elastic_transform)."""
    import cv2
    from scipy.ndimage import gaussian_filter

    from refedit.data.reference_augment import elastic_fields, smooth_noise

    s = AUTHORS_SIZE
    x = _pattern(s)
    img = x[0].permute(1, 2, 0).numpy().copy()
    aug = ReferenceAugment()

    def ours(params):
        return aug.apply(x, params)[0].permute(1, 2, 0).numpy()

    for angle in (-20.0, 7.5, 20.0):
        m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0)
        ref = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(ours({"angle": angle}), ref, atol=CV2_TOL)
    for k in (3, 5, 7):
        np.testing.assert_allclose(ours({"blur": k}), cv2.blur(img, (k, k)), atol=1e-5)
    noise = np.random.default_rng(0).random((s, s)) * 2 - 1
    np.testing.assert_allclose(smooth_noise(noise, 50.0), gaussian_filter(noise, 50.0), atol=1e-12)
    for seed in (0, 1, 2):
        m, dx, dy = elastic_fields(seed, (s, s), 1.0, 50.0, 50.0)
        warped = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        xx, yy = np.meshgrid(np.arange(s), np.arange(s))
        ref = cv2.remap(warped, np.float32(xx + dx), np.float32(yy + dy), interpolation=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(ours({"elastic": seed}), ref, atol=CV2_TOL)


def test_reference_augmentation_statistics_match_the_authors_parameters():
    """Measured on test patterns, at the authors' 224 px: rotation angle range and reflected (never black)
    borders; the elastic transform's random affine (anchors moved by U(-50, 50) px) and its sub-pixel
    displacement field (alpha 1, sigma 50); how often each step applies and the blur kernel sizes."""
    s = AUTHORS_SIZE
    coords = _coordinate_image(s)
    rng = np.random.default_rng(0)

    rotate = ReferenceAugment(**{**ONLY, "p_rotate": 1.0})
    angles = []
    for _ in range(200):
        out, (p,) = rotate.augment(coords, rng)
        a, _ = _fit_source_map(out)
        angles.append(np.degrees(np.arctan2(a[1, 0], a[0, 0])))  # inverse of cv2's counter-clockwise rotation
        assert abs(angles[-1] - p["angle"]) < 1e-2
    angles = np.array(angles)
    assert np.abs(angles).max() <= 20 + 1e-2 and np.abs(angles).max() > 18
    assert abs(angles.std() - 20 / np.sqrt(3)) < 1.5  # U(-20, 20): sd of the sample sd ~0.37 at n=200
    white = torch.ones(1, 3, s, s)
    for angle in (-20.0, 20.0):  # a rotated white image stays white: the corners are reflected, not padded black
        assert rotate.apply(white, {"angle": angle}).min() > 1 - 1e-5

    from refedit.data.reference_augment import elastic_anchors, elastic_fields

    elastic = ReferenceAugment(**{**ONLY, "p_elastic": 1.0})
    anchors = elastic_anchors((s, s)).astype(np.float64)
    offsets, field_rms = [], []
    for _ in range(300):
        out, (p,) = elastic.augment(coords, rng)
        a, b = _fit_source_map(out)
        moved = (np.linalg.inv(a) @ (anchors - b).T).T  # the forward map sends each anchor where it was moved
        offsets.append(moved - anchors)
        _, dx, dy = elastic_fields(p["elastic"], (s, s), 1.0, 50.0, 50.0)
        field_rms.append(float(np.sqrt((dx.astype(np.float64) ** 2 + dy ** 2).mean())))
    off = np.concatenate(offsets).ravel()
    # each anchor coordinate ~ U(-50, 50): |max| <= 50, sd 50/sqrt(3) (+-0.3 at n=1800), mean |.| 25 (+-0.34)
    assert np.abs(off).max() <= 50 + 0.05 and np.abs(off).max() > 48
    assert abs(off.std() - 50 / np.sqrt(3)) < 1.5 and abs(np.abs(off).mean() - 25) < 1.5
    assert max(field_rms) < 0.05  # alpha=1 times noise smoothed by a 50 px Gaussian: a small fraction of a pixel

    draws = [ReferenceAugment().draw(rng) for _ in range(4000)]
    for key, p in (("hflip", 0.5), ("angle", 0.5), ("blur", 0.3), ("elastic", 0.3)):
        freq = np.mean([key in d for d in draws])
        assert abs(freq - p) < 0.035, (key, freq)  # binomial sd <= 0.008 at n=4000
    assert {d["blur"] for d in draws if "blur" in d} == {3, 5, 7}
