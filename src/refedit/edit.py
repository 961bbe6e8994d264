"""One edit from files:

    python -m refedit.edit ckpt=<ckpt> source=img.png mask=mask.png [reference=ref.png] [caption="..."]
        [coarse=collage.png valid=valid.png] [subject=cutout.png subject_inplace=frame0_subject.png]
        out=result.png|clip.mp4|clip.gif
        [seed=0] [steps=50] [guidance=5] [strength=1.0] [paste_back=true]

Only the inputs the checkpoint's method needs are required. Masks: white (>= 128) = the region to edit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from refedit.utils.cli import UsageError, check_writable, parse_kv, report_input_errors
from refedit.utils.images import (
    InputError,
    image_to_tensor,
    mask_to_tensor,
    read_depth,
    read_image,
    resize_image,
    resize_mask,
    save_image,
    to_unit,
)

IMAGE_KEYS = ("source", "reference", "coarse", "subject", "subject_inplace")
MASK_KEYS = ("mask", "valid", "reference_mask")
OPTIONS = ("ckpt", "out", "caption", "seed", "steps", "guidance", "strength", "paste_back", "eta", "depth",
           *IMAGE_KEYS, *MASK_KEYS)
CLIP_SUFFIXES = (".mp4", ".gif", ".webm", ".mov")


def _bool(v: str, name: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{name}={v}: expected true or false")


def load_inputs(args: dict[str, str], needed: tuple[str, ...],
                resolution: int | None) -> tuple[dict[str, Any], tuple]:
    """Read, check and resize the files the method needs; returns the batch and the source's original size.
    `resolution=None` keeps images and masks at their own size (for methods that fit inputs themselves)."""
    batch: dict[str, Any] = {}
    orig_hw = None
    missing = [k for k in needed if k not in args and k not in ("video", "meta", "depth", "valid", "reference_mask")]
    if missing:
        raise UsageError(f"this method needs {', '.join(f'{k}=' for k in missing)}")
    src_path = args.get("source")
    if src_path and Path(src_path).suffix.lower() in CLIP_SUFFIXES:  # a clip to edit (video methods)
        from refedit.utils.video import read_clip

        if not Path(src_path).is_file():
            raise InputError(f"source={src_path}: no such file")
        try:
            frames = read_clip(src_path)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input file
            raise InputError(f"source={src_path}: not a readable video ({type(e).__name__})") from e
        clip = torch.stack([resize_image(image_to_tensor(f), resolution) for f in frames])
        batch["video"] = clip[None]
        orig_hw = frames.shape[1:3]
    for key in IMAGE_KEYS:
        if key in args and key not in batch and not (key == "source" and "video" in batch):
            arr = read_image(args[key], name=key)
            if key == "source":
                orig_hw = arr.shape[:2]
            img = image_to_tensor(arr)
            batch[key] = (img if resolution is None else resize_image(img, resolution))[None]
    for key in MASK_KEYS:
        if key in args:
            arr = read_image(args[key], name=key, mode="L")
            ref_key = {"mask": "source", "valid": "coarse", "reference_mask": "reference"}[key]
            if ref_key in args and ref_key in batch:
                ref_hw = read_image(args[ref_key], name=ref_key).shape[:2]
                if arr.shape[:2] != ref_hw:
                    raise InputError(f"{key}={args[key]}: size {arr.shape[1]}x{arr.shape[0]} differs from "
                                     f"{ref_key} {ref_hw[1]}x{ref_hw[0]}")
            m = mask_to_tensor(arr)
            if key == "mask" and m.sum() == 0:
                raise InputError(f"mask={args[key]}: the mask is empty (all zero): nothing to edit "
                                 f"(white = region to edit)")
            batch[key] = (m if resolution is None else resize_mask(m, resolution))[None]
    if "depth" in args:  # MimicBrush shape control: a depth map of the source (white = near)
        d = read_depth(args["depth"])
        if orig_hw is not None and tuple(d.shape[-2:]) != tuple(orig_hw):
            raise InputError(f"depth={args['depth']}: size {d.shape[-1]}x{d.shape[-2]} differs from source "
                             f"{orig_hw[1]}x{orig_hw[0]}")
        if resolution is not None:
            d = F.interpolate(d[None], size=(resolution, resolution), mode="bilinear", align_corners=False)[0]
        batch["depth"] = d[None]
    if "coarse" in batch and "valid" not in batch:
        batch["valid"] = torch.ones_like(batch["coarse"][:, :1])
    if "caption" in args:
        batch["caption"] = [args["caption"]]
    elif "caption" in needed:
        batch["caption"] = [""]
    batch["meta"] = [{"id": Path(args.get("source", args.get("subject", "edit"))).stem,
                      "files": {k: args[k] for k in (*IMAGE_KEYS, *MASK_KEYS) if k in args}}]
    return batch, orig_hw


def check_files(args: dict[str, str]) -> None:
    """Fail fast on a missing input file, before a checkpoint is loaded."""
    for key in (*IMAGE_KEYS, *MASK_KEYS, "depth"):
        if key in args and not Path(args[key]).exists():
            raise InputError(f"{key}={args[key]}: no such file")


def sample_options(args: dict[str, str]) -> dict[str, Any]:
    """The `sample` keyword arguments the options ask for (absent: the method's own defaults)."""
    kw: dict[str, Any] = {}
    if "steps" in args:
        kw["num_steps"] = int(args["steps"])
    if "guidance" in args:
        kw["guidance_scale"] = float(args["guidance"])
    if "strength" in args:
        kw["strength"] = float(args["strength"])
    if "eta" in args:
        kw["eta"] = float(args["eta"])
    if "paste_back" in args:
        kw["paste_back"] = _bool(args["paste_back"], "paste_back")
    return kw


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def edit_with_model(model: Any, args: dict[str, str], progress: bool = True) -> tuple[torch.Tensor, tuple | None]:
    """Run a loaded method on the input files named in `args` (the keys `load_inputs` reads, plus the sampling
    options): (result in [-1,1] before resizing and quantisation, the source's original size). The batch goes
    to the model's device; the seed's generator lives there too."""
    check_files(args)
    resolution = int(model.backbone_cfg["resolution"])
    native = bool(model.edit_native_size)  # True: the method fits the inputs itself (MimicBrush)
    batch, orig_hw = load_inputs(args, tuple(model.sample_keys), None if native else resolution)
    device = model.device
    batch = _to(batch, device)
    batch = _to(model.prepare_edit_batch(batch), device)
    g = torch.Generator(device=device).manual_seed(int(args.get("seed", 0)))
    with torch.no_grad():
        result = model.sample(batch, generator=g, progress=progress, **sample_options(args))
    return result, orig_hw


def check_out(out: str | Path) -> Path:
    """Fail before any work on an output path that cannot be written or has no writer for its suffix."""
    from PIL import Image

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in CLIP_SUFFIXES and suffix not in Image.registered_extensions():
        raise InputError(f"out={out}: unknown file type '{suffix}' (an image such as .png, or a clip: "
                         f"{', '.join(CLIP_SUFFIXES)})")
    return check_writable(out, "out")


def edit_result(args: dict[str, str]) -> tuple[torch.Tensor, Any, tuple | None]:
    """Load the checkpoint and inputs and run the method: (result in [-1,1] before resizing and quantisation,
    the model, the source's original size)."""
    from refedit.methods import load_method

    if not Path(args["ckpt"]).is_file():
        raise InputError(f"ckpt={args['ckpt']}: no such file")
    check_files(args)
    if "out" in args:
        check_out(args["out"])
    model = load_method(args["ckpt"])
    result, orig_hw = edit_with_model(model, args)
    return result, model, orig_hw


def save_result(result: torch.Tensor, method: str, orig_hw: tuple | None, out: str | Path) -> Path:
    """Write a result of `edit_with_model`: a clip (.mp4/.gif/...) for video methods, else an image at the
    source's original size."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if result.dim() == 5 or out.suffix.lower() in CLIP_SUFFIXES:
        from refedit.utils.video import write_clip

        if result.dim() != 5:
            raise InputError(f"out={out}: method '{method}' produces an image, not a clip")
        write_clip(to_unit(result[0]), out)
    else:
        img = result
        if orig_hw is not None and tuple(orig_hw) != tuple(img.shape[-2:]):
            img = torch.nn.functional.interpolate(img, size=tuple(orig_hw), mode="bicubic", align_corners=False)
        save_image(to_unit(img[0]), out)
    return out


def run_edit(args: dict[str, str]) -> Path:
    result, model, orig_hw = edit_result(args)
    return save_result(result, model.name, orig_hw, args["out"])


def _quiet_libraries() -> None:
    """Errors must be the only line on stderr: no weight-loading progress bars from transformers/diffusers."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


# one file in, one result out: a ValueError or RuntimeError on the way is about these inputs, not a bug to trace
@report_input_errors("refedit.edit", extra=(ValueError, RuntimeError))
def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = parse_kv(sys.argv[1:] if argv is None else argv, required=("ckpt", "out"), optional=OPTIONS)
    out = run_edit(args)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
