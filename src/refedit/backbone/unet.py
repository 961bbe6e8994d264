"""UNet construction: tiny from a config dict, or SD-1.x via from_pretrained, with conv_in widening."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from refedit.backbone.latents import InputLayout
from refedit.backbone.loading import load_component


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Grow conv_in to `in_channels`: pretrained weights stay in the first channels, new ones start at zero.

    Zero-initialised extra channels make the widened UNet compute exactly what the pretrained one did,
    so fine-tuning starts from the pretrained behaviour.
    """
    old = unet.conv_in
    if in_channels == old.in_channels:
        return unet
    if in_channels < old.in_channels:
        raise ValueError(f"cannot shrink conv_in from {old.in_channels} to {in_channels} channels")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    if old.weight.device.type != "meta":
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, : old.in_channels] = old.weight
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


UNET_INITS = ("text_to_image", "inpainting")


def init_spec(spec: Mapping[str, Any], init: str) -> dict[str, Any]:
    """`spec` with `pretrained` set to the root that prior `init` loads from (see `build_unet`)."""
    if init not in UNET_INITS:
        raise ValueError(f"method.unet_init must be one of {UNET_INITS}, got {init!r}")
    spec = dict(spec)
    inpaint_root = spec.pop("pretrained_inpaint", None)
    if init == "inpainting" and spec.get("pretrained") and inpaint_root:
        spec["pretrained"] = inpaint_root
    return spec


def build_unet(spec: Mapping[str, Any], *, layout: InputLayout | None = None, in_channels: int | None = None,
               cross_attention_dim: int | None = None, meta: bool = False,
               init: str = "text_to_image") -> UNet2DConditionModel:
    """Build the backbone UNet from `backbone.unet` for the input `layout` (or a bare `in_channels`).

    `init` is the prior a method's paper fine-tunes: `text_to_image` loads `backbone.unet.pretrained` (SD-1.x,
    or toy-sd), `inpainting` loads `backbone.unet.pretrained_inpaint` (SD-inpainting, or toy-sd-inpainting) and
    falls back to `pretrained` where a backbone has no separate inpainting root (backbone=sd15_inpaint points
    `pretrained` at one). `pretrained: null` means a random init, whatever `pretrained_inpaint` says.
    Pretrained weights whose input is the layout's first groups are widened (zero init) and checked; a random
    init is built with the layout's input and output widths directly. `cross_attention_dim` overrides the
    config only for a random init.
    """
    if layout is not None:
        if in_channels is not None and in_channels != layout.in_channels:
            raise ValueError(f"build_unet: in_channels={in_channels} contradicts the layout {layout.describe()}")
        in_channels = layout.in_channels
    spec = init_spec(spec, init)
    if spec.get("pretrained") and not meta:
        unet = load_component(UNet2DConditionModel, spec, name="unet")
        if layout is not None:
            layout.check_widenable(unet, f"backbone.unet ({spec['pretrained']})")
    else:
        cfg = dict(spec["config"])
        if in_channels is not None:
            cfg["in_channels"] = in_channels
        if layout is not None:
            cfg["out_channels"] = layout.latent_channels
        if cross_attention_dim is not None:
            cfg["cross_attention_dim"] = cross_attention_dim
        unet = load_component(UNet2DConditionModel, {"config": cfg}, name="unet", meta=meta)
    if in_channels is not None:
        widen_conv_in(unet, in_channels)
    if layout is not None:
        layout.check(unet)
    return unet


def transformer_blocks(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The BasicTransformerBlocks of a UNet in forward order (down, mid, up): the unit reference/detail
    injection works on."""
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [(n, m) for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}  # diffusers registers up_blocks before mid_block
    return sorted(blocks, key=lambda nm: stage.get(nm[0].split(".")[0], 3))  # stable: order within a stage kept


def probe_latent(config: Mapping[str, Any], device: str | torch.device = "cpu") -> torch.Tensor:
    """The smallest input a U-Net of `config` takes (one latent pixel per down-sampling step, zeros): for
    autograd probes of which parameters an output depends on."""
    d = 2 ** (len(config["block_out_channels"]) - 1)
    return torch.zeros(1, int(config["in_channels"]), d, d, device=device)


def parameters_reached(output: torch.Tensor,
                       named_parameters: Sequence[tuple[str, torch.nn.Parameter]]) -> frozenset[str]:
    """Names of the parameters `output` depends on: those a gradient of ``output.sum()`` reaches. One backward
    (no `.grad` written); on the meta device it costs no memory. A parameter left out of a method's
    `trainable_parameters` because nothing reaches it spares DDP its `find_unused_parameters` search."""
    grads = torch.autograd.grad(output.sum(), [p for _, p in named_parameters], allow_unused=True)
    return frozenset(n for (n, _), g in zip(named_parameters, grads) if g is not None)
