"""Flow (OpenCV DIS, composition) and the two warps of Magic Fixup, against exactly known motion."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from numerics import EPS, assert_close_rel
from refedit.data.flow import (
    DISFlow,
    FlowEstimator,
    TorchFlow,
    build_flow_estimator,
    chain_flow,
    compose_flows,
    endpoint_error,
)
from refedit.data.synthetic import moving_square_clip, textured_image
from refedit.data.toyworld import render
from refedit.data.warp import backward_warp, forward_splat, piecewise_affine_warp, segments_from_flow


def _translated_pair(dx: float, dy: float, size: int = 256, seed: int = 0):
    """A textured image and its sub-pixel translation by (dx, dy): exact flow is (dx, dy) everywhere."""
    rng = np.random.default_rng(seed)
    big = textured_image((size + 40, size + 40), rng)
    a = big[20: 20 + size, 20: 20 + size]
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    b = cv2.warpAffine(big, m, big.shape[1::-1], flags=cv2.INTER_CUBIC)[20: 20 + size, 20: 20 + size]
    return a, b


def test_dis_flow_on_translated_texture_is_subpixel():
    a, b = _translated_pair(3.4, -2.2)
    flow = DISFlow("medium")(a, b)
    assert flow.shape == (256, 256, 2) and flow.dtype == np.float32
    gt = np.broadcast_to(np.float32([3.4, -2.2]), flow.shape)
    inner = np.zeros((256, 256), bool)
    inner[16:-16, 16:-16] = True  # away from the border, where content enters the frame
    epe = endpoint_error(flow, gt, inner)
    assert np.median(epe) <= 0.25, np.median(epe)


def test_compose_flows_over_hops_matches_direct_motion():
    a, b = _translated_pair(2.0, 1.0)
    _, c = _translated_pair(4.0, 2.0)
    est = DISFlow("medium")
    flow, valid = chain_flow([a, b, c], est)
    inner = np.zeros(valid.shape, bool)
    inner[20:-20, 20:-20] = True
    assert np.median(endpoint_error(flow, np.float32([4.0, 2.0]) + 0 * flow, inner & valid)) <= 0.35
    # composition itself is exact for exact flows
    f01 = np.full((32, 32, 2), 1.5, np.float32)
    f12 = np.zeros((32, 32, 2), np.float32)
    f12[..., 0] = np.arange(32)[None, :] * 0.1  # u depends on x: f02(x) = 1.5 + 0.1 * (x + 1.5)
    f02, inside = compose_flows(f01, f12)
    xs = np.arange(32)[None, :].repeat(32, 0)
    ok = inside & (xs < 29)
    # a linear field sampled bilinearly at an exactly representable offset: a few float32 roundings
    assert_close_rel(f02[..., 0][ok], (1.5 + 0.1 * (xs + 1.5))[ok], rel=16 * EPS, what="composed flow")
    assert not inside[:, -1].any()  # x + 1.5 leaves the 32-px frame


def test_dis_estimator_is_a_flow_estimator_and_picklable():
    est = build_flow_estimator("dis", preset="fast")
    assert isinstance(est, FlowEstimator)
    a, b = _translated_pair(1.0, 0.0, size=64)
    est(a, b)  # creates the OpenCV object
    clone = pickle.loads(pickle.dumps(est))  # a dataset holding it goes to DataLoader workers
    assert clone(a, b).shape == (64, 64, 2)
    with pytest.raises(ValueError, match="preset"):
        DISFlow("slowest")


def test_torch_flow_adapter_pads_and_loads_local_weights(tmp_path):
    import torch

    class Shift(torch.nn.Module):  # a "learned" model: constant flow read from its weights
        def __init__(self):
            super().__init__()
            self.uv = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x0, x1):
            assert x0.shape[-1] % 8 == 0 and x0.shape[-2] % 8 == 0
            return [self.uv.view(1, 2, 1, 1).expand(1, 2, *x0.shape[-2:])]

    m = Shift()
    with torch.no_grad():
        m.uv.copy_(torch.tensor([1.5, -2.0]))
    torch.save({"module.uv": m.uv.detach()}, tmp_path / "w.pt")
    est = TorchFlow(Shift, tmp_path / "w.pt")
    f = est(np.zeros((30, 45, 3), np.uint8), np.zeros((30, 45, 3), np.uint8))
    assert f.shape == (30, 45, 2)
    np.testing.assert_array_equal(f[0, 0], [1.5, -2.0])  # padded and cropped back: the model's values as they are
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TorchFlow(Shift, tmp_path / "missing.pt")


def test_forward_splat_nearest_and_bilinear_reproduce_a_translation():
    rng = np.random.default_rng(1)
    img = textured_image((64, 64), rng)
    flow = np.zeros((64, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = 5, -3
    for mode in ("nearest", "bilinear"):
        out, valid = forward_splat(img, flow, mode=mode)
        assert out.dtype == np.uint8 and out.shape == img.shape
        np.testing.assert_array_equal(out[:-3, 5:][valid[:-3, 5:]], img[3:, :-5][valid[:-3, 5:]])
        assert not valid[:, :5].any() and not valid[-3:].any()  # holes where nothing lands
        assert valid[:-3, 5:].all()


def test_forward_splat_zbuffer_keeps_the_nearest_surface():
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, :10] = 200  # left half moves right by 5 onto the right half
    flow = np.zeros((20, 20, 2), np.float32)
    flow[:, :10, 0] = 5
    depth = np.ones((20, 20), np.float32)
    depth[:, :10] = 0.5  # the mover is nearer: it must win where it lands
    out, valid = forward_splat(img, flow, depth=depth)
    assert (out[:, 5:15] == 200).all() and (out[:, 15:] == 0).all()
    assert not valid[:, :5].any() and valid[:, 5:].all()
    depth[:, :10] = 2.0  # now it passes behind the static half
    out, _ = forward_splat(img, flow, depth=depth)
    assert (out[:, 10:15] == 0).all() and (out[:, 5:10] == 200).all()
    out, _ = forward_splat(img, flow)  # no depth: colliding pixels are averaged
    assert (out[:, 10:15] == 100).all()


def test_backward_warp_inverts_a_translation():
    rng = np.random.default_rng(2)
    img = textured_image((48, 48), rng)
    flow = np.zeros((48, 48, 2), np.float32)
    flow[..., 0] = 4  # out(x) = img(x + 4)
    out, valid = backward_warp(img, flow, interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(out[:, :-4], img[:, 4:])
    assert valid[:, :-4].all() and not valid[:, -4:].any()


def test_piecewise_affine_recovers_per_segment_similarities():
    rng = np.random.default_rng(3)
    h = w = 96
    img = textured_image((h, w), rng)
    seg = np.zeros((h, w), np.int32)
    seg[30:60, 20:50] = 1
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    # background: translation (2, 1); object: rotation 10 deg about its centre + translation (15, 5)
    flow = np.stack([np.full((h, w), 2.0), np.full((h, w), 1.0)], -1).astype(np.float32)
    a = np.deg2rad(10)
    cx, cy = 35, 45
    rx = np.cos(a) * (xs - cx) - np.sin(a) * (ys - cy) + cx + 15
    ry = np.sin(a) * (xs - cx) + np.cos(a) * (ys - cy) + cy + 5
    flow[seg == 1] = np.stack([rx - xs, ry - ys], -1)[seg == 1]
    flow += rng.normal(0, 0.3, flow.shape).astype(np.float32)  # noisy flow: the fit must average it out
    coarse, valid, mats = piecewise_affine_warp(img, flow, seg, rng=rng)
    assert set(mats) == {0, 1}
    np.testing.assert_allclose(mats[0], [[1, 0, 2], [0, 1, 1]], atol=0.05)
    np.testing.assert_allclose(mats[1][:, :2], [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], atol=0.01)
    # the object is composited over the background (largest segment first, i.e. behind)
    m1 = cv2.warpAffine((seg == 1).astype(np.uint8), mats[1], (w, h)) > 0
    obj = cv2.warpAffine(img, mats[1], (w, h))
    inner = cv2.erode(m1.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    np.testing.assert_array_equal(coarse[inner], obj[inner])
    assert valid[inner].all() and not valid[0, :2].any()  # the top-left corner is a hole after (2, 1)
    # depth reorders: a far object goes behind the background
    depth = np.where(seg == 1, 5.0, 1.0).astype(np.float32)
    coarse2, _, _ = piecewise_affine_warp(img, flow, seg, depth=depth, rng=rng)
    bg = cv2.warpAffine(img, mats[0], (w, h))
    m0 = cv2.warpAffine((seg == 0).astype(np.uint8) * 255, mats[0], (w, h)) >= 128
    over = inner & m0  # where the background lands on the object, the background now wins
    assert over.sum() > 50
    np.testing.assert_array_equal(coarse2[over], bg[over])


def test_segments_from_flow_separates_two_motions():
    _, masks, flow = moving_square_clip((64, 64), 2, velocity=(6.0, 0.0), pan=(0, 1))
    lab = segments_from_flow(flow, k=2, position_weight=0.0)
    obj, bg = lab[masks[0]], lab[~masks[0]]
    assert (obj == np.bincount(obj).argmax()).mean() > 0.95 and np.bincount(obj).argmax() != np.bincount(bg).argmax()


# ------------------------------------------------------------------------------ on toyworld clips

def _toy_pair(seed: int, frames: int, a: int, size: int = 256):
    clip = render.render_clip(seed, size=size, frames=frames, which=[a, a + 1])
    rgb = np.asarray(clip.rgb)
    if rgb.shape[-1] != 3:  # (F, 3, H, W) -> (F, H, W, 3)
        rgb = rgb.transpose(0, 2, 3, 1)
    rgb = (rgb * 255).round().astype(np.uint8)
    flow = np.asarray(clip.flow(a, a + 1))
    if flow.shape[0] == 2:
        flow = flow.transpose(1, 2, 0)
    owner = np.asarray(clip.owner)
    # object pixels that stay visible: the same object owns the pixel where the exact flow lands
    h, w = owner.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w]
    tx = np.clip(np.round(xs + flow[..., 0]).astype(int), 0, w - 1)
    ty = np.clip(np.round(ys + flow[..., 1]).astype(int), 0, h - 1)
    visible = (owner[0] >= 0) & (owner[1][ty, tx] == owner[0])
    return rgb[0], rgb[1], flow.astype(np.float32), visible, np.asarray(clip.depth)[0]


def test_dis_flow_epe_on_toyworld_clips():
    """32-frame clips at 256 px (0.2-4 px per frame: moderate motion), objects that stay visible, six scenes
    (texture-less and striped objects included: DIS's hard cases)."""
    epes, medians = [], []
    for seed in range(6):
        a, b, gt, visible, _ = _toy_pair(seed, frames=32, a=8)
        assert visible.sum() > 500
        e = endpoint_error(DISFlow("medium")(a, b), gt, visible)
        epes.append(e)
        medians.append(float(np.median(e)))
    pooled = float(np.median(np.concatenate(epes)))
    assert pooled <= 1.0 and max(medians) <= 1.5, (pooled, medians)


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_splat_by_exact_flow_matches_next_toyworld_frame(seed):
    """Exact flow + z-buffer: the warp reproduces frame t up to 8-bit rounding, nearest-pixel resampling
    and shading that follows the light (the flow cannot carry it)."""
    a, b, gt, _, depth = _toy_pair(seed, frames=16, a=3)
    moved = cv2.erode((np.linalg.norm(gt, axis=-1) >= 1.0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert moved.sum() > 300
    warped, valid = forward_splat(a, gt, depth=depth)
    _, landed = forward_splat(moved.astype(np.uint8), gt, depth=depth, mask=moved)
    err = np.abs(warped.astype(np.float32) - b).mean(-1)
    still = np.abs(a.astype(np.float32) - b).mean(-1)  # error without warping
    sel = valid & landed
    assert valid.mean() > 0.95
    assert err[valid].mean() <= 3.0 and np.median(err[valid]) <= 1.0, err[valid].mean()
    assert err[sel].mean() <= 0.6 * still[sel].mean(), (err[sel].mean(), still[sel].mean())
