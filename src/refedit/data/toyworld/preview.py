"""Contact sheet of every toyworld task: one block per task, a few samples per block, labelled rows."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from .tasks import TASKS, build_sample

# columns shown per task: (header, function of the sample -> (3,H,W) or (1,H,W) tensor or list of them)
_OVERLAY = torch.tensor([1.0, -1.0, -1.0])[:, None, None]


def _overlay(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with the edit region tinted red and dimmed."""
    return img * (1 - 0.55 * mask) + _OVERLAY * 0.55 * mask


def _columns(task: str, s: dict) -> list[tuple[str, torch.Tensor]]:
    if task in ("exemplar_inpaint", "exemplar_inpaint_self"):
        return [("source", s["source"]), ("mask", _overlay(s["source"], s["mask"])), ("reference", s["reference"]),
                ("reference_mask", s["reference_mask"]), ("target", s["target"])]
    if task == "reference_imitation":
        return [("source", s["source"]), ("mask", _overlay(s["source"], s["mask"])), ("reference", s["reference"]),
                ("reference_mask", s["reference_mask"]), ("depth", s["depth"] * 2 - 1), ("target", s["target"])]
    if task == "coarse_edit":
        return [("source = reference", s["source"]), ("mask", _overlay(s["source"], s["mask"])),
                ("coarse", s["coarse"]), ("valid", s["valid"]), ("target", s["target"])]
    if task == "subject_video":
        return [("subject", s["subject"])] + [(f"video[{f}]", fr) for f, fr in enumerate(s["video"])]
    if task == "text_inpaint":
        return [("source", s["source"]), ("mask", _overlay(s["source"], s["mask"])), ("target", s["target"])]
    raise ValueError(f"preview: no layout for task {task!r}")


def _to_pil(t: torch.Tensor, cell: int) -> Image.Image:
    a = t.detach().float()
    if a.shape[0] == 1:
        a = a.expand(3, -1, -1) * 2 - 1 if a.min() >= 0 else a.expand(3, -1, -1)
    u8 = ((a.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(u8).resize((cell, cell), Image.NEAREST)


def render_sheet(size: int = 64, n: int = 3, *, cell: int | None = None, start_seed: int = 0,
                 tasks: tuple[str, ...] = TASKS, frames: int = 8) -> Image.Image:
    """A PIL image: per task a header row of column names, then `n` samples (seeds start_seed..)."""
    cell = cell or min(max(size, 96), 192)
    label_w, pad, head_h = 230, 4, 18
    font = ImageFont.load_default(size=12)
    blocks = []
    for task in TASKS if tasks is None else tasks:
        rows = [build_sample(task, start_seed + i, size=size, frames=frames) for i in range(n)]
        cols = [_columns(task, s) for s in rows]
        width = label_w + len(cols[0]) * (cell + pad)
        img = Image.new("RGB", (width, head_h + n * (cell + pad) + pad), (255, 255, 255))
        d = ImageDraw.Draw(img)
        d.text((4, 3), task, fill=(0, 0, 0), font=font)
        for c, (name, _) in enumerate(cols[0]):
            d.text((label_w + c * (cell + pad) + 2, 3), name, fill=(60, 60, 60), font=font)
        for r, (s, cs) in enumerate(zip(rows, cols)):
            y = head_h + r * (cell + pad)
            text = f"seed {s['meta']['seed']}\n" + "\n".join(textwrap.wrap(s["caption"], 34))
            d.multiline_text((4, y + 4), text, fill=(0, 0, 0), font=font, spacing=3)
            for c, (_, t) in enumerate(cs):
                img.paste(_to_pil(t, cell), (label_w + c * (cell + pad), y))
        blocks.append(img)
    W = max(b.width for b in blocks)
    sheet = Image.new("RGB", (W, sum(b.height + 8 for b in blocks)), (235, 235, 235))
    y = 0
    for b in blocks:
        sheet.paste(b, (0, y))
        y += b.height + 8
    return sheet


def preview(out: str | os.PathLike, size: int = 64, n: int = 3, **kw) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_sheet(size, n, **kw).save(path)
    return path


__all__ = ["preview", "render_sheet"]
