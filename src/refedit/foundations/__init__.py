"""Stage 1 of the embedded toyworld default: what the real world downloads, trained on toyworld once per budget
and cached — a VAE, a CLIP (text + vision towers and tokenizer), the toyworld probe and object locator (eval's
feature space), and a toy Stable Diffusion: a text-to-image U-Net (`toy-sd/`) and an inpainting U-Net fine-tuned
from it (`toy-sd-inpainting/`), saved as diffusers model roots that stock pipelines load. `backbone=tiny` points
at these roots exactly as `backbone=sd15` points at SD-1.5 weights.

This package sits above `backbone/`, `data/` and `eval/` (it trains their models on their data); entry points call
`prepare_foundations(cfg)`.
"""

from __future__ import annotations

from typing import Any

from refedit.foundations.build import (
    FOUNDATIONS_VERSION,
    PARTS,
    ROOTS,
    build_foundations,
    ensure_foundations,
    foundations_info,
    foundations_ready,
    save_random_foundations,
)
from refedit.foundations.config import FoundationsConfig, foundations_config


def stage1_config(foundations: Any) -> FoundationsConfig:
    """The FoundationsConfig of a `foundations` config node: its `stage1` budget and its `unet` architecture."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(foundations, resolve=True) if not isinstance(foundations, dict) else foundations
    return foundations_config(node.get("stage1"), unet=dict(node.get("unet") or {}))


def prepare_foundations(cfg: Any) -> None:
    """Build the cached foundations (`paths.foundations_dir`) when the run's backbone asks for them
    (`backbone.build_foundations`) or when there is no backbone node (compare / eval use the probe)."""
    bb = cfg.get("backbone")
    if bb is not None and not bb.get("build_foundations"):
        return
    ensure_foundations(cfg.paths.foundations_dir, stage1_config(cfg.foundations))


__all__ = ["FOUNDATIONS_VERSION", "PARTS", "ROOTS", "FoundationsConfig", "build_foundations", "ensure_foundations",
           "foundations_config", "foundations_info", "foundations_ready", "prepare_foundations",
           "save_random_foundations", "stage1_config"]
