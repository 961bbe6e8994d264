"""Attention-processor plumbing shared by the methods that pass features between two UNets.

MimicBrush (reference K/V) and Magic Fixup (detail cross-attention) both let one UNet's transformer blocks
write their pre-self-attention normalised hidden states into a `FeatureBank` that the matching blocks of
another UNet read. Behaviour is swapped through `set_attn_processor`, never by patching `forward`; every
install returns the previous processors so that `restore_processors` brings back the stock UNet exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from refedit.backbone.unet import transformer_blocks

BLOCK_GROUPS = ("down", "mid", "up")


class FeatureBank:
    """Hidden states keyed by transformer-block name (e.g. 'up_blocks.1.attentions.0.transformer_blocks.0')."""

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}

    def write(self, key: str, value: torch.Tensor) -> None:
        self.features[key] = value

    def read(self, key: str) -> torch.Tensor | None:
        return self.features.get(key)

    def clear(self) -> None:
        self.features.clear()

    def __len__(self) -> int:
        return len(self.features)


def block_names(unet: torch.nn.Module, groups: Iterable[str] = BLOCK_GROUPS) -> list[str]:
    """Names of the transformer blocks in the given groups ('down', 'mid', 'up'), in forward order."""
    groups = tuple(groups)
    bad = set(groups) - set(BLOCK_GROUPS)
    if bad:
        raise ValueError(f"unknown block group(s) {sorted(bad)}; choose from {BLOCK_GROUPS}")
    prefix = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
    return [n for n, _ in transformer_blocks(unet) if any(n.startswith(prefix[g]) for g in groups)]


def multihead_attention(attn: Attention, query_states: torch.Tensor, kv_states: torch.Tensor,
                        to_q=None, to_k=None, to_v=None, to_out=None) -> torch.Tensor:
    """softmax(QK^T/sqrt(d))V with `attn`'s head layout; projections default to `attn`'s own (3-D inputs only,
    as BasicTransformerBlock passes them). No residual: the block adds it."""
    to_q, to_k, to_v = to_q or attn.to_q, to_k or attn.to_k, to_v or attn.to_v
    to_out = to_out or attn.to_out
    b = query_states.shape[0]
    q, k, v = to_q(query_states), to_k(kv_states), to_v(kv_states)
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
    out = to_out[1](to_out[0](out))
    return out / attn.rescale_output_factor


class CaptureProcessor:
    """Self-attention as usual, after writing its input — the block's normalised hidden state — to the bank."""

    def __init__(self, bank: FeatureBank, key: str, inner: Any):
        self.bank, self.key, self.inner = bank, key, inner

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, **kwargs):
        self.bank.write(self.key, hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_processors(unet, blocks: Iterable[str], factory: Callable[[str, Attention, Any], Any],
                       which: str = "attn1") -> dict[str, Any]:
    """Replace the `which` ('attn1' self / 'attn2' cross) processor of each named block with
    factory(block_name, attention_module, current_processor). Returns the previous processors (for restore)."""
    original = dict(unet.attn_processors)
    procs = dict(original)
    modules = dict(unet.named_modules())
    for name in blocks:
        key = f"{name}.{which}.processor"
        if key not in procs:
            raise KeyError(f"no attention processor '{key}' in this UNet")
        procs[key] = factory(name, modules[f"{name}.{which}"], original[key])
    unet.set_attn_processor(procs)
    return original


def install_capture(unet, bank: FeatureBank, blocks: Iterable[str]) -> dict[str, Any]:
    """Make `unet` write each named block's normalised hidden state into `bank` on every forward."""
    return install_processors(unet, blocks, lambda name, attn, cur: CaptureProcessor(bank, name, cur))


def restore_processors(unet, original: dict[str, Any]) -> None:
    unet.set_attn_processor(dict(original))
