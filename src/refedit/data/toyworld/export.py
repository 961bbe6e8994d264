"""Export toyworld to disk as real-looking data, so the real-data loaders run on real files.

Layout written by :func:`export` (``<id>`` = the sample's seed as 10 digits, e.g. ``1002000007``; the
ids are the seeds of ``split`` indices 0 .. n-1; frames ``<f>`` are 0-based, 6 digits)::

    DIR/manifest.json                       arguments, counts, versions (no timestamps)
    DIR/images/<id>.png                     frame 0 of the clip of each seed (RGB, size x size)
    DIR/instances.json                      COCO: images (file_name "images/<id>.png", + seed, caption),
                                            annotations (bbox [x,y,w,h] of the visible mask, area,
                                            segmentation = uncompressed RLE {"size": [h, w], "counts"},
                                            column-major as in pycocotools, iscrowd 0, + shape / colour /
                                            pattern names and *_id class ids, caption, depth_order
                                            (0 = farthest)), categories = the shapes (id = shape id + 1)
    DIR/captions.jsonl                      per image: {"id", "file_name", "caption", "captions"
                                            (per object), "labels" (per object {shape, colour, pattern})}
    DIR/videos/<id>.mp4                     the clip (H.264 via PyAV's libx264 at constant QP 16, else
                                            MPEG-4 part 2; yuv420p BT.601 limited range; 8 fps)
    DIR/videos/<id>/frames/<f>.png          the clip's frames, lossless
    DIR/videos/masks/<id>/<f>.png           subject mask per frame, 255 = subject (refedit.data.video layout)
    DIR/videos/instances/<id>/<f>.png       instance ids per frame: 0 = ground, k = object k (1-based)
    DIR/videos/depth/<id>/<f>.npy           float32 (H, W) inverse depth in [0, 1], 1 = nearest
    DIR/videos/flow/<id>/<f>.npy            float32 (2, H, W) exact forward flow (dx, dy px) frame f -> f+1
    DIR/videos/captions.jsonl               {"video": "<id>", "caption" (subject motion), "subject" (1-based
                                            instance id), "captions" (per object), "labels" (per object)}
    DIR/cocoee/GT/<id>_GT.png               COCOEE layout, from the exemplar_inpaint task of the
    DIR/cocoee/Ref/<id>_ref.png             *benchmark* split (ids = its seeds): ground truth, reference
    DIR/cocoee/Mask/<id>_mask.png           (reference_size) and mask (255 = edit)
    DIR/cocoee/captions.jsonl               {"id", "caption"}
    DIR/cocoee/meta.jsonl                   the samples' meta (labels, boxes, frames, ...)

The subject of a clip is the object the subject_video task picks. Re-running with the same arguments
writes byte-identical files: fixed encoder settings (constant QP, one thread; x264's CRF mode varied
between runs on these small clips), RGB->YUV done here in integer arithmetic (no CPU-specific swscale
path), bit-exact muxing, no clock, fixed PNG compression level.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .dataset import seed_of
from .render import COLOUR_NAMES, PATTERNS, SHAPES, Z_FAR, Z_NEAR, object_caption, render_clip
from .tasks import build_sample, pick_object

EXPORT_VERSION = 1
FPS = 8


def _png(path: Path, rgb_or_gray: np.ndarray) -> None:
    """Write a uint8 (H,W,3) RGB or (H,W) grey PNG (zlib level fixed: same bytes on re-runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb_or_gray if rgb_or_gray.ndim == 2 else cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 6]):
        raise OSError(f"toyworld export: could not write {path}")


