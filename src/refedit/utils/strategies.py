"""Strategies whose arguments are Python classes, built from names so that YAML can configure them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BLOCKS = {
    "BasicTransformerBlock": "diffusers.models.attention:BasicTransformerBlock",
    "ResnetBlock2D": "diffusers.models.resnet:ResnetBlock2D",
    "Transformer2DModel": "diffusers.models.transformers.transformer_2d:Transformer2DModel",
    "CLIPEncoderLayer": "transformers.models.clip.modeling_clip:CLIPEncoderLayer",
}


def block_class(name: str) -> type[torch.nn.Module]:
    import importlib

    if name not in _BLOCKS:
        raise ValueError(f"unknown block '{name}' for FSDP wrapping; known: {sorted(_BLOCKS)}")
    mod, _, cls = _BLOCKS[name].partition(":")
    return getattr(importlib.import_module(mod), cls)


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", wrap_blocks: Sequence[str] = ("BasicTransformerBlock",),
                  checkpoint_blocks: Sequence[str] = ("BasicTransformerBlock",), use_orig_params: bool = True,
                  **kwargs):
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(sharding_strategy=sharding_strategy,
                        auto_wrap_policy={block_class(n) for n in wrap_blocks},
                        activation_checkpointing_policy={block_class(n) for n in checkpoint_blocks} or None,
                        use_orig_params=use_orig_params, **kwargs)
