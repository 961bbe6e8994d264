"""Paint-by-Example (Yang et al., CVPR 2023): exemplar-based inpainting (arXiv 2211.13227).

UNet input = cat([noisy latent, masked-image latent, mask 1]) in PbE's (and diffusers') order (`pbe_layout`:
4 + 4 + 1 with SD's VAE), with PbE's mask convention inside this module: 1 = keep. Project batches use 1 = edit; `pbe_keep_mask` converts.

The exemplar goes through a *content bottleneck*: frozen CLIP vision tower -> pooled (post-layernorm) CLS ->
mapper of pre-LN transformer blocks -> LayerNorm -> projection to the UNet's context width = one token. The
encoder IS diffusers' `PaintByExampleImageEncoder`, so `export_diffusers` writes the released checkpoint's layout
and the released checkpoint can be loaded back (`init_from`). A learnable unconditional vector replaces the token
for condition dropout and classifier-free guidance.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from refedit.backbone.encoders import clip_image_processor, clip_image_processor_class
from refedit.backbone.latents import InputLayout, inpaint_layout, latent_mask
from refedit.backbone.loading import ComponentLoadError, load_component
from refedit.backbone.unet import build_unet, init_spec
from refedit.data.reference_augment import ReferenceAugment
from refedit.methods.base import Cond, LatentEditModule

try:  # diffusers >= 0.33 moved the (deprecated) pipeline under pipelines.deprecated
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import PaintByExampleImageEncoder
except ImportError:  # pragma: no cover - older diffusers
    from diffusers.pipelines.paint_by_example.image_encoder import PaintByExampleImageEncoder

log = logging.getLogger(__name__)

DROP_MODES = ("per_sample", "per_batch")


def pbe_keep_mask(mask: torch.Tensor) -> torch.Tensor:
    """Project mask (1 = edit) -> PbE's keep mask (1 = keep), binarised as diffusers' PbE pipeline does
    (`1 - m`, then >= 0.5 -> 1)."""
    return ((1 - mask.float()) >= 0.5).float()


def pbe_layout(latent_channels: int) -> InputLayout:
    """PbE's U-Net input: noisy latent, masked-image latent, keep mask (SD: 4 + 4 + 1)."""
    c = int(latent_channels)
    return InputLayout((("latent", c), ("masked_image", c), ("keep_mask", 1)), "Paint-by-Example")


def derived_mapper_blocks(num_clip_layers: int) -> int:
    """What diffusers' `PaintByExampleMapper` derives from the CLIP depth: (layers + 1) // 5 (5 for ViT-L/14)."""
    return (int(num_clip_layers) + 1) // 5


def _tower(model: torch.nn.Module) -> torch.nn.Module:
    """The vision transformer inside a CLIP vision model (transformers 4 nests it in `.vision_model`; 5 does so
    only for the projection variant)."""
    return getattr(model, "vision_model", model)


def _identity_layers(vision_model: torch.nn.Module, start: int) -> None:
    """Zero every weight of the encoder layers from `start` on: a pre-LN residual layer with zero output
    projections adds exact zeros, so the padded tower computes bit for bit what the original one does."""
    with torch.no_grad():
        for layer in vision_model.encoder.layers[start:]:
            for p in layer.parameters():
                p.zero_()


