"""One place for video and GIF IO (refedit.utils.video): the loaders, the logger and refedit.edit share it."""

from __future__ import annotations

import numpy as np
import torch

from refedit.utils.video import gif_bytes, read_clip, write_clip


def _clip(f: int = 6, h: int = 33, w: int = 47) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([torch.stack([x, y, (x + y + t / f) % 1]) for t in range(f)])


def test_an_odd_sized_clip_is_padded_encoded_and_decoded_back(tmp_path):
    clip = _clip()
    write_clip(clip, tmp_path / "c.mp4", fps=8)
    back = read_clip(tmp_path / "c.mp4")
    assert back.shape == (6, 34, 48, 3)  # padded to even sizes by one edge pixel
    err = np.abs(back[:, :33, :47].astype(np.float32) - (clip.permute(0, 2, 3, 1).numpy() * 255)).mean()
    assert err < 6.0, err


def test_the_loader_reads_what_read_clip_reads(tmp_path):
    from refedit.data.io import write_video
    from refedit.data.video import VideoReader

    frames = (_clip(8, 32, 48).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    write_video(tmp_path / "v.mp4", frames, fps=8)
    r = VideoReader(tmp_path / "v.mp4")
    loaded, idx = r.read([i / 8 for i in range(8)])
    assert idx == list(range(8)) and np.array_equal(loaded, read_clip(tmp_path / "v.mp4"))


def test_gifs_on_disk_and_in_memory_are_the_same(tmp_path):
    clip = _clip(4, 16, 24)
    write_clip(clip, tmp_path / "c.gif", fps=4)
    assert (tmp_path / "c.gif").read_bytes() == gif_bytes(clip, fps=4).getvalue()
    assert read_clip(tmp_path / "c.gif").shape == (4, 16, 24, 3)