def _npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def _jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def _u8(t) -> np.ndarray:
    """(3,H,W) tensor in [-1,1] -> (H,W,3) uint8 (exact for toyworld's 8-bit levels)."""
    a = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
    return np.rint((a.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE of a bool mask (column-major run lengths, starting with a 0-run)."""
    flat = np.asarray(mask, bool).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    h, w = rle["size"]
    vals = np.zeros(h * w, bool)
    pos, on = 0, False
    for r in rle["counts"]:
        if on:
            vals[pos:pos + r] = True
        pos += r
        on = not on
    return vals.reshape((h, w), order="F")


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) RGB -> (H*3/2, W) yuv420p planes, BT.601 limited range, integer arithmetic.

    Done here rather than by swscale, whose SIMD paths depend on the CPU."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    h, w = y.shape
    u = (u.reshape(h // 2, 2, w // 2, 2).sum((1, 3)) + 2) >> 2
    v = (v.reshape(h // 2, 2, w // 2, 2).sum((1, 3)) + 2) >> 2
    planes = [np.clip(p, 0, 255).astype(np.uint8).ravel() for p in (y, u, v)]
    return np.concatenate(planes).reshape(h * 3 // 2, w)


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> str:
    """Encode uint8 (F,H,W,3) RGB frames to MP4 deterministically; returns the codec used."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    # constant QP, one thread: x264's CRF mode (macroblock-tree rate control) gave run-to-run differences
    opts = {"qp": "16", "preset": "medium", "threads": "1", "x264-params": "threads=1:sliced-threads=0:mbtree=0"} \
        if codec == "libx264" else {"qscale": "2", "threads": "1"}
    h, w = frames.shape[1:3]
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as c:
        s = c.add_stream(codec, rate=fps, options=opts)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.thread_count = 1
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(f), format="yuv420p")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return codec


def _scene_caption(spec) -> str:
    caps = [object_caption(o) for o in spec.objects]
    return caps[0] if len(caps) == 1 else ", ".join(caps[:-1]) + " and " + caps[-1]


def export(out: str | os.PathLike, n: int = 20, size: int = 64, frames: int = 8, split: str = "benchmark",
           reference_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the layout in the module docstring for split indices 0 .. n-1; returns the manifest."""
    from tqdm import tqdm

    if size % 2:
        raise ValueError(f"toyworld export: size must be even for yuv420p video, got {size}")
    if frames < 2:
        raise ValueError(f"toyworld export: frames must be >= 2, got {frames}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    seeds = [seed_of(split, i) for i in range(n)]
    images, annotations, cap_rows, vid_rows = [], [], [], []
    codec = None
    ann_id = 0
    for seed in tqdm(seeds, desc="toyworld export: scenes + clips", disable=not progress):
        sid = f"{seed:010d}"
        clip = render_clip(seed, size, frames)
        spec = clip.spec
        rgb = clip.rgb_u8.transpose(0, 2, 3, 1)  # (F,H,W,3)
        masks, boxes = clip.masks, clip.boxes
        # ---- image + COCO annotations (frame 0)
        _png(root / "images" / f"{sid}.png", rgb[0])
        images.append({"id": seed, "file_name": f"images/{sid}.png", "width": size, "height": size,
                       "seed": seed, "caption": _scene_caption(spec)})
        for k, obj in enumerate(spec.objects):
            m = masks[0, k]
            if not m.any():
                continue
            ann_id += 1
            x0, y0, x1, y1 = (int(v) for v in boxes[0, k])
            annotations.append({
                "id": ann_id, "image_id": seed, "category_id": obj.shape + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(m.sum()), "iscrowd": 0,
                "segmentation": rle_encode(m), "shape": SHAPES[obj.shape], "shape_id": obj.shape,
                "colour": COLOUR_NAMES[obj.colour], "colour_id": obj.colour, "pattern": PATTERNS[obj.pattern],
                "pattern_id": obj.pattern, "caption": object_caption(obj), "depth_order": k})
        cap_rows.append({"id": sid, "file_name": f"images/{sid}.png", "caption": _scene_caption(spec),
                         "captions": [object_caption(o) for o in spec.objects],
                         "labels": [o.labels for o in spec.objects]})
        # ---- clip
        codec = write_video(root / "videos" / f"{sid}.mp4", rgb)
        subject = pick_object(clip, list(range(frames)))
        inv_depth = np.clip((Z_FAR - clip.depth) / (Z_FAR - Z_NEAR), 0, 1).astype(np.float32)
        for f in range(frames):
            name = f"{f:06d}"
            _png(root / "videos" / sid / "frames" / f"{name}.png", rgb[f])
            _png(root / "videos" / "masks" / sid / f"{name}.png", masks[f, subject].astype(np.uint8) * 255)
            _png(root / "videos" / "instances" / sid / f"{name}.png", (clip.owner[f] + 1).astype(np.uint8))
            _npy(root / "videos" / "depth" / sid / f"{name}.npy", inv_depth[f])
            if f + 1 < frames:
                _npy(root / "videos" / "flow" / sid / f"{name}.npy", clip.flow(f, f + 1))
        vid_rows.append({"video": sid, "caption": clip.captions()[subject], "subject": subject + 1,
                         "captions": clip.captions(), "labels": [o.labels for o in spec.objects]})
    coco = {"info": {"description": "toyworld (refedit procedural data)", "version": EXPORT_VERSION,
                     "split": split, "size": size},
            "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)],
            "colours": list(COLOUR_NAMES), "patterns": list(PATTERNS)}
    (root / "instances.json").write_text(json.dumps(coco), encoding="utf-8")
    _jsonl(root / "captions.jsonl", cap_rows)
    _jsonl(root / "videos" / "captions.jsonl", vid_rows)
    # ---- COCOEE-layout benchmark from the exemplar_inpaint task of the benchmark split
    ee_caps, ee_meta = [], []
    for i in tqdm(range(n), desc="toyworld export: cocoee", disable=not progress):
        seed = seed_of("benchmark", i)
        sid = f"{seed:010d}"
        s = build_sample("exemplar_inpaint", seed, size=size, frames=frames, reference_size=reference_size)
        _png(root / "cocoee" / "GT" / f"{sid}_GT.png", _u8(s["target"]))
        _png(root / "cocoee" / "Ref" / f"{sid}_ref.png", _u8(s["reference"]))
        _png(root / "cocoee" / "Mask" / f"{sid}_mask.png", (s["mask"][0].numpy() > 0.5).astype(np.uint8) * 255)
        ee_caps.append({"id": sid, "caption": s["caption"]})
        ee_meta.append(s["meta"])
    _jsonl(root / "cocoee" / "captions.jsonl", ee_caps)
    _jsonl(root / "cocoee" / "meta.jsonl", ee_meta)
    manifest = {"toyworld_export_version": EXPORT_VERSION, "n": n, "size": size, "frames": frames,
                "split": split, "seeds": [seeds[0], seeds[-1]] if seeds else [], "fps": FPS,
                "reference_size": reference_size or size, "video_codec": codec, "images": len(images),
                "annotations": len(annotations), "videos": len(vid_rows), "cocoee": len(ee_caps)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest
