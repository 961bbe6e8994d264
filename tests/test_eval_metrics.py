from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numerics import EPS, assert_close_rel
from refedit.eval.metrics import (
    PSNR_CAP_DB,
    FrechetDistance,
    KernelDistance,
    Timer,
    clip_features,
    frechet_distance,
    frechet_video_distance,
    identity_score,
    mask_bbox,
    mean_ci95,
    measure,
    psnr_bbox,
    psnr_masked,
    psnr_unmasked,
    region_crops,
    ssim_bbox,
    ssim_masked,
)


def _images(n=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 1.6 - 0.8  # headroom for +- offsets without clipping


def _box_mask(n, h, w, box):
    m = torch.zeros(n, 1, h, w)
    x0, y0, x1, y1 = box
    m[..., y0:y1, x0:x1] = 1
    return m


def test_psnr_constant_offset_gives_known_value():
    target = _images()
    mask = _box_mask(3, 32, 32, (4, 6, 20, 18))
    # an offset of d in [-1,1] is d/2 in [0,1]: MSE = d^2/4, PSNR = -10 log10(d^2 / 4)
    d = 0.1
    pred = target + d * mask
    expected = -10 * math.log10(d**2 / 4)
    # dB are a log scale: 1e-3 dB is a relative bound on the MSE (2.3e-4), far above the float32 rounding of the
    # offsets (a few EPS of each) and far below what a wrong data range (6 dB) or region would give
    assert torch.allclose(psnr_masked(pred, target, mask), torch.full((3,), expected), atol=1e-3)
    # nothing changed outside the mask: background PSNR is the cap
    assert torch.equal(psnr_unmasked(pred, target, mask), torch.full((3,), PSNR_CAP_DB))
    pred2 = target + d * (1 - mask)
    assert torch.allclose(psnr_unmasked(pred2, target, mask), torch.full((3,), expected), atol=1e-3)
    assert torch.equal(psnr_masked(pred2, target, mask), torch.full((3,), PSNR_CAP_DB))


def test_psnr_per_sample_and_empty_mask_is_nan():
    target = _images()
    mask = _box_mask(3, 32, 32, (0, 0, 16, 16))
    mask[2] = 0
    pred = target.clone()
    pred[0] += 0.2 * mask[0]
    pred[1] += 0.05 * mask[1]
    v = psnr_masked(pred, target, mask)
    assert v[0] < v[1] < PSNR_CAP_DB and math.isnan(v[2])
    assert v[1] - v[0] == pytest.approx(20 * math.log10(4), abs=1e-3)  # 4x error -> 12.04 dB less


def test_bbox_psnr_matches_masked_psnr_for_box_masks():
    target = _images()
    mask = _box_mask(3, 32, 32, (5, 3, 21, 27))
    pred = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert torch.allclose(psnr_bbox(pred, target, mask), psnr_masked(pred, target, mask), atol=1e-3)
    assert torch.equal(mask_bbox(mask), torch.tensor([[5, 3, 21, 27]] * 3))


def test_ssim_identical_is_one_and_mask_restricts_region():
    target = _images(h=40, w=40)
    mask = _box_mask(3, 40, 40, (20, 0, 40, 40))
    # identical images: every SSIM ratio is 1 up to a rounding or two, then a mean over the region (pairwise
    # float32 sums: ~log2(n) EPS)
    assert_close_rel(ssim_masked(target, target, mask), torch.ones(3), rel=64 * EPS, what="masked SSIM")
    assert_close_rel(ssim_bbox(target, target, mask), torch.ones(3), rel=64 * EPS, what="bbox SSIM")
    noisy = target.clone()
    noisy[..., :12] = -noisy[..., :12]  # corrupt only far outside the mask (beyond the 11 px window)
    assert_close_rel(ssim_masked(noisy, target, mask), torch.ones(3), rel=64 * EPS, what="masked SSIM, noisy outside")
    assert torch.equal(psnr_masked(noisy, target, mask), torch.full((3,), PSNR_CAP_DB))
    assert (psnr_unmasked(noisy, target, mask) < 30).all()
    inside = target.clone()
    inside[..., 28:] = -inside[..., 28:]
    assert (ssim_masked(inside, target, mask) < 0.9).all()
    assert (ssim_bbox(inside, target, mask) < 0.9).all()


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="mask"):
        psnr_masked(_images(), _images(), torch.ones(3, 1, 16, 16))
    with pytest.raises(ValueError, match="differ"):
        ssim_masked(_images(), _images(h=16, w=16), torch.ones(3, 1, 32, 32))


