"""How each method (and each trivial row) runs each benchmark task: natively, or through an adapter.

An adapter turns a benchmark batch into the batch a method's `sample` takes, plus sampling options and a
post-processing step. Adapters never show a method the pixels it must produce: where a method would see the
masked region of `source` (SDEdit-style starts), that region is blur-filled first.

| task \\ method        | sd_inpaint              | paint_by_example        | mimicbrush              | magic_fixup             | magdiff                        |
|----------------------|-------------------------|-------------------------|-------------------------|-------------------------|--------------------------------|
| exemplar_inpaint     | native (caption of the  | native                  | native (no depth)       | coarse = reference      | 1-frame SDEdit (0.6) from the  |
|                      | masked object)          |                         |                         | pasted into the hole    | blur-filled source, subject =  |
|                      |                         |                         |                         | (the 'paste' row)       | reference cut-out              |
| coarse_edit          | SDEdit 0.4 from the     | hole mask (1 - valid) + | mask + whole source     | native                  | 1-frame SDEdit (0.4) from the  |
|                      | hole-filled coarse edit | the object cropped from | frame as reference      |                         | hole-filled coarse edit,       |
|                      | (Magic Fixup's baseline)| the source frame        |                         |                         | subject cut from the source    |
| subject_video        | frame by frame: inpaint the subject's box in each ground-truth frame (its box    |                         | native                         |
|                      | known), reference/caption = the subject; magic_fixup gets the pasted subject     |                         |                                |
|                      | as coarse edit                                                                  |                         |                                |

MagDiff's in-place subject (`subject_inplace`, what its HFA encodes): the task's own on subject_video; on
exemplar_inpaint the reference cut-out pasted into the hole's box on black; on coarse_edit the hole-filled coarse
edit inside the edit mask, black elsewhere.

Trivial rows: 'paste' (reference / coarse / subject pasted as is) and 'blur fill' (the edit region filled
from its surroundings by OpenCV Telea inpainting).

No adapter pastes the source back: that is one benchmark setting for every method alike
(`benchmark.BenchmarkConfig.paste_back`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("exemplar_inpaint", "coarse_edit", "subject_video")
TRIVIAL = ("paste", "blur_fill")

Batch = dict[str, Any]


# ----------------------------------------------------------------------------------------------- pixel helpers
def _u8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _from_u8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)


def blur_fill(images: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """Fill `holes` (1 = unknown) from the surroundings with OpenCV Telea inpainting."""
    out = []
    for img, h in zip(images, holes):
        m = (h[0] > 0.5).cpu().numpy().astype(np.uint8) * 255
        # zero the hole first: cv2.inpaint reads the values under the mask, which must stay unknown
        known = torch.where(h > 0.5, torch.zeros_like(img), img)
        out.append(_from_u8(cv2.inpaint(_u8(known), m, 5, cv2.INPAINT_TELEA)) if m.any() else img.cpu())
    return torch.stack(out).to(images.device)


def _bbox(m: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(m[0] > 0.5, as_tuple=True)
    if len(ys) == 0:
        return 0, 0, m.shape[-1], m.shape[-2]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _crop_to_bbox(img: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x0, y0, x1, y1 = _bbox(m)
    return img[:, y0:y1, x0:x1], m[:, y0:y1, x0:x1]


def paste_into(dest: torch.Tensor, holes: torch.Tensor, obj: torch.Tensor, obj_mask: torch.Tensor) -> torch.Tensor:
    """Paste each object (cropped to its mask's box) into the box of each hole mask, where both masks agree;
    the rest of the hole stays as `dest` has it."""
    out = dest.clone()
    for i in range(dest.shape[0]):
        x0, y0, x1, y1 = _bbox(holes[i])
        crop, cm = _crop_to_bbox(obj[i], obj_mask[i])
        crop = F.interpolate(crop[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
        cm = F.interpolate(cm[None].float(), size=(y1 - y0, x1 - x0), mode="nearest")[0]
        region = out[i, :, y0:y1, x0:x1]
        sel = (cm > 0.5) & (holes[i, :, y0:y1, x0:x1] > 0.5)
        out[i, :, y0:y1, x0:x1] = torch.where(sel, crop, region)
    return out


def cutout(img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Object on black (-1)."""
    return torch.where(m > 0.5, img, torch.full_like(img, -1.0))


def _object_crop(frame: torch.Tensor, box: list[int], size: int) -> torch.Tensor:
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return F.interpolate(frame[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    c = frame[:, y0:y1, x0:x1]
    return F.interpolate(c[None], size=(size, size), mode="bilinear", align_corners=False)[0]


# ----------------------------------------------------------------------------------------------- per task
def frames_as_batch(batch: Batch) -> Batch:
    """subject_video -> a batch of B*F frames with the subject's box (in each frame) as the mask: how image
    methods run the video task, and what its per-frame metrics compare (`benchmark.score`)."""
    from refedit.data.toyworld import render_clip

    video = batch["video"]
    b, f = video.shape[:2]
    masks = []
    for meta in batch["meta"]:
        clip = render_clip(meta["seed"], meta["size"], f)
        m = clip.masks[:, meta["object"]]  # (F,H,W)
        boxes = np.zeros_like(m)
        for t in range(f):
            ys, xs = np.nonzero(m[t])
            if len(ys):
                boxes[t, max(ys.min() - 2, 0):ys.max() + 3, max(xs.min() - 2, 0):xs.max() + 3] = True
        masks.append(torch.from_numpy(boxes.astype(np.float32))[:, None])
    mask = torch.stack(masks).flatten(0, 1).to(video.device)
    subject = batch["subject"].repeat_interleave(f, 0)
    subject_mask = (subject > -0.99).any(1, keepdim=True).float()
    return {"source": video.flatten(0, 1), "mask": mask, "target": video.flatten(0, 1),
            "reference": subject, "reference_mask": subject_mask,
            "caption": [c for c in batch["caption"] for _ in range(f)], "meta": batch["meta"], "_frames": f}


def prepare(method: str, task: str, batch: Batch) -> tuple[Batch, dict[str, Any], Callable[[torch.Tensor], torch.Tensor]]:
    """(method batch, sample() kwargs, post-processing of the method's output)."""
    ident: Callable[[torch.Tensor], torch.Tensor] = lambda x: x  # noqa: E731
    if task == "subject_video" and method != "magdiff":
        frames = frames_as_batch(batch)
        f = frames.pop("_frames")
        inner, kw, post = prepare(method, "exemplar_inpaint", frames)
        return inner, kw, lambda x: post(x).unflatten(0, (-1, f))
    if task == "exemplar_inpaint":
        holes = batch["mask"]
        filled = blur_fill(batch["source"], holes)
        ref_mask = batch.get("reference_mask")  # COCOEE has none: the whole reference is the object
        ref_mask = torch.ones_like(batch["reference"][:, :1]) if ref_mask is None else ref_mask
        if method == "paste":
            return {}, {}, lambda _: paste_into(filled, holes, batch["reference"], ref_mask)
        if method == "blur_fill":
            return {}, {}, lambda _: filled
        if method in ("sd_inpaint", "paint_by_example", "mimicbrush"):
            b = {k: batch[k] for k in ("source", "mask", "reference", "reference_mask", "caption") if k in batch}
            return b, {}, ident
        if method == "magic_fixup":
            coarse = paste_into(filled, holes, batch["reference"], ref_mask)
            return {"coarse": coarse, "valid": torch.ones_like(holes), "reference": batch["source"] * (1 - holes),
                    "source": filled, "mask": holes}, {}, ident
        if method == "magdiff":
            subject = cutout(batch["reference"], ref_mask)
            inplace = paste_into(torch.full_like(filled, -1.0), holes, batch["reference"], ref_mask)
            return ({"subject": subject, "subject_inplace": inplace, "caption": batch["caption"],
                     "video": filled[:, None]}, {"strength": 0.6}, lambda x: x[:, 0])
    if task == "coarse_edit":
        holes = 1 - batch["valid"]
        coarse_filled = blur_fill(batch["coarse"], holes)
        if method == "paste":
            return {}, {}, lambda _: batch["coarse"]
        if method == "blur_fill":
            return {}, {}, lambda _: coarse_filled
        if method == "magic_fixup":
            return {k: batch[k] for k in ("source", "mask", "reference", "coarse", "valid", "caption")}, {}, ident
        if method == "sd_inpaint":
            return ({"source": coarse_filled, "coarse": coarse_filled, "mask": torch.ones_like(holes),
                     "caption": batch["caption"]}, {"strength": 0.4}, ident)
        size = batch["source"].shape[-1]
        ref = torch.stack([_object_crop(batch["source"][i], m["source_boxes"][m["object"]], size)
                           for i, m in enumerate(batch["meta"])])
        if method == "paint_by_example":
            m = torch.where(holes.flatten(1).sum(1)[:, None, None, None] > 0, holes, batch["mask"])
            return {"source": coarse_filled, "mask": m, "reference": ref}, {}, ident
        if method == "mimicbrush":
            return {"source": coarse_filled, "mask": batch["mask"], "reference": batch["source"]}, {}, ident
        if method == "magdiff":
            inplace = torch.where(batch["mask"] > 0.5, coarse_filled, torch.full_like(coarse_filled, -1.0))
            return ({"subject": ref, "subject_inplace": inplace, "caption": batch["caption"],
                     "video": coarse_filled[:, None]}, {"strength": 0.4}, lambda x: x[:, 0])
    if task == "subject_video":
        if method == "magdiff":
            return {k: batch[k] for k in ("subject", "subject_inplace", "caption")}, {}, ident
    raise ValueError(f"no adapter for method '{method}' on task '{task}'")
