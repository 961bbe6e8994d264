"""Held-out quality of the toy SD roots, measured through stock diffusers pipelines (no refedit code between the
saved files and the images): what the text-to-image prior draws for a caption, and what the inpainting prior
redraws in an object's box, both read by the toyworld probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from refedit.eval.features import ObjectLocator, ToyworldProbe, square_crops
from refedit.foundations.data import ATTRIBUTES, SEEDS, Scenes, scenes
from refedit.foundations.probe import attribute_accuracy, located_accuracy

CHANCE = {"shape": 1 / 8, "colour": 1 / 8, "pattern": 1 / 4}


def _pil(images: torch.Tensor) -> list[Image.Image]:
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def _from_pt(x: torch.Tensor) -> torch.Tensor:
    return x.float().cpu() * 2 - 1


def heldout_single_objects(n: int, size: int) -> Scenes:
    """One-object held-out frames whose object is at least 60% visible: their captions name what is shown."""
    return scenes(SEEDS["prior_heldout"], n, size, "held-out captions", single_object=1.0, min_visible=0.6)


def _labels(sc: Scenes) -> torch.Tensor:
    return torch.tensor([objs[0][2] for objs in sc.objects])


@torch.no_grad()
def text_to_image_quality(root: str | Path, probe: ToyworldProbe, locator: ObjectLocator, n: int, steps: int,
                          guidance: float, seed: int = 0, device: str = "cpu", grid: str | Path | None = None
                          ) -> dict[str, Any]:
    """`StableDiffusionPipeline.from_pretrained(root)` on `n` held-out one-object captions ('a red striped
    star'): attribute accuracy of what it draws (the locator finds the object, the probe classifies it), and of
    unconditional samples (empty caption, no guidance) against the same captions, the floor."""
    from diffusers import StableDiffusionPipeline

    size = _resolution(root)
    held = heldout_single_objects(n, size)
    labels = _labels(held)
    pipe = StableDiffusionPipeline.from_pretrained(str(root)).to(device)
    pipe.set_progress_bar_config(disable=True)
    out: dict[str, Any] = {"captions": n, "steps": steps, "guidance": guidance, "chance": CHANCE}
    for name, prompts, scale in (("conditional", held.captions, guidance), ("unconditional", [""] * n, 1.0)):
        imgs = pipe(prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=scale,
                    generator=torch.Generator(device).manual_seed(seed), output_type="pt").images
        imgs = _from_pt(imgs)
        out[name] = located_accuracy(locator, probe, imgs, labels)
        if grid is not None and name == "conditional":
            save_grid(imgs[:32], held.captions[:32], grid)
    return out


@torch.no_grad()
def inpainting_quality(root: str | Path, probe: ToyworldProbe, n: int, steps: int, guidance: float,
                       seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """`StableDiffusionInpaintPipeline.from_pretrained(root)` on `n` held-out frames with their most visible
    object's box (grown by 10% + 1 px) masked and that object's caption: attribute accuracy of the redrawn box
    window, and masked PSNR against the frame beside OpenCV's `blur_fill` on the same masks."""
    from diffusers import StableDiffusionInpaintPipeline

    from refedit.eval.adapters import blur_fill
    from refedit.eval.metrics import psnr_masked

    size = _resolution(root)
    held = scenes(SEEDS["inpaint_heldout"], n, size, "held-out inpainting", min_visible=0.6)
    masks, boxes, captions, labels = [], [], [], []
    for objs in held.objects:
        cap, m, lab = objs[0]
        ys, xs = np.nonzero(m)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        pad = int(round(0.1 * max(x1 - x0, y1 - y0))) + 1
        mm = np.zeros((size, size), np.float32)
        mm[max(y0 - pad, 0):y1 + pad, max(x0 - pad, 0):x1 + pad] = 1
        masks.append(mm)
        boxes.append((x0, y0, x1, y1))
        captions.append(cap)
        labels.append(lab)
    mask = torch.from_numpy(np.stack(masks))[:, None]
    labels_t = torch.tensor(labels)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(root)).to(device)
    pipe.set_progress_bar_config(disable=True)
    imgs = pipe(captions, image=_pil(held.images), mask_image=[Image.fromarray((m * 255).astype(np.uint8))
                                                               for m in masks],
                height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator(device).manual_seed(seed), output_type="pt").images
    imgs = _from_pt(imgs)
    filled = blur_fill(held.images, mask)
    crops = square_crops(imgs, boxes, probe.image_size)
    return {"frames": n, "steps": steps, "guidance": guidance,
            "accuracy": attribute_accuracy(probe, crops, labels_t),
            "blur_fill_accuracy": attribute_accuracy(probe, square_crops(filled, boxes, probe.image_size), labels_t),
            "psnr_masked_db": round(float(psnr_masked(imgs, held.images, mask).mean()), 2),
            "blur_fill_psnr_masked_db": round(float(psnr_masked(filled, held.images, mask).mean()), 2)}


def _resolution(root: str | Path) -> int:
    import json

    cfg = json.loads((Path(root) / "unet" / "config.json").read_text())
    vae = json.loads((Path(root) / "vae" / "config.json").read_text())
    return int(cfg["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def save_grid(images: torch.Tensor, captions: list[str], path: str | Path, cols: int = 8) -> None:
    """A PNG grid of images (N,3,H,W) in [-1,1] with each caption under its image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax, img, cap in zip(np.ravel(axes), _pil(images), captions):
        ax.imshow(img)
        ax.set_title(cap.replace(" ", "\n", 1) if len(cap) > 18 else cap, fontsize=6)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["ATTRIBUTES", "CHANCE", "heldout_single_objects", "inpainting_quality", "save_grid",
           "text_to_image_quality"]