def build_exemplar_encoder(clip: CLIPVisionModelWithProjection, proj_size: int,
                           mapper_blocks: int | None) -> PaintByExampleImageEncoder:
    """diffusers' PbE encoder around the backbone's CLIP vision tower.

    diffusers derives the mapper depth from the CLIP config ((layers + 1) // 5). For ViT-L/14 that is the
    paper's 5. A shallower CLIP (the tiny backbone's 2 layers would give 0 blocks) is padded with identity
    (zero-weight) encoder layers up to the smallest depth that yields `mapper_blocks`, which keeps its features
    unchanged and the exported encoder loadable by diffusers as is. `mapper_blocks=None` follows diffusers.
    """
    vcfg = copy.deepcopy(clip.config)
    if not isinstance(vcfg, CLIPVisionConfig):
        raise TypeError(f"backbone.image_encoder must be a CLIP vision model, got config {type(vcfg).__name__}")
    n = int(vcfg.num_hidden_layers)
    layers = n
    if mapper_blocks is not None:
        k = int(mapper_blocks)
        lo, hi = 5 * k - 1, 5 * k + 3  # depths L with (L + 1) // 5 == k
        if k < 1 or n > hi:
            raise ValueError(f"method.mapper_blocks={k}: diffusers' PaintByExampleImageEncoder derives "
                             f"{derived_mapper_blocks(n)} mapper blocks from this {n}-layer CLIP and the tower can "
                             f"only be padded, not cut; set method.mapper_blocks=null to follow diffusers")
        layers = max(n, lo)
    vcfg.num_hidden_layers = layers
    vcfg.projection_dim = int(proj_size)  # PbE's encoder reads proj_size back from here on from_pretrained
    meta = next(clip.parameters()).device.type == "meta"
    if meta:
        with torch.device("meta"):
            enc = PaintByExampleImageEncoder(vcfg, proj_size=int(proj_size))
        return enc
    enc = PaintByExampleImageEncoder(vcfg, proj_size=int(proj_size))
    res = _tower(enc.model).load_state_dict(_tower(clip).state_dict(), strict=False)
    extra = [k for k in res.missing_keys if not any(k.startswith(f"encoder.layers.{i}.") for i in range(n, layers))]
    if extra or res.unexpected_keys:
        raise RuntimeError(f"CLIP vision weights do not fit the PbE encoder: missing {extra[:5]}, "
                           f"unexpected {res.unexpected_keys[:5]}")
    _identity_layers(_tower(enc.model), n)
    return enc


def sd_inpaint_conv_in_to_pbe(unet: UNet2DConditionModel) -> None:
    """Reuse SD-inpainting weights: their conv_in reads [z, mask(1 = edit), masked latent] (`inpaint_layout`);
    PbE reads [z, masked latent, keep = 1 - mask] (`pbe_layout`). Channels are permuted and the mask weights
    negated, their sum moving into the bias (exact away from the zero-padded latent border; fine-tuning absorbs
    the rest)."""
    c = int(unet.config.out_channels)
    src, dst = inpaint_layout(c), pbe_layout(c)
    src.check(unet, "sd_inpaint_conv_in_to_pbe")
    conv = unet.conv_in
    with torch.no_grad():
        w = conv.weight.clone()
        conv.weight[:, dst.slice("masked_image")] = w[:, src.slice("masked_image")]
        conv.weight[:, dst.slice("keep_mask")] = -w[:, src.slice("mask")]
        conv.bias += w[:, src.slice("mask")].sum(dim=(1, 2, 3))


