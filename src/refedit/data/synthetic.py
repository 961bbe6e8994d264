"""Small on-disk datasets with known content, in the real formats, for tests and the throughput bench.

Not a substitute for toyworld (no shading, occlusion reasoning or captions vocabulary): just textured
images and clips whose boxes, masks and flow are known exactly, written as PNG / MP4 / COCO JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from refedit.data.io import write_image, write_mask, write_video


def textured_image(hw: tuple[int, int], rng: np.random.Generator, *, blur: float = 1.5) -> np.ndarray:
    """Smooth random colour texture with structure at several scales (trackable by flow)."""
    h, w = hw
    out = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((1.0, 0.5), (4.0, 0.3), (16.0, 0.2)):
        sh, sw = max(2, int(h / scale)), max(2, int(w / scale))
        noise = rng.random((sh, sw, 3)).astype(np.float32)
        out += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    out = cv2.GaussianBlur(out, (0, 0), blur)
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    return (out * 255).round().astype(np.uint8)


def _bounce(pos: float, hi: int) -> int:
    """Position reflected into [0, hi] (the object bounces off the frame edges and stays visible)."""
    if hi <= 0:
        return 0
    p = abs(pos) % (2 * hi)
    return int(round(2 * hi - p if p > hi else p))


def moving_square_clip(size: tuple[int, int] = (128, 128), frames: int = 24, *, seed: int = 0,
                       obj: int = 32, velocity: tuple[float, float] = (2.0, 0.0), pan: tuple[int, int] = (0, 1)
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F, H, W, 3) frames of a textured square moving by ``velocity`` px/frame (rounded to pixels; it bounces
    off the frame edges) over a background panning by ``pan`` px/frame; returns frames, (F, H, W) object
    masks and the (H, W, 2) exact flow of frame 0 -> 1."""
    rng = np.random.default_rng(seed)
    h, w = size
    bg = textured_image((h + abs(pan[0]) * frames + 2, w + abs(pan[1]) * frames + 2), rng)
    tex = textured_image((obj, obj), rng, blur=0.8)
    out, masks = [], []
    x0, y0 = w // 8, h // 3
    for i in range(frames):
        oy, ox = abs(pan[0]) * i, abs(pan[1]) * i
        f = bg[oy: oy + h, ox: ox + w].copy()
        x, y = _bounce(x0 + velocity[0] * i, w - obj), _bounce(y0 + velocity[1] * i, h - obj)
        m = np.zeros((h, w), bool)
        ys, xs = slice(max(y, 0), min(y + obj, h)), slice(max(x, 0), min(x + obj, w))
        f[ys, xs] = tex[ys.start - y: ys.stop - y, xs.start - x: xs.stop - x]
        m[ys, xs] = True
        out.append(f)
        masks.append(m)
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = -abs(pan[1]), -abs(pan[0])
    flow[masks[0]] = velocity
    return np.stack(out), np.stack(masks), flow


def write_video_folder(root: str | Path, *, videos: int = 3, size: tuple[int, int] = (128, 128), frames: int = 48,
                       fps: float = 24.0, crf: int = 10, masks: bool = True, captions: bool = True) -> Path:
    """``root/clip{k}.mp4`` + ``masks/clip{k}/{frame:06d}.png`` + ``captions.jsonl``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(videos):
        fr, ms, _ = moving_square_clip(size, frames, seed=k, velocity=(1.0 + k % 2, 0.5 * (k % 3)))
        write_video(root / f"clip{k}.mp4", fr, fps=fps, crf=crf)
        if masks:
            for i, m in enumerate(ms):
                write_mask(root / "masks" / f"clip{k}" / f"{i:06d}.png", m)
        rows.append({"video": f"clip{k}", "caption": f"a textured square number {k}"})
    if captions:
        (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_coco_folder(root: str | Path, *, images: int = 4, size: tuple[int, int] = (96, 128), seed: int = 0,
                      boxes_per_image: int = 2, ext: str = ".png") -> Path:
    """``root/images/*<ext>`` + ``root/instances.json`` with random boxes of normalised area in ~[0.05, 0.3]."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    imgs, anns = [], []
    for i in range(images):
        name = f"{i:04d}{ext}"
        write_image(root / "images" / name, textured_image(size, rng))
        imgs.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for _ in range(boxes_per_image):
            bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    (root / "instances.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return root
