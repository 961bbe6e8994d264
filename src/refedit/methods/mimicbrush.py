"""MimicBrush (Chen et al., NeurIPS 2024): zero-shot image editing by reference imitation
(arXiv 2406.07547). No training code was ever released; this is the paper's recipe.

Two U-Nets. The *imitative* U-Net denoises ``cat([noisy latent, mask 1, masked-image latent, depth feature])``
(`imitative_layout`: 4 + 1 + 4 + 4 with SD's VAE, the depth feature as wide as the latent; masked pixels black
before VAE encoding, new conv_in channels zero-initialised). The
*reference* U-Net runs on the clean reference latent at the same timestep with the same context; its mid and
up transformer blocks write their pre-self-attention normalised hidden states into a bank, and the matching
imitative blocks attend over ``cat([own, reference])`` keys/values with their own projections
(`ReferenceKVProcessor`). The context is CLIP's penultimate-layer tokens of the reference through a Linear.
A small conv net turns depth (from the batch or a pluggable estimator) into the depth channels.

CFG: the unconditional branch has the null context and no reference K/V. Training drops the depth with
``depth_drop_prob`` (0.5, all-zero depth). ``recipe`` chooses between the paper and the released code (`RECIPES`):

- ``paper`` (default): attention over ``cat([own, reference])`` only; the reference branch (K/V and context
  together) dropped per sample with ``cond_drop_prob`` (0.1); null context = projection of CLIP(black image).
- ``release``: 0.5 x concatenated + 0.5 x plain self-attention; reference K/V dropped for a fixed quarter of
  every training batch (its first ``int(0.25 B)`` samples), whatever their context, which is dropped on its own
  per sample with ``cond_drop_prob``; null context = projection of CLIP of all-zero *pixel values* (zeros after
  CLIP normalisation: the CLIP mean colour, not black).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from hydra.utils import get_class, instantiate

from refedit.backbone.attention import (
    FeatureBank,
    block_names,
    install_capture,
    install_processors,
    multihead_attention,
    restore_processors,
)
from refedit.backbone.encoders import FrozenImageEncoder
from refedit.backbone.latents import InputLayout, inpaint_layout, latent_mask, text_to_image_layout
from refedit.backbone.unet import build_unet, parameters_reached, probe_latent, widen_conv_in
from refedit.methods.base import Cond, LatentEditModule, paste_back_feathered

log = logging.getLogger(__name__)


#: paper vs released code (ali-vilab/MimicBrush: models/ReferenceNet_attention.py, the reader's self-attention;
#: mimicbrush/mimicbrush_referencenet.py, get_image_embeds). blend: weight of plain self-attention (None =
#: concatenation only); reference_drop_fraction: None = the reference K/V go with the context's per-sample
#: dropout, else that fixed fraction of each training batch loses them; null_image: what CLIP sees for the
#: unconditional context.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"blend": None, "reference_drop_fraction": None, "null_image": "black"},
    "release": {"blend": 0.5, "reference_drop_fraction": 0.25, "null_image": "zero_pixel_values"},
}


def imitative_layout(latent_channels: int) -> InputLayout:
    """The imitative U-Net's input: SD-inpainting's (noisy latent, mask, masked-image latent), then the depth
    feature, as wide as the latent (SD: 4 + 1 + 4 + 4). The inpainting channels come first so SD-inpainting
    weights widen to it."""
    return inpaint_layout(latent_channels).extend(("depth", int(latent_channels)), name="imitative")


# ------------------------------------------------------------------------------------ reference attention
class ReferenceBank(FeatureBank):
    """Reference hidden states per block, for the *kept* samples only, plus which samples those are.

    ``keep`` (B,) bool says which samples of the imitative batch see the reference; the features hold
    ``keep.sum()`` rows in batch order. ``keep=None`` means every sample of the batch has features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keep: torch.Tensor | None = None

    def clear(self) -> None:
        super().clear()
        self.keep = None