def clip_tensor_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[-1,1] images -> CLIP pixel values on the device (bicubic, antialiased resize + normalisation)."""
    x = (images.float() + 1) / 2
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return (x - mean) / std


class PaintByExample(LatentEditModule):
    name = "paint_by_example"
    train_keys = ("target", "source", "mask", "reference")
    sample_keys = ("source", "mask", "reference")
    data_hint = ("Use a data config that yields references and masks, e.g. data=toyworld "
                 "data.task=exemplar_inpaint_self (self-reference pairs) or exemplar_inpaint.")
    frozen_modules = ("codec", "image_encoder.model")

    def __init__(self, backbone: Mapping[str, Any], *, cond_drop_prob: float = 0.2, **kwargs: Any):
        """PbE's condition dropout rate (0.2) is the default here too, not only in its config."""
        super().__init__(backbone, cond_drop_prob=cond_drop_prob, **kwargs)

    def build(self, mapper_blocks: int | None = 5, cond_drop_mode: str = "per_sample",
              reference_augment: bool = False, init_from: str | None = None,
              unet_init: str = "text_to_image") -> None:
        """`unet_init`: the paper fine-tunes SD-1.4 text-to-image with conv_in widened to `pbe_layout`;
        `inpainting` starts from SD-inpainting instead (its mask channel moved to PbE's place)."""
        if cond_drop_mode not in DROP_MODES:
            raise ValueError(f"method.cond_drop_mode must be one of {DROP_MODES}, got {cond_drop_mode!r}")
        self.cond_drop_mode = cond_drop_mode
        bb = self.backbone_cfg
        self.layout = pbe_layout(self.codec.latent_channels)
        if init_from:
            self.unet, self.image_encoder = self._load_pbe_dir(init_from)
        else:
            self.unet = self._build_unet(init_spec(bb["unet"], unet_init))
            clip = load_component(CLIPVisionModelWithProjection, bb["image_encoder"], name="image_encoder",
                                  meta=self.meta)
            self.image_encoder = build_exemplar_encoder(clip, int(self.unet.config.cross_attention_dim),
                                                        mapper_blocks)
            del clip
        self.image_encoder.model.requires_grad_(False).eval()
        if bb.get("gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()
        size = int(self.image_encoder.config.image_size)
        fe_spec = bb.get("feature_extractor")
        if init_from and (Path(os.path.expanduser(str(init_from))) / "feature_extractor").is_dir():
            fe_spec = {"pretrained": os.path.expanduser(str(init_from)), "subfolder": "feature_extractor"}
        self.feature_extractor = clip_image_processor(fe_spec, size, self.meta)
        fe = self.feature_extractor
        self.register_buffer("clip_mean", torch.tensor(fe.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(fe.image_std).view(1, 3, 1, 1), persistent=False)
        self.reference_aug = ReferenceAugment() if reference_augment else None  # the data path's, same defaults

    def _build_unet(self, spec: Mapping[str, Any]) -> UNet2DConditionModel:
        inpaint_weights = False
        if spec.get("pretrained") and not self.meta:
            cfg = UNet2DConditionModel.load_config(os.path.expanduser(str(spec["pretrained"])),
                                                   subfolder=spec.get("subfolder"))
            inpaint_weights = int(cfg.get("in_channels", 0)) == inpaint_layout(self.codec.latent_channels).in_channels
        unet = build_unet(spec, layout=self.layout, meta=self.meta)
        if inpaint_weights:
            sd_inpaint_conv_in_to_pbe(unet)
        return unet

    def _load_pbe_dir(self, path: str | os.PathLike) -> tuple[UNet2DConditionModel, PaintByExampleImageEncoder]:
        """unet/ and image_encoder/ of a Paint-by-Example directory (the released checkpoint's layout)."""
        root = Path(os.path.expanduser(str(path)))
        for sub in ("unet", "image_encoder"):
            if not (root / sub).is_dir():
                raise ComponentLoadError(f"method.init_from={root}: no '{sub}/' folder (expected the layout of the "
                                         f"released Paint-by-Example checkpoint or of `refedit.export`)")
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
        enc = PaintByExampleImageEncoder.from_pretrained(root, subfolder="image_encoder")
        self.layout.check(unet, f"method.init_from={root}")
        if enc.proj_out.out_features != unet.config.cross_attention_dim:
            raise ValueError(f"method.init_from={root}: image_encoder projects to {enc.proj_out.out_features}, "
                             f"unet context width is {unet.config.cross_attention_dim}")
        return unet, enc

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        enc = self.image_encoder
        return [*self.unet.parameters(), *enc.mapper.parameters(), *enc.final_layer_norm.parameters(),
                *enc.proj_out.parameters(), enc.uncond_vector]

    # ------------------------------------------------------------------ conditions
    def reference_pixels(self, batch: Mapping[str, Any], train: bool) -> torch.Tensor:
        """CLIP pixel values of the exemplar: the pipeline's own (from `prepare_edit_batch`) when present, else
        tensor preprocessing (+ PbE's augmentation in training when `reference_augment`, the same
        `ReferenceAugment` the self-reference data uses, on parameters drawn from torch's global generator)."""
        if "reference_pixels" in batch:
            return batch["reference_pixels"].to(self.device, self.image_encoder.dtype)
        size = int(self.image_encoder.config.image_size)
        ref = batch["reference"]
        if train and self.reference_aug is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            ref = self.reference_aug.augment((ref.float() + 1) / 2, rng)[0] * 2 - 1
        px = clip_tensor_preprocess(ref, size, self.clip_mean, self.clip_std)
        return px.to(self.image_encoder.dtype)

    def exemplar_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B,1,context) token: PaintByExampleImageEncoder.forward with the frozen CLIP run without autograd."""
        enc = self.image_encoder
        with torch.no_grad():
            pooled = enc.model(pixel_values=pixel_values).pooler_output
        h = enc.mapper(pooled[:, None])
        return enc.proj_out(enc.final_layer_norm(h))

    def uncond_tokens(self, n: int) -> torch.Tensor:
        return self.image_encoder.uncond_vector.expand(n, -1, -1)

    def drop(self, n: int) -> torch.Tensor:
        """True = replace the exemplar token by the unconditional vector. per_sample: one Bernoulli(p) per sample;
        per_batch: one draw for the whole batch (the authors' code)."""
        if self.cond_drop_mode == "per_batch":
            return self.drop_mask(1).expand(n)
        return self.drop_mask(n)

    def inpaint_inputs(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """cat([masked-image latent, keep mask]) at latent size, as the PbE pipeline builds them: masked image =
        source * keep (hole = 0), posterior sample x scale; keep mask resized with nearest."""
        source = batch["source"]
        keep = pbe_keep_mask(batch["mask"]).to(source.dtype)
        masked_latent = self.codec.encode(source * keep, generator=generator)
        return torch.cat([masked_latent, latent_mask(keep, masked_latent.shape[-2:])], dim=1)

    def conditions(self, batch, *, train, generator=None) -> tuple[Cond, Cond | None]:
        concat = self.inpaint_inputs(batch, generator)
        tokens = self.exemplar_tokens(self.reference_pixels(batch, train))
        n = tokens.shape[0]
        if train:
            d = self.drop(n)
            tokens = torch.where(d[:, None, None], self.uncond_tokens(n).to(tokens.dtype), tokens)
            return {"concat": concat, "context": tokens}, None
        return ({"concat": concat, "context": tokens},
                {"concat": concat, "context": self.uncond_tokens(n).to(tokens.dtype)})

    def denoise(self, z, t, cond):
        return self.unet(torch.cat([z, cond["concat"]], dim=1), t, encoder_hidden_states=cond["context"]).sample

    # ------------------------------------------------------------------ edit CLI and export
    def prepare_edit_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Exemplar through the saved CLIPImageProcessor exactly as PaintByExamplePipeline does: from the original
        file when `refedit.edit` recorded it in meta['files'], else from the (exactly re-quantised) tensor."""
        from PIL import Image

        files = [((m or {}).get("files") or {}).get("reference") for m in batch.get("meta") or []]
        images = []
        for i, ref in enumerate(batch["reference"]):
            if i < len(files) and files[i]:
                with Image.open(files[i]) as im:
                    images.append(im.convert("RGB"))
            else:
                arr = ((ref.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                images.append(Image.fromarray(arr))
        px = self.feature_extractor(images=images, return_tensors="pt").pixel_values
        return {**batch, "reference_pixels": px}

    def export_diffusers(self, out_dir) -> None:
        """Write the released Paint-by-Example layout: model_index.json, unet/, vae/, image_encoder/ (CLIP, mapper,
        final LayerNorm, projection, unconditional vector), scheduler/ (DDIM, the training schedule),
        feature_extractor/ (the backbone's CLIPImageProcessor)."""
        from diffusers import PaintByExamplePipeline

        pipe = PaintByExamplePipeline(vae=self.codec.vae, image_encoder=self.image_encoder, unet=self.unet,
                                      scheduler=self.schedule.ddim(), safety_checker=None,
                                      feature_extractor=self.feature_extractor, requires_safety_checker=False)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        # name the classes as the released checkpoint does (diffusers 0.42 writes its deprecated module path and
        # transformers 5 its PIL-backend processor class, neither of which other versions resolve)
        index_path = Path(out_dir) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["image_encoder"] = ["paint_by_example", "PaintByExampleImageEncoder"]
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def load_pbe_pipeline(path: str | os.PathLike, **kwargs: Any):
    """PaintByExamplePipeline from a PbE-layout directory, component by component: diffusers 0.42's
    `PaintByExamplePipeline.from_pretrained` cannot resolve the deprecated encoder class."""
    from diffusers import AutoencoderKL, DDIMScheduler, PaintByExamplePipeline

    root = Path(path)
    return PaintByExamplePipeline(
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **kwargs),
        image_encoder=PaintByExampleImageEncoder.from_pretrained(root, subfolder="image_encoder", **kwargs),
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kwargs),
        scheduler=DDIMScheduler.from_pretrained(root, subfolder="scheduler"),
        safety_checker=None, requires_safety_checker=False,
        feature_extractor=clip_image_processor_class().from_pretrained(root, subfolder="feature_extractor"))


__all__: Sequence[str] = ("PaintByExample", "build_exemplar_encoder", "load_pbe_pipeline", "pbe_keep_mask", "pbe_layout",
                          "derived_mapper_blocks")
