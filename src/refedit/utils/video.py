"""Clip files: write MP4 (PyAV) or GIF (Pillow), read MP4/GIF/WebM frames."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch


def clip_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F,3,H,W) in [0,1] -> uint8 (F,H,W,3)."""
    return (frames.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def _save_gif(arr: np.ndarray, target, fps: int) -> None:
    from PIL import Image

    ims = [Image.fromarray(f) for f in arr]
    ims[0].save(target, format="GIF", save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)


def gif_bytes(frames: torch.Tensor, fps: int = 4) -> io.BytesIO:
    """frames (F,3,H,W) in [0,1] -> an in-memory looping GIF (what W&B shows without moviepy / imageio)."""
    buf = io.BytesIO()
    _save_gif(clip_to_uint8(frames), buf, fps)
    buf.seek(0)
    return buf


def write_clip(frames: torch.Tensor, path: str | os.PathLike, fps: int = 8) -> None:
    """frames (F,3,H,W) in [0,1] -> .mp4 (H.264 via PyAV) or .gif."""
    arr = clip_to_uint8(frames)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".gif":
        _save_gif(arr, p, fps)
        return
    import av

    h, w = arr.shape[1:3]
    with av.open(str(p), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height = w + (w % 2), h + (h % 2)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"} if stream.codec_context.name == "libx264" else {}
        for f in arr:
            if f.shape[0] != stream.height or f.shape[1] != stream.width:
                f = np.pad(f, ((0, stream.height - h), (0, stream.width - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_clip(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """All (or the first `max_frames`) frames of a clip as uint8 (F,H,W,3)."""
    p = Path(path)
    if p.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(p) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    else:
        import av

        frames = []
        with av.open(str(p)) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    if not frames:
        raise ValueError(f"{p}: no frames decoded")
    return np.stack(frames[:max_frames] if max_frames else frames)