class ReferenceKVProcessor:
    """Self-attention whose keys/values are ``cat([own, reference], tokens)`` (the block's own projections).

    ``blend`` (MimicBrush's release uses 0.5) mixes in plain self-attention: ``(1 - blend) * ref + blend *
    self``; None is the paper's equation (concatenation only). Samples without reference features (empty
    bank, or ``keep`` False) run the original processor, so an empty bank is exactly the stock U-Net.
    """

    def __init__(self, bank: ReferenceBank, key: str, inner: Any, blend: float | None = None):
        if blend is not None and not 0.0 <= float(blend) <= 1.0:
            raise ValueError(f"method.blend must be null or in [0, 1], got {blend}")
        self.bank, self.key, self.inner = bank, key, inner
        self.blend = None if blend is None else float(blend)

    def _self(self, attn: Attention, h: torch.Tensor, attention_mask, temb, **kwargs) -> torch.Tensor:
        return self.inner(attn, h, None, attention_mask, temb, **kwargs)

    def _reference(
        self, attn: Attention, h: torch.Tensor, ref: torch.Tensor, attention_mask, temb, **kwargs
    ) -> torch.Tensor:
        if ref.shape[0] != h.shape[0] or ref.shape[-1] != h.shape[-1]:
            raise ValueError(
                f"reference features for block '{self.key}' have shape {tuple(ref.shape)}, the "
                f"imitative hidden states {tuple(h.shape)}: batch and channels must match"
            )
        # U-Nets pass no mask to self-attention; one would not cover the reference tokens
        if attention_mask is not None:
            raise ValueError(f"block '{self.key}': reference K/V attention does not take an attention mask")
        out = multihead_attention(attn, h, torch.cat([h, ref.to(h.dtype)], dim=1))
        if self.blend:
            out = (1.0 - self.blend) * out + self.blend * self._self(attn, h, attention_mask, temb, **kwargs)
        return out

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ):
        ref = self.bank.read(self.key)
        keep = self.bank.keep
        if ref is None or encoder_hidden_states is not None or (keep is not None and not bool(keep.any())):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if keep is None or bool(keep.all()):
            return self._reference(attn, hidden_states, ref, attention_mask, temb, **kwargs)
        # mixed batch: kept samples attend to [own, reference], dropped ones only to their own tokens
        keep = keep.to(hidden_states.device)
        mask_k, mask_d = (
            (None, None) if attention_mask is None else (attention_mask[keep], attention_mask[~keep])
        )
        out = hidden_states.new_empty(hidden_states.shape[:-1] + (attn.out_dim,))
        out[keep] = self._reference(attn, hidden_states[keep], ref, mask_k, temb, **kwargs)
        out[~keep] = self._self(attn, hidden_states[~keep], mask_d, temb, **kwargs)
        return out


def install_reference_kv(
    unet, bank: ReferenceBank, blocks: Iterable[str], blend: float | None = None
) -> dict[str, Any]:
    """Make the named blocks of `unet` read reference K/V from `bank`; returns the previous processors."""
    return install_processors(
        unet, blocks, lambda name, attn, cur: ReferenceKVProcessor(bank, name, cur, blend)
    )


def reference_dead_parameters(config: Mapping[str, Any], blocks: Iterable[str]) -> set[str]:
    """Names of the reference U-Net's parameters that none of the captured features depend on.

    Found by autograd on a copy of the architecture on the meta device (no memory, no weights, ~3 s for
    SD-1.5 on one CPU core; cached per architecture): forward a tiny latent, sum the captured features and
    ask which parameters got no gradient.
    """
    key = json.dumps(
        {k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=str
    )
    return set(_dead_parameters(key, tuple(blocks)))


@functools.lru_cache(maxsize=8)
def _dead_parameters(config_json: str, blocks: tuple[str, ...]) -> frozenset[str]:
    from diffusers import UNet2DConditionModel

    cfg = json.loads(config_json)
    try:
        with torch.device("meta"):
            probe = UNet2DConditionModel.from_config(cfg)
            bank = FeatureBank()
            install_capture(probe, bank, blocks)
            ctx = torch.zeros(1, 1, int(cfg["cross_attention_dim"]))
            probe(probe_latent(cfg, "meta"), torch.ones(1), encoder_hidden_states=ctx)
            named = list(probe.named_parameters())
            reached = parameters_reached(sum(f.sum() for f in bank.features.values()), named)
    except Exception as e:  # noqa: BLE001 - an architecture the probe cannot run: train everything
        log.warning(
            "mimicbrush: could not find the reference U-Net's unused parameters (%s: %s); all of them "
            "stay trainable (use a DDP strategy with find_unused_parameters=true)",
            type(e).__name__,
            e,
        )
        return frozenset()
    return frozenset(n for n, _ in named if n not in reached)


# ------------------------------------------------------------------------------------------ depth
class DepthGuider(torch.nn.Module):
    """Depth (B,1,H,W) -> (B,out_channels,H/d,W/d) (the latent's width: 4 for SD): conv 1->16, log2(d) stride-2
    convs up to 128 channels with SiLU, final conv to out_channels. The final conv is not zero-initialised: the imitative conv_in's depth channels already
    are, and two zero layers in a row would never receive a gradient."""

    def __init__(
        self, downsample: int, out_channels: int, base_channels: int = 16, max_channels: int = 128
    ):
        super().__init__()
        n = int(round(math.log2(downsample)))
        if 2**n != downsample:
            raise ValueError(f"DepthGuider needs a power-of-two downsample factor, got {downsample}")
        self.downsample = downsample
        chans = [min(base_channels * 2 ** (i + 1), max_channels) for i in range(n)]
        if chans:
            chans[-1] = max_channels
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(1, base_channels, 3, padding=1), torch.nn.SiLU()]
        c = base_channels
        for co in chans:
            layers += [torch.nn.Conv2d(c, co, 3, stride=2, padding=1), torch.nn.SiLU()]
            c = co
        if not chans:
            layers += [torch.nn.Conv2d(c, max_channels, 3, padding=1), torch.nn.SiLU()]
            c = max_channels
        layers.append(torch.nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, depth: torch.Tensor, latent_hw: tuple[int, int] | None = None) -> torch.Tensor:
        out = self.net(depth)
        if latent_hw is not None and tuple(out.shape[-2:]) != tuple(latent_hw):
            out = F.interpolate(out, size=tuple(latent_hw), mode="bilinear", align_corners=False)
        return out


