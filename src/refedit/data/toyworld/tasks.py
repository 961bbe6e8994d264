"""Task builders: turn a seed's clip into one `EditBatch` sample (see refedit.batch).

Every sample is a dict of float32 tensors without a batch dim (images (3,H,W) in [-1,1], masks (1,H,W)
in {0,1} with 1 = edit, `video` (F,3,H,W)), a `caption` str and a JSON-serialisable `meta` dict with at
least: id, seed, task, size, frames (clip frame indices used), object (index of the edited object in its
scene), box ([x0,y0,x1,y1) of that object in the target frame), boxes (all objects, target frame),
labels ({shape, colour, pattern} integer class ids of the edited object) and attributes (their names).

`source` is always the unmasked frame: methods apply `mask` themselves (diffusers-style inpainting).
References are rendered directly at `reference_size` from a square world window around the object,
which is the alias-free equivalent of "crop the box, pad to square, resize".
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from .render import (
    Z_FAR,
    Z_NEAR,
    Clip,
    SceneSpec,
    boxes_of,
    cos_sin,
    frame_origin,
    frame_times,
    motion_caption,
    object_caption,
    render_clip,
    render_views,
    rng_for,
    sample_spec,
)

TASK_KEYS: dict[str, tuple[str, ...]] = {
    "exemplar_inpaint": ("source", "mask", "reference", "reference_mask", "target", "caption", "meta"),
    "exemplar_inpaint_self": ("source", "mask", "reference", "reference_mask", "target", "caption", "meta"),
    "reference_imitation": ("source", "mask", "reference", "reference_mask", "target", "depth", "caption",
                            "meta"),
    "coarse_edit": ("source", "mask", "reference", "coarse", "valid", "target", "caption", "meta"),
    "subject_video": ("subject", "subject_inplace", "video", "caption", "meta"),
    "text_inpaint": ("source", "mask", "target", "caption", "meta"),
}
TASKS: tuple[str, ...] = tuple(TASK_KEYS)
MASK_KINDS: tuple[str, ...] = ("box", "irregular", "mixed")
# Fixed per-task salts of the task-choice random stream (never renumber: benchmark samples depend on them).
_SALT = {"exemplar_inpaint": 1, "exemplar_inpaint_self": 2, "reference_imitation": 3, "coarse_edit": 4,
         "subject_video": 5, "text_inpaint": 6}
_MIN_FRAMES = {"exemplar_inpaint": 2, "reference_imitation": 2, "coarse_edit": 2}


# --------------------------------------------------------------------------------------------- helpers
def _image(u8: np.ndarray) -> torch.Tensor:
    """uint8 (3,H,W) -> float32 in [-1, 1]; exact at 0 and 255, the same mapping a PNG loader uses."""
    return torch.from_numpy((u8.astype(np.float32) - 127.5) / 127.5)


def _mask(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)[None])


def _box_list(boxes: np.ndarray) -> list[list[int]]:
    return [[int(v) for v in b] for b in boxes]


def pick_object(clip: Clip, positions: list[int]) -> int:
    """The object best visible in all given rendered frames (most visible pixels in its worst frame)."""
    counts = clip.masks[positions].sum((-1, -2))  # (P, N)
    return int(np.argmax(counts.min(0)))


def _pick_frames(rng: np.random.Generator, frames: int, n: int) -> list[int]:
    return [int(f) for f in rng.choice(frames, size=n, replace=False)]


def _square_view(box: np.ndarray, origin: tuple[float, float], size: int, margin: float
                 ) -> tuple[tuple[float, float], float]:
    """World origin and side of the square window centred on a pixel box [x0,y0,x1,y1), with a margin."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * (1 + 2 * margin) + 2.0  # +1 px each side for anti-aliased edges
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ox = float(origin[0]) + (cx - side / 2) / size
    oy = float(origin[1]) + (cy - side / 2) / size
    return (ox, oy), side / size


