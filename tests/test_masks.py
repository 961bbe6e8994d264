"""One mask convention for data loaders and user inputs (refedit.utils.images.binary_mask)."""

from __future__ import annotations

import numpy as np
import torch

from refedit.utils.images import binary_mask, mask_to_tensor


def test_the_convention():
    u8 = np.array([[0, 1, 127, 128, 200, 255]], dtype=np.uint8)
    assert binary_mask(u8).tolist() == [[False, False, False, True, True, True]]  # 255 = edit, threshold 128
    assert binary_mask(np.array([[0, 1, 1]], dtype=np.uint8)).tolist() == [[False, True, True]]  # a 0/1 mask
    assert binary_mask(np.array([[32767, 32768]], dtype=np.uint16)).tolist() == [[False, True]]
    assert binary_mask(np.array([[0.49, 0.5]], dtype=np.float32)).tolist() == [[False, True]]
    assert binary_mask(np.array([[True, False]])).tolist() == [[True, False]]
    t = mask_to_tensor(u8)
    assert t.dtype == torch.float32 and t.shape == (1, 1, 6) and t.sum() == 3


def test_a_mask_file_reads_the_same_as_data_and_as_an_edit_input(tmp_path):
    """data.io.read_mask (loaders: OpenCV) and utils.images.read_image (refedit.edit, the demo: Pillow) agree."""
    import cv2

    from refedit.data.io import mask_to_tensor as data_mask_to_tensor
    from refedit.data.io import read_mask
    from refedit.utils.images import read_image

    m = np.tile(np.array([0, 100, 127, 128, 129, 255], dtype=np.uint8), (4, 1))
    cv2.imwrite(str(tmp_path / "m.png"), m)
    as_data = data_mask_to_tensor(read_mask(tmp_path / "m.png"))
    as_input = mask_to_tensor(read_image(tmp_path / "m.png", name="mask", mode="L"))
    assert torch.equal(as_data, as_input) and as_data[0, 0].tolist() == [0, 0, 0, 1, 1, 1]