def _mean_colour_fn(x: torch.Tensor) -> torch.Tensor:
    """A deterministic feature fn: per-channel means and stds of 4 quadrants (24-d)."""
    q = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
    half = x.shape[-2] // 2
    s = torch.stack([x[..., :half, :].std((-1, -2)), x[..., half:, :].std((-1, -2))], 1)
    return torch.cat([q, s.flatten(1), x.mean((-1, -2))], 1)


_mean_colour_fn.dim = 21  # type: ignore[attr-defined]


def test_identity_score_identical_is_one_and_background_is_removed():
    img = _images(4, 32, 32)
    mask = _box_mask(4, 32, 32, (8, 8, 24, 20))
    # the cosine of a feature with itself: a float32 dot product over D terms, at most D EPS off 1
    cos_rel = _mean_colour_fn.dim * EPS
    assert_close_rel(identity_score(img, img, mask, mask, _mean_colour_fn), torch.ones(4), rel=cos_rel, what="cos")
    # a reference that is the object crop alone (another image size) scores 1 against the edited region
    ref = region_crops(img, mask, 48)
    s = identity_score(img, ref, mask, None, _mean_colour_fn, size=48)
    assert_close_rel(s, torch.ones(4), rel=cos_rel, what="cosine to the crop")
    # changing the background outside the mask does not change the score; changing the object does
    other = img.clone()
    other[mask.expand_as(img) < 0.5] = 0.3
    assert_close_rel(identity_score(other, img, mask, mask, _mean_colour_fn), torch.ones(4), rel=cos_rel,
                     what="cosine, background changed")
    recoloured = img.clone()
    recoloured[:, 0][mask[:, 0] > 0] = 1.0
    assert (identity_score(recoloured, img, mask, mask, _mean_colour_fn) < 0.999).all()


def test_region_crops_pad_to_square_with_black():
    img = torch.ones(1, 3, 20, 20)
    mask = _box_mask(1, 20, 20, (0, 0, 20, 6))  # a 20 x 6 box at the top edge -> 20 x 20 window, 7 rows above
    crop = region_crops(img, mask, 20, remove_background=False)
    assert crop.shape == (1, 3, 20, 20)
    assert torch.all(crop[..., :7, :] == -1)  # padding outside the image is black
    assert torch.all(crop[..., 7:, :] == 1)  # image rows 0-12, background kept
    crop_bg = region_crops(img, mask, 20)
    assert torch.all(crop_bg[..., 7:13, :] == 1)
    assert torch.all(crop_bg[..., 13:, :] == -1)  # background removed


def _gaussian_images(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 1, 1, generator=g) * 0.3 + shift
    return (base + 0.05 * torch.randn(n, 3, 8, 8, generator=g)).clamp(-1, 1)