def normalize_depth(depth: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-sample min-max to [0, 1]: monocular estimators give relative depth, so only the ordering and
    relative spacing are comparable between toyworld's exact depth and an estimator's output."""
    flat = depth.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return ((depth - lo) / (hi - lo).clamp_min(eps)).clamp(0, 1)


class TransformersDepthEstimator(torch.nn.Module):
    """A frozen transformers depth model (Depth Anything, as in MimicBrush's release) as a depth callable:
    images in [-1,1] (B,3,H,W) -> relative inverse depth (B,1,H,W) in [0,1], 1 = nearest — Depth Anything's
    polarity and toyworld's ``depth`` convention (``invert=True`` flips a model that predicts distance)."""

    def __init__(
        self,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        input_size: int = 518,
        invert: bool = False,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        meta: bool = False,
    ):
        super().__init__()
        from transformers import AutoConfig, AutoModelForDepthEstimation

        if pretrained and not meta:
            model = AutoModelForDepthEstimation.from_pretrained(pretrained)
        else:
            cfg = dict(config or {"model_type": "depth_anything"})
            conf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
            with torch.device("meta" if meta else "cpu"):
                model = AutoModelForDepthEstimation.from_config(conf)
        patch = int(getattr(getattr(model.config, "backbone_config", None), "patch_size", 14) or 14)
        self.input_size = max(patch, int(round(input_size / patch)) * patch)
        self.model = model.requires_grad_(False).eval()
        self.invert = invert
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        x = F.interpolate(
            x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False, antialias=True
        ).clamp(0, 1)
        x = ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        pred = self.model(pixel_values=x).predicted_depth.float()
        pred = pred[:, None] if pred.dim() == 3 else pred
        pred = F.interpolate(pred, size=images.shape[-2:], mode="bilinear", align_corners=False)
        d = normalize_depth(pred)
        return 1.0 - d if self.invert else d


# ------------------------------------------------------------------------------------------ the method
def _pad_square(x: torch.Tensor, mode: str = "replicate", value: float = 0.0) -> tuple[torch.Tensor, tuple]:
    """Pad (B,C,H,W) to a centred square; returns the padded tensor and (top, left, H, W) to undo it."""
    h, w = x.shape[-2:]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    pad = (left, s - w - left, top, s - h - top)
    if any(pad):
        x = F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad, value=value)
    return x, (top, left, h, w)


def _resize(x: torch.Tensor, size: int, kind: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if kind == "mask":
        return (
            F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False) >= 0.5
        ).float()
    if kind == "depth":
        return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(
        x.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True
    ).clamp(-1, 1)


class MimicBrush(LatentEditModule):
    name = "mimicbrush"
    train_keys = ("target", "source", "mask", "reference")
    sample_keys = ("source", "mask", "reference")
    data_hint = (
        "Use a data config that yields source/mask/reference pairs (+ depth), e.g. "
        "data=toyworld_mimicbrush or data=toyworld with data.task=reference_imitation."
    )
    frozen_modules = ("codec", "image_encoder", "depth_estimator")
    edit_native_size = True  # `sample` pads, resizes and crops back (LatentEditModule.edit_native_size)

    def build(
        self,
        reference_unet: Mapping[str, Any] | None = None,
        recipe: str = "paper",
        blend: float | None = None,
        reference_blocks: Iterable[str] = ("mid", "up"),
        image_tokens: str = "penultimate",
        depth_drop_prob: float = 0.5,
        depth_normalize: bool = True,
        depth_estimator: Mapping[str, Any] | Callable | None = None,
        unet_init: str = "inpainting",
    ) -> None:
        """`unet_init`: the imitative U-Net starts from SD-inpainting (the paper's); the reference U-Net from
        `reference_unet`, else the backbone's text-to-image U-Net."""
        bb = self.backbone_cfg
        if recipe not in RECIPES:
            raise ValueError(f"method.recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
        self.recipe = recipe
        chosen = RECIPES[recipe]
        blend = chosen["blend"] if blend is None else blend  # an explicit blend (0 = none) overrides the recipe's
        self.blend = None if blend is None else float(blend)
        self.reference_drop_fraction = chosen["reference_drop_fraction"]
        self.null_image = chosen["null_image"]
        self.image_tokens = image_tokens
        self.depth_drop_prob = float(depth_drop_prob)
        self.depth_normalize = bool(depth_normalize)
        self._shape_control: bool | None = None  # per-call override of sampling.shape_control
        self._warned_no_depth = False

        self.image_encoder = FrozenImageEncoder.from_backbone(bb, meta=self.meta)
        c = self.codec.latent_channels
        self.layout = imitative_layout(c)
        # imitative U-Net: (pretrained text-to-image or inpainting ->) the inpainting input, then the depth
        # channels zero-initialised (a random init too)
        self.unet = widen_conv_in(
            build_unet(bb["unet"], layout=inpaint_layout(c), meta=self.meta, init=unet_init), self.layout.in_channels
        )
        self.layout.check(self.unet, "mimicbrush imitative U-Net")
        cross_dim = int(self.unet.config.cross_attention_dim)
        self.reference_unet = build_unet(
            dict(reference_unet or bb["unet"]), layout=text_to_image_layout(c), cross_attention_dim=cross_dim,
            meta=self.meta
        )
        if int(self.reference_unet.config.cross_attention_dim) != cross_dim:
            raise ValueError(
                f"method.reference_unet has cross_attention_dim "
                f"{self.reference_unet.config.cross_attention_dim}, the imitative U-Net {cross_dim}: "
                f"both read the same image context"
            )
        if bb.get("gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()
            self.reference_unet.enable_gradient_checkpointing()
        self.proj = torch.nn.Linear(
            self.image_encoder.hidden_size, cross_dim, device="meta" if self.meta else None
        )
        with torch.device("meta" if self.meta else "cpu"):
            self.depth_guider = DepthGuider(self.codec.downsample, out_channels=self.layout.width("depth"))
        self.depth_estimator = self._build_estimator(depth_estimator)

        # reference injection: reference mid/up blocks write, the imitative ones with the same names read
        groups = tuple(reference_blocks)
        self.block_names = block_names(self.unet, groups)
        ref_names = block_names(self.reference_unet, groups)
        if ref_names != self.block_names:
            raise ValueError(
                f"method.reference_unet has transformer blocks {ref_names} in {groups} but the "
                f"imitative U-Net has {self.block_names}: both must be the same architecture family"
            )
        if not self.block_names:
            raise ValueError(
                f"the U-Net has no transformer blocks in groups {groups}: nothing to inject into"
            )
        self.bank = ReferenceBank()
        install_capture(self.reference_unet, self.bank, self.block_names)
        self._stock_processors = install_reference_kv(self.unet, self.bank, self.block_names, self.blend)
        self.reference_dead_parameters = reference_dead_parameters(
            self.reference_unet.config, self.block_names
        )

    def _build_estimator(self, spec):
        if spec is None or callable(spec):
            return spec
        spec = dict(spec)
        if "_target_" not in spec:
            raise ValueError(
                "method.depth_estimator must be null or a {_target_: ...} node naming a callable "
                "images[-1,1] (B,3,H,W) -> depth (B,1,H,W)"
            )
        kwargs = {}
        try:
            if "meta" in inspect.signature(get_class(spec["_target_"])).parameters:
                kwargs["meta"] = self.meta
        except (TypeError, ValueError):
            pass
        est = instantiate(spec, _convert_="all", **kwargs)
        if isinstance(est, torch.nn.Module):
            est.requires_grad_(False).eval()
        return est

    def remove_reference_processors(self) -> None:
        """Give the imitative U-Net back its stock attention processors (exactly the stock U-Net)."""
        restore_processors(self.unet, self._stock_processors)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Both U-Nets, the projection and the depth guider (the paper's list), less the reference U-Net's
        tail that no captured feature depends on (its output head and the last read block after its norm):
        they would never get a gradient, and DDP would stop on them as unused parameters."""
        ref = [
            p for n, p in self.reference_unet.named_parameters() if n not in self.reference_dead_parameters
        ]
        return [*self.unet.parameters(), *ref, *self.proj.parameters(), *self.depth_guider.parameters()]

    # ---------------------------------------------------------------------------- conditions
    def encode_reference(self, images: torch.Tensor, preprocessed: bool = False) -> torch.Tensor:
        """Reference images in [-1, 1] (or CLIP pixel values, ``preprocessed``) -> context tokens (B, T, dim)."""
        tokens = self.image_encoder(images, output=self.image_tokens, preprocessed=preprocessed)
        return self.proj(tokens.to(self.proj.weight.dtype))

    def null_context(self, n: int) -> torch.Tensor:
        """Unconditional context: the projection of CLIP of a black image (paper recipe), or of all-zero CLIP pixel
        values, i.e. after normalisation (release recipe: ``image_encoder(torch.zeros_like(clip_image))``)."""
        s = self.image_encoder.image_size
        zeros = torch.zeros(1, 3, s, s, device=self.proj.weight.device)
        if self.null_image == "zero_pixel_values":
            return self.encode_reference(zeros.to(self.image_encoder.model.dtype), preprocessed=True).expand(n, -1, -1)
        return self.encode_reference(zeros - 1.0).expand(n, -1, -1)  # black: -1 in [-1, 1]

    def reference_keep(self, n: int, context_dropped: torch.Tensor) -> torch.Tensor:
        """Training: which samples see the reference K/V. Paper: those whose context was kept. Release: all but
        the first ``int(fraction * n)`` of the batch, independently of the context."""
        if self.reference_drop_fraction is None:
            return ~context_dropped
        keep = torch.ones(n, dtype=torch.bool, device=context_dropped.device)
        keep[: int(n * self.reference_drop_fraction)] = False
        return keep

    def depth_input(self, batch: Mapping[str, Any], *, train: bool) -> torch.Tensor:
        """(B,1,H,W) depth of the unmasked source: the estimator's when one is configured, else the batch's;
        zeros (= no shape control, as in depth dropout) when shape control is off or no depth exists."""
        src = batch["source"]
        zeros = torch.zeros_like(src[:, :1])
        shape_control = True if train else self._shape_control_on()
        if not shape_control:
            return zeros
        if self.depth_estimator is not None:
            depth = self.depth_estimator(src)
        elif "depth" in batch:
            depth = batch["depth"]
        elif train:
            if not self._warned_no_depth:
                log.warning(
                    "mimicbrush: the batch has no 'depth' and method.depth_estimator is null: the depth "
                    "guider trains on all-zero depth only"
                )
                self._warned_no_depth = True
            return zeros
        else:
            raise ValueError("sampling.shape_control=true needs batch['depth'] or method.depth_estimator")
        depth = depth.to(src.device, torch.float32)
        if depth.shape[-2:] != src.shape[-2:]:
            depth = F.interpolate(depth, size=src.shape[-2:], mode="bilinear", align_corners=False)
        return normalize_depth(depth) if self.depth_normalize else depth

    def _shape_control_on(self) -> bool:
        if self._shape_control is not None:
            return self._shape_control
        return bool(self.sampling_cfg.get("shape_control", False))

    def conditions(self, batch, *, train, generator=None) -> tuple[Cond, Cond | None]:
        source, mask, reference = batch["source"], batch["mask"], batch["reference"]
        n = source.shape[0]
        keep_px = mask < 0.5
        masked = torch.where(keep_px, source, torch.full_like(source, -1.0))  # masked pixels black
        masked_latent = self.codec.encode(masked, generator=generator)
        hw = masked_latent.shape[-2:]
        concat = torch.cat([latent_mask(mask, hw), masked_latent], dim=1)
        ref_latent = self.codec.encode(reference, generator=generator)
        context = self.encode_reference(reference)
        depth = self.depth_input(batch, train=train)
        if train:
            depth = torch.where(
                self.drop_mask(n, self.depth_drop_prob)[:, None, None, None], torch.zeros_like(depth), depth
            )
        depth_feat = self.depth_guider(depth.to(self.proj.weight.dtype), hw)
        null = self.null_context(n)
        if train:
            drop = self.drop_mask(n)
            context = torch.where(drop[:, None, None], null, context)
            return {
                "concat": concat,
                "depth": depth_feat,
                "context": context,
                "ref_latent": ref_latent,
                "keep": self.reference_keep(n, drop),
            }, None
        ones = torch.ones(n, dtype=torch.bool, device=source.device)
        cond = {
            "concat": concat,
            "depth": depth_feat,
            "context": context,
            "ref_latent": ref_latent,
            "keep": ones,
        }
        uncond = {
            "concat": concat,
            "depth": depth_feat,
            "context": null,
            "ref_latent": ref_latent,
            "keep": ~ones,
        }
        return cond, uncond

    # ---------------------------------------------------------------------------- denoising
    def run_reference(
        self, ref_latent: torch.Tensor, t: torch.Tensor, context: torch.Tensor, keep: torch.Tensor | None
    ) -> None:
        """Fill the bank: the reference U-Net on the clean reference latents of the kept samples, at the
        imitative U-Net's timestep, with the same context. Its output is not used."""
        self.bank.clear()
        keep = (
            torch.ones(ref_latent.shape[0], dtype=torch.bool, device=ref_latent.device)
            if keep is None
            else keep.to(ref_latent.device).bool()
        )
        self.bank.keep = keep
        run = keep
        if not bool(keep.any()):
            if not torch.is_grad_enabled():
                return
            run = ~keep  # training step with every reference dropped: see `denoise`
        t_ref = t[run] if t.dim() > 0 and t.numel() > 1 else t
        self.reference_unet(ref_latent[run], t_ref, encoder_hidden_states=context[run])

    def denoise(self, z, t, cond):
        # the bank is refilled here and deliberately not cleared afterwards: with gradient checkpointing the
        # imitative blocks are recomputed in backward and must read the same reference features again
        self.run_reference(cond["ref_latent"], t, cond["context"], cond.get("keep"))
        x = torch.cat([z, cond["concat"], cond["depth"]], dim=1)
        out = self.unet(x, t, encoder_hidden_states=cond["context"]).sample
        if not torch.is_grad_enabled():
            self.bank.clear()
        elif not bool(self.bank.keep.any()):
            # all references dropped in a training step: keep the reference U-Net in the graph with a zero
            # contribution, so that DDP still sees a gradient (of zero) for each of its trainable parameters
            out = out + 0.0 * sum(f.float().mean() for f in self.bank.features.values())
        return out

    # ---------------------------------------------------------------------------- inference
    @torch.no_grad()
    def sample(
        self,
        batch: Mapping[str, Any],
        *,
        paste_back: bool | None = None,
        shape_control: bool | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The paper's inference: pad the source (and reference) to a square, resize to the backbone
        resolution, edit, resize back, crop the padding off and blend into the original with a feathered
        mask (``paste_back``). Inputs already square at the resolution go through unchanged.
        ``output_type="latent"`` returns the latents of the padded, resized square."""
        paste_back = bool(self.sampling_cfg["paste_back"] if paste_back is None else paste_back)
        size = int(self.backbone_cfg["resolution"])
        fitted = dict(batch)
        src, undo = _pad_square(batch["source"])
        fitted["source"] = _resize(src, size, "image")
        if "mask" in batch:
            fitted["mask"] = _resize(_pad_square(batch["mask"], "constant")[0], size, "mask")
        if "depth" in batch:
            fitted["depth"] = _resize(_pad_square(batch["depth"])[0], size, "depth")
        if "target" in batch and batch["target"].shape == batch["source"].shape:
            fitted["target"] = _resize(_pad_square(batch["target"])[0], size, "image")
        if "reference" in batch:
            fitted["reference"] = _resize(_pad_square(batch["reference"])[0], size, "image")
        self._shape_control = shape_control
        try:
            out = super().sample(fitted, paste_back=False, **kwargs)
        finally:
            self._shape_control = None
        if kwargs.get("output_type") == "latent":
            return out
        top, left, h, w = undo
        s = max(h, w)
        if tuple(out.shape[-2:]) != (s, s):
            out = F.interpolate(out, size=(s, s), mode="bicubic", align_corners=False)
        out = out[..., top : top + h, left : left + w]
        if paste_back:
            out = paste_back_feathered(out, batch["source"], batch["mask"], self.sampling_cfg["feather_px"])
        return out.clamp(-1, 1)