def _render_crop(spec: SceneSpec, t: float, box: np.ndarray, origin: tuple[float, float], size: int,
                 out_size: int, obj: int, margin: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around an object's box at clip time t, rendered at out_size: (rgb u8, object mask)."""
    o, side = _square_view(box, origin, size, margin)
    r = render_views(spec, [t], np.array([o]), side / out_size, out_size, out_size)
    return r.rgb[0], r.owner[0] == obj


def _box_mask(box: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    pad = int(round(rng.uniform(0.05, 0.2) * max(x1 - x0, y1 - y0))) + 1
    m = np.zeros((size, size), bool)
    m[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad] = True
    return m


def _irregular_mask(obj_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The object's mask dilated by a random radius, plus random blobs along its outline (brush strokes)."""
    size = obj_mask.shape[0]
    r = max(1, int(round(rng.uniform(0.02, 0.06) * size)))
    m = cv2.dilate(obj_mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    ys, xs = np.nonzero(obj_mask)
    if len(xs):
        for _ in range(int(rng.integers(2, 6))):
            k = int(rng.integers(len(xs)))
            axes = (max(1, int(rng.uniform(0.04, 0.12) * size)), max(1, int(rng.uniform(0.04, 0.12) * size)))
            cv2.ellipse(m, (int(xs[k]), int(ys[k])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def _edit_mask(kind: str, obj_mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if kind == "mixed":
        kind = "box" if rng.random() < 0.5 else "irregular"
    if kind == "box":
        return _box_mask(boxes_of(obj_mask), obj_mask.shape[0], rng), kind
    return _irregular_mask(obj_mask, rng), kind


def _part_mask(kind: str, obj_mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Mask over the whole object or (half the time) a part of it cut by a line through it."""
    full, kind = _edit_mask(kind, obj_mask, rng)
    if rng.random() < 0.5:
        return full, kind
    ys, xs = np.nonzero(obj_mask)
    if len(xs) < 8:
        return full, kind
    size = obj_mask.shape[0]
    k = int(rng.integers(len(xs)))
    if kind == "box":  # keep a rectangle: cut along an axis
        ang = float(rng.integers(4)) * np.pi / 2
    else:
        ang = float(rng.uniform(0, 2 * np.pi))
    yy, xx = np.mgrid[0:size, 0:size]
    ca, sa = cos_sin(ang)
    side = (xx - xs[k]) * ca + (yy - ys[k]) * sa >= 0
    part = full & side
    return (part if (part & obj_mask).any() else full), kind + "_part"


def _meta(task: str, seed: int, size: int, frames: list[int], clip: Clip, pos: int, obj: int, **extra: Any
          ) -> dict[str, Any]:
    boxes = clip.boxes[pos]
    o = clip.spec.objects[obj]
    return {"id": f"{task}-{seed}", "seed": int(seed), "task": task, "size": int(size),
            "frames": [int(f) for f in frames], "object": int(obj), "box": [int(v) for v in boxes[obj]],
            "boxes": _box_list(boxes), "labels": o.labels, "attributes": o.attributes, **extra}


# ----------------------------------------------------------------------------------------------- tasks
def _exemplar(task: str, seed: int, size: int, frames: int, ref_size: int, mask_kind: str) -> dict[str, Any]:
    rng = rng_for(seed, _SALT[task])
    same = task == "exemplar_inpaint_self"
    fr = _pick_frames(rng, frames, 1 if same else 2)
    clip = render_clip(seed, size, frames, which=fr)
    obj = pick_object(clip, list(range(len(fr))))
    src_mask = clip.masks[0, obj]
    mask, kind = _edit_mask(mask_kind, src_mask, rng)
    rp = 0 if same else 1
    ref, ref_mask = _render_crop(clip.spec, float(clip.times[rp]), clip.boxes[rp, obj],
                                 frame_origin(clip.spec, clip.times[rp], size), size, ref_size, obj)
    src = _image(clip.rgb_u8[0])
    return {"source": src, "mask": _mask(mask), "reference": _image(ref), "reference_mask": _mask(ref_mask),
            "target": src.clone(), "caption": object_caption(clip.spec.objects[obj]),
            "meta": _meta(task, seed, size, fr, clip, 0, obj, mask_kind=kind, reference_frame=fr[rp],
                          reference_box=[int(v) for v in clip.boxes[rp, obj]])}


def _reference_imitation(seed: int, size: int, frames: int, ref_size: int, mask_kind: str) -> dict[str, Any]:
    task = "reference_imitation"
    rng = rng_for(seed, _SALT[task])
    fr = _pick_frames(rng, frames, 2)
    clip = render_clip(seed, size, frames, which=fr)
    obj = pick_object(clip, [0, 1])
    mask, kind = _part_mask(mask_kind, clip.masks[0, obj], rng)
    if ref_size == size:
        ref, ref_mask = clip.rgb_u8[1], clip.masks[1, obj]
    else:
        o = frame_origin(clip.spec, clip.times[1], size)
        r = render_views(clip.spec, clip.times[1:], np.array([[float(o[0]), float(o[1])]]), 1.0 / ref_size,
                         ref_size, ref_size)
        ref, ref_mask = r.rgb[0], r.owner[0] == obj
    src = _image(clip.rgb_u8[0])
    # inverse depth in [0, 1] (1 = nearest), the polarity of monocular depth models (MiDaS / Depth Anything)
    depth = (Z_FAR - clip.depth[0]) * (1.0 / (Z_FAR - Z_NEAR))
    return {"source": src, "mask": _mask(mask), "reference": _image(ref), "reference_mask": _mask(ref_mask),
            "target": src.clone(), "depth": torch.from_numpy(np.clip(depth, 0, 1)[None].astype(np.float32)),
            "caption": object_caption(clip.spec.objects[obj]),
            "meta": _meta(task, seed, size, fr, clip, 0, obj, mask_kind=kind, reference_frame=fr[1])}


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample img (C,H,W) at float pixel coords (x, y) (pixel centres at integers), edges clamped."""
    H, W = img.shape[-2:]
    x = np.clip(x, 0, W - 1)
    y = np.clip(y, 0, H - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), W - 2) if W > 1 else np.zeros_like(x, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), H - 2) if H > 1 else np.zeros_like(y, np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    a, b = img[:, y0, x0], img[:, y0, x0 + 1]
    c, d = img[:, y0 + 1, x0], img[:, y0 + 1, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def coarse_warp(clip: Clip, s: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame s with every surface moved by the exact flow to frame t: (coarse rgb (3,H,W) in [0,1], valid).

    Each target pixel takes the nearest surface (objects in depth order, then the ground) whose
    preimage in frame s is visible there; it keeps frame s's shading. Pixels nothing maps to are holes.
    Equivalent to forward-warping frame s's visible pixels with the exact flow, without splatting gaps."""
    ia, ib = clip.index(s), clip.index(t)
    H = W = clip.size
    img = clip.rgb[ia]
    owner = clip.owner[ia]
    ta, tb = float(clip.times[ia]), float(clip.times[ib])
    oax, oay = frame_origin(clip.spec, ta, clip.size)
    obx, oby = frame_origin(clip.spec, tb, clip.size)
    px = 1.0 / clip.size
    # ground: shifted by the (whole-pixel) pan; frame s pixel (x + pan_x, y + pan_y) lands on (x, y)
    pan_x, pan_y = int(round((obx - oax) * clip.size)), int(round((oby - oay) * clip.size))
    coarse = np.zeros((3, H, W), np.float32)
    valid = np.zeros((H, W), bool)
    ys0, ys1, xs0, xs1 = max(0, -pan_y), min(H, H - pan_y), max(0, -pan_x), min(W, W - pan_x)
    if ys0 < ys1 and xs0 < xs1:
        g = owner[ys0 + pan_y:ys1 + pan_y, xs0 + pan_x:xs1 + pan_x] == -1
        valid[ys0:ys1, xs0:xs1] = g
        coarse[:, ys0:ys1, xs0:xs1] = np.where(g, img[:, ys0 + pan_y:ys1 + pan_y, xs0 + pan_x:xs1 + pan_x], 0)
    cover = clip.render.coverage[ib]  # where each object can land in frame t
    for o, obj in enumerate(clip.spec.objects):  # lowest first: nearer objects overwrite
        if not (owner == o).any():
            continue
        x0, y0, x1, y1 = (int(v) for v in boxes_of(cover[o] > 0))
        if x1 <= x0:
            continue
        cax, cay, aa, ra = obj.at(ta)
        cbx, cby, ab, rb = obj.at(tb)
        k, (c, sn) = ra / rb, cos_sin(aa - ab)
        X = (obx + (np.arange(x0, x1) + 0.5) * px - cbx)[None, :]  # world offsets of target pixels
        Y = (oby + (np.arange(y0, y1) + 0.5) * px - cby)[:, None]
        fx = (cax + k * (c * X - sn * Y) - oax) / px - 0.5  # source pixel coords (centres at integers)
        fy = (cay + k * (sn * X + c * Y) - oay) / px - 0.5
        ix, iy = np.floor(fx + 0.5).astype(np.int64), np.floor(fy + 0.5).astype(np.int64)
        ok = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
        ok &= owner[np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1)] == o
        if ok.any():
            win = coarse[:, y0:y1, x0:x1]
            win[:, ok] = _bilinear(img, fx[ok], fy[ok])
            valid[y0:y1, x0:x1] |= ok
    return coarse, valid


def _coarse_edit(seed: int, size: int, frames: int, ref_size: int, mask_kind: str) -> dict[str, Any]:
    task = "coarse_edit"
    rng = rng_for(seed, _SALT[task])
    fr = _pick_frames(rng, frames, 2)
    spec = sample_spec(seed).without_pan()  # a user's collage: objects move, the camera does not
    clip = render_clip(spec, size, frames, which=fr)
    coarse, valid = coarse_warp(clip, fr[0], fr[1])
    # the region that changes: everything the objects cover in either frame, where their shadows
    # move, and any other pixel that differs (1-level penumbra changes), plus the holes
    cov = (clip.render.coverage > 0).any((0, 1))
    moved_shadow = np.abs(clip.render.shadow[0] - clip.render.shadow[1]) > 0.004
    change = cv2.dilate((cov | moved_shadow).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    change |= (clip.rgb_u8[0] != clip.rgb_u8[1]).any(0) | ~valid
    obj = pick_object(clip, [0, 1])
    t = frame_times(frames)
    src = _image(clip.rgb_u8[0])
    return {"source": src, "mask": _mask(change), "reference": src.clone(),
            "coarse": torch.from_numpy(np.where(valid, coarse * 2 - 1, 0).astype(np.float32)),
            "valid": _mask(valid), "target": _image(clip.rgb_u8[1]),
            "caption": motion_caption(spec, obj, t[fr[0]], t[fr[1]]),
            "meta": _meta(task, seed, size, fr, clip, 1, obj, source_boxes=_box_list(clip.boxes[0]))}


def _subject_video(seed: int, size: int, frames: int, ref_size: int, mask_kind: str) -> dict[str, Any]:
    task = "subject_video"
    clip = render_clip(seed, size, frames)
    obj = pick_object(clip, list(range(frames)))
    rgb, m = _render_crop(clip.spec, 0.0, clip.boxes[0, obj], frame_origin(clip.spec, 0.0, size), size, ref_size,
                          obj)
    subject = _image(np.where(m, rgb, 0).astype(np.uint8))
    inplace = _image(np.where(clip.masks[0, obj], clip.rgb_u8[0], 0).astype(np.uint8))
    return {"subject": subject, "subject_inplace": inplace, "video": _image(clip.rgb_u8),
            "caption": motion_caption(clip.spec, obj, 0.0, 1.0),
            "meta": _meta(task, seed, size, list(range(frames)), clip, 0, obj)}


def _text_inpaint(seed: int, size: int, frames: int, ref_size: int, mask_kind: str) -> dict[str, Any]:
    task = "text_inpaint"
    rng = rng_for(seed, _SALT[task])
    fr = _pick_frames(rng, frames, 1)
    clip = render_clip(seed, size, frames, which=fr)
    obj = pick_object(clip, [0])
    mask, kind = _edit_mask(mask_kind, clip.masks[0, obj], rng)
    src = _image(clip.rgb_u8[0])
    return {"source": src, "mask": _mask(mask), "target": src.clone(),
            "caption": object_caption(clip.spec.objects[obj]),
            "meta": _meta(task, seed, size, fr, clip, 0, obj, mask_kind=kind)}


def build_sample(task: str, seed: int, size: int = 64, frames: int = 8, reference_size: int | None = None,
                 mask_kind: str = "mixed") -> dict[str, Any]:
    """One sample of `task` from the clip of `seed` (bit-identical for the same arguments on any machine)."""
    if task not in TASK_KEYS:
        raise ValueError(f"unknown toyworld task {task!r}; valid tasks: {', '.join(TASKS)}")
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"toyworld task {task!r}: unknown mask_kind {mask_kind!r}; valid: {', '.join(MASK_KINDS)}")
    if frames < _MIN_FRAMES.get(task, 1):
        raise ValueError(f"toyworld task {task!r} needs frames >= {_MIN_FRAMES[task]}, got {frames}")
    if size < 16 or (reference_size is not None and reference_size < 16):
        raise ValueError(f"toyworld task {task!r}: size and reference_size must be >= 16 px, got "
                         f"{size} and {reference_size}")
    ref_size = size if reference_size is None else int(reference_size)
    seed, size = int(seed), int(size)
    if task in ("exemplar_inpaint", "exemplar_inpaint_self"):
        return _exemplar(task, seed, size, frames, ref_size, mask_kind)
    builder = {"reference_imitation": _reference_imitation, "coarse_edit": _coarse_edit,
               "subject_video": _subject_video, "text_inpaint": _text_inpaint}[task]
    return builder(seed, size, frames, ref_size, mask_kind)