def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    real = _gaussian_images(200)
    fd = FrechetDistance(_mean_colour_fn)
    fd.update(real, real=True)
    fd.update(real, real=False)
    assert abs(float(fd.compute())) < 1e-3
    fd.reset()
    fd.update(real, real=True)
    fd.update(_gaussian_images(200, seed=1), real=False)
    same_dist = float(fd.compute())
    fd.reset()
    fd.update(real, real=True)
    fd.update(_gaussian_images(200, shift=0.4, seed=1), real=False)
    shifted = float(fd.compute())
    assert shifted > 5 * same_dist and shifted > 0.1
    # precomputed features give the same score
    fd2 = FrechetDistance(_mean_colour_fn)
    fd2.update_features(_mean_colour_fn(real), real=True)
    fd2.update_features(_mean_colour_fn(_gaussian_images(200, shift=0.4, seed=1)), real=False)
    assert float(fd2.compute()) == pytest.approx(shifted, rel=1e-4)
    fd2.update_features(_mean_colour_fn(_gaussian_images(200, shift=-0.4, seed=2)), real=False)
    assert float(fd2.compute()) != pytest.approx(shifted, rel=1e-2)  # new features invalidate the cached value
    assert float(frechet_distance(_mean_colour_fn(real), _mean_colour_fn(real))) == pytest.approx(0, abs=1e-3)


def test_kernel_distance_adapts_subset_size_and_orders_shifts():
    real = _gaussian_images(30)
    kd = KernelDistance(_mean_colour_fn, subsets=10)  # default subset_size 1000 > 30 samples
    kd.update(real, real=True)
    kd.update(_gaussian_images(30, seed=1), real=False)
    near, _ = kd.compute()
    assert kd.subset_size == 30
    kd2 = KernelDistance(_mean_colour_fn, subsets=10)
    kd2.update(real, real=True)
    kd2.update(_gaussian_images(30, shift=0.5, seed=1), real=False)
    far, _ = kd2.compute()
    assert float(far) > float(near) + 0.01
    again = KernelDistance(_mean_colour_fn, subsets=10, subset_size=10)
    again.update(real, real=True)
    again.update(_gaussian_images(30, seed=1), real=False)
    assert torch.equal(again.compute()[0], again.compute()[0])  # fixed seed: reproducible subsets
    tiny = KernelDistance(_mean_colour_fn)
    tiny.update(real[:1], real=True)
    tiny.update(real[:1], real=False)
    with pytest.raises(RuntimeError, match=">= 2"):
        tiny.compute()


def test_fvd_style_distance():
    g = torch.Generator().manual_seed(0)
    clips = (torch.rand(40, 1, 3, 1, 1, generator=g) * 1.2 - 0.6).expand(40, 4, 3, 8, 8).clone()
    feats = clip_features(clips, _mean_colour_fn)
    assert feats.shape == (40, 42) and torch.all(feats[:, 21:] == 0)  # static clips: no temporal change
    assert abs(float(frechet_video_distance(clips, clips, _mean_colour_fn))) < 1e-3
    flicker = clips.clone()
    flicker[:, 1::2] += 0.3 * torch.randn(40, 2, 3, 1, 1, generator=g)  # same mean frame, per-frame jitter
    assert float(frechet_video_distance(clips, flicker.clamp(-1, 1), _mean_colour_fn)) > 0.05


def test_mean_ci95_known_values():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    # t_{0.975, 4} = 2.776445; std (ddof 1) = sqrt(2.5)
    assert half == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-5)
    m1, h1 = mean_ci95([7.0])
    assert m1 == 7.0 and math.isnan(h1)
    m2, h2 = mean_ci95(torch.tensor([2.0, float("nan"), 2.0]))
    assert m2 == 2.0 and h2 == 0.0
    assert all(math.isnan(v) for v in mean_ci95([]))
    assert mean_ci95(np.array([[1.0, 3.0]]))[0] == 2.0


def test_timer_and_measure():
    with Timer(n=4) as t:
        big = torch.ones(2_000_000, dtype=torch.float64)  # 16 MB
        big.add_(1)
        sum(range(200_000))
    assert t.seconds > 0 and t.seconds_per_sample == pytest.approx(t.seconds / 4)
    assert t.peak_mem_mb > 0 and t.mem_delta_mb >= 0
    del big
    out, stats = measure(lambda a, b: a + b, 2, b=3, n=2)
    assert out == 5 and set(stats) == {"seconds", "peak_mem_mb", "mem_delta_mb"} and stats["seconds"] >= 0
    with pytest.raises(ValueError):
        Timer(n=0)
