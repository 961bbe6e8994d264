"""Clip files, the one place for video and GIF IO: encode (PyAV) and GIF (Pillow) writing, frame decoding
to RGB; data loaders (refedit.data.io / data.video), the image logger and refedit.edit use these."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
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


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 24.0, *, crf: int = 12,
                codec: str = "libx264", gop: int = 12) -> None:
    """The one video encoder: RGB uint8 (H,W,3) frames -> a PyAV file (H.264 yuv420p by default; MPEG-4 Part 2
    where FFmpeg has no libx264). Odd sizes are padded by one edge pixel (yuv420p needs even ones)."""
    from fractions import Fraction

    import av

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if codec == "libx264" and codec not in av.codecs_available:
        codec = "mpeg4"
    with av.open(str(p), "w") as container:
        stream = None
        for f in frames:
            h, w = f.shape[:2]
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = h + h % 2, w + w % 2
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(gop)}
                elif codec.startswith("libvpx"):
                    stream.options = {"crf": str(crf), "b:v": "0", "g": str(gop)}
            if (h, w) != (stream.height, stream.width):
                f = np.pad(f, ((0, stream.height - h), (0, stream.width - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def write_clip(frames: torch.Tensor, path: str | os.PathLike, fps: int = 8) -> None:
    """frames (F,3,H,W) in [0,1] -> .gif (Pillow) or a video file (`write_video`)."""
    arr = clip_to_uint8(frames)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".gif":
        _save_gif(arr, p, fps)
        return
    write_video(p, arr, fps)


#: FFmpeg AVColorSpace values read as BT.601: unspecified / BT.470BG / SMPTE 170M
_BT601 = {0, 2, 5, 6}


def frame_to_rgb(fr, oh: int | None = None, ow: int | None = None) -> np.ndarray:
    """A decoded PyAV frame as RGB uint8 (oh, ow, 3) (default: its own size). 8-bit 4:2:0 BT.601 limited-range
    frames (most SD/web video) are converted by OpenCV, whose interpolated chroma is closer to the source than
    swscale's default; everything else goes through swscale (area filter, single thread)."""
    import cv2

    oh, ow = oh or fr.height, ow or fr.width
    if (fr.format.name == "yuv420p" and int(getattr(fr, "colorspace", 2)) in _BT601
            and int(getattr(fr, "color_range", 0)) in (0, 1) and fr.width % 2 == 0 and fr.height % 2 == 0):
        rgb = cv2.cvtColor(fr.to_ndarray(format="yuv420p", threads=1), cv2.COLOR_YUV2RGB_I420)
        if rgb.shape[:2] != (oh, ow):
            interp = cv2.INTER_AREA if oh < rgb.shape[0] else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (ow, oh), interpolation=interp)
        return rgb
    return fr.to_ndarray(format="rgb24", width=ow, height=oh, interpolation="AREA", threads=1)


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
                frames.append(frame_to_rgb(frame))
                if max_frames and len(frames) >= max_frames:
                    break
    if not frames:
        raise ValueError(f"{p}: no frames decoded")
    return np.stack(frames[:max_frames] if max_frames else frames)
