"""Geometric helpers move boxes and masks with their image; edit-mask generators."""

from __future__ import annotations

import numpy as np
import pytest

from refedit.data.transforms import (
    box_to_mask,
    boxes_inside,
    crop,
    crop_resize,
    fit_square,
    grid_mask,
    mask_to_box,
    random_box_mask,
    random_square_crop,
    random_square_window,
    resize,
    square_pad,
)


def _scene(h=60, w=100):
    img = np.zeros((h, w, 3), np.uint8)
    box = np.array([[20, 10, 50, 40]], np.float32)
    img[10:40, 20:50] = 255
    return img, box, box_to_mask(box[0], (h, w))


def test_resize_moves_boxes_and_masks():
    img, box, mask = _scene()
    out, b, (m,) = resize(img, (120, 50), boxes=box, masks=[mask])
    assert out.shape == (120, 50, 3) and m.shape == (120, 50) and m.dtype == bool
    np.testing.assert_allclose(b[0], [10, 20, 25, 80])
    np.testing.assert_allclose(mask_to_box(m), b[0], atol=1)
    np.testing.assert_allclose(mask_to_box(out[..., 0] > 127), b[0], atol=1)


def test_crop_pads_outside_and_shifts_boxes():
    img, box, mask = _scene()
    out, b, (m,) = crop(img, (-10, 5, 60, 45), boxes=box, masks=[mask], fill=7)
    assert out.shape == (40, 70, 3)
    assert (out[:, :10] == 7).all()
    np.testing.assert_allclose(b[0], [30, 5, 60, 35])
    np.testing.assert_array_equal(mask_to_box(m), b[0])
    np.testing.assert_array_equal(mask_to_box(out[..., 0] == 255), b[0])
    fully_out, _, _ = crop(img, (200, 200, 210, 204), fill=3)
    assert fully_out.shape == (4, 10, 3) and (fully_out == 3).all()


def test_square_pad_and_fit_modes():
    img, box, mask = _scene()
    out, b, (m,), (top, left) = square_pad(img, boxes=box, masks=[mask])
    assert out.shape == (100, 100, 3) and (top, left) == (20, 0)
    np.testing.assert_allclose(b[0], [20, 30, 50, 60])
    np.testing.assert_array_equal(mask_to_box(m), b[0])
    for mode in ("resize", "pad", "center_crop", "random_crop"):
        o, _, (mm,) = fit_square(img, 32, mode, rng=np.random.default_rng(0), masks=[mask])
        assert o.shape == (32, 32, 3) and mm.shape == (32, 32)
    with pytest.raises(ValueError, match="unknown fit mode"):
        fit_square(img, 32, "zoom")


@pytest.mark.parametrize("seed", range(20))
def test_random_square_window_contains_the_box(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
    bw, bh = rng.uniform(5, w), rng.uniform(5, h)
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    box = [x0, y0, x0 + bw, y0 + bh]
    x_0, y_0, x_1, y_1 = random_square_window((h, w), rng, contain=box, min_frac=0.5)
    assert x_1 - x_0 == y_1 - y_0 >= max(np.ceil(bw), np.ceil(bh)) - 1
    assert x_0 <= box[0] + 1e-6 and y_0 <= box[1] + 1e-6 and x_1 >= box[2] - 1e-6 and y_1 >= box[3] - 1e-6
    if max(bw, bh) <= min(h, w) - 1:  # fits: stays inside the image (no padding)
        assert x_0 >= 0 and y_0 >= 0 and x_1 <= w and y_1 <= h


def test_random_square_crop_keeps_box_and_mask_aligned():
    img, box, mask = _scene()
    out, b, (m,), win = random_square_crop(img, 64, np.random.default_rng(3), contain=box[0], boxes=box,
                                           masks=[mask])
    assert out.shape == (64, 64, 3)
    assert boxes_inside(b, (64, 64)).all()
    np.testing.assert_allclose(mask_to_box(m), b[0], atol=1.5)
    o2, b2, _ = crop_resize(img, win, (64, 64), boxes=box)
    np.testing.assert_array_equal(o2, out)


def test_grid_mask_prefers_cells_with_priority_points():
    h = w = 100
    pts = np.array([[5, 5]] * 3, np.float32)  # always in the top-left cell
    hits = np.mean([grid_mask((h, w), np.random.default_rng(s), p=0.0, priority_points=pts, p_priority=1.0,
                              min_cells=0)[1, 1] for s in range(20)])
    assert hits == 1.0
    m = grid_mask((h, w), np.random.default_rng(0), n_range=(4, 4), p=0.5)
    assert m.dtype == bool and m.shape == (h, w)
    assert set(np.unique(m[::25, ::25].ravel())) <= {False, True} and 0 < m.mean() < 1
    # cells are 25 px blocks: constant inside each
    assert all(len(np.unique(m[i * 25:(i + 1) * 25, j * 25:(j + 1) * 25])) == 1 for i in range(4) for j in range(4))
    assert grid_mask((h, w), np.random.default_rng(0), p=0.0, min_cells=1).any()
    b = random_box_mask((h, w), np.random.default_rng(0), scale=(0.2, 0.2))
    assert b.sum() == 20 * 20
