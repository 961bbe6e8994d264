"""Stable-Diffusion inpainting baseline, with an SDEdit mode.

``mode: inpaint``: UNet input = cat([noisy latent, mask 1, masked-image latent]) in diffusers' order
(`refedit.backbone.latents.inpaint_layout`: 4 + 1 + 4 with SD's VAE); mask 1 = edit; the masked image is the source with the hole set to 0 (mid grey). Text conditioning with caption dropout
for CFG. Exports a StableDiffusionInpaintPipeline.

``mode: sdedit`` (Meng et al.; the Magic Fixup paper's baseline at strength 0.4 with the caption): a
*text-to-image* U-Net (``backbone.unet`` as it is, the latent's channels in, no conv_in widening) fine-tuned as
text-to-image (noisy latent + caption); sampling encodes the coarse edit (else the source), noises it to
``sampling.strength`` and denoises with the caption. Exports a StableDiffusionImg2ImgPipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from refedit.backbone.encoders import FrozenTextEncoder
from refedit.backbone.latents import inpaint_layout, latent_mask, text_to_image_layout
from refedit.backbone.unet import build_unet
from refedit.methods.base import Cond, LatentEditModule

MODES = ("inpaint", "sdedit")
#: sampling.strength when the config leaves it null: inpainting runs the whole schedule; SDEdit starts at the
#: Magic Fixup paper's baseline strength
DEFAULT_STRENGTH = {"inpaint": 1.0, "sdedit": 0.4}


class SDInpaint(LatentEditModule):
    name = "sd_inpaint"
    data_hint = "Use a data config that yields captions and masks, e.g. data=toyworld data.task=text_inpaint."
    frozen_modules = ("codec", "text_encoder")

    def build(self, mode: str = "inpaint", full_mask_prob: float = 0.1, unet_init: str | None = None) -> None:
        """`unet_init` (default by mode): inpainting mode fine-tunes SD-inpainting, SDEdit runs SD itself."""
        if mode not in MODES:
            raise ValueError(f"method.mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        init = unet_init or ("text_to_image" if mode == "sdedit" else "inpainting")
        self.full_mask_prob = float(full_mask_prob)
        if (self.hparams.get("sampling") or {}).get("strength") is None:  # not given: the mode's own
            self.sampling_cfg["strength"] = DEFAULT_STRENGTH[mode]
        self.text_encoder = FrozenTextEncoder.from_backbone(self.backbone_cfg, meta=self.meta)
        c = self.codec.latent_channels
        # sdedit: the text-to-image U-Net as it is (a wider pretrained one is refused, not cut)
        self.layout = text_to_image_layout(c) if mode == "sdedit" else inpaint_layout(c)
        self.unet = build_unet(self.backbone_cfg["unet"], layout=self.layout, meta=self.meta, init=init)
        if self.backbone_cfg.get("gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()

    @property
    def train_keys(self) -> tuple[str, ...]:  # SDEdit mode fine-tunes text-to-image: image and caption only
        return ("target", "caption") if self.mode == "sdedit" else ("target", "source", "mask", "caption")

    @property
    def sample_keys(self) -> tuple[str, ...]:  # SDEdit edits the whole image: no mask needed
        return ("source", "caption") if self.mode == "sdedit" else ("source", "mask", "caption")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.unet.parameters())

    def _inpaint_inputs(self, batch: Mapping[str, Any], generator: torch.Generator | None,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
        source = batch["source"]
        mask = batch["mask"] if mask is None else mask
        keep = (mask < 0.5).to(source.dtype)
        masked_latent = self.codec.encode(source * keep, generator=generator)
        return torch.cat([latent_mask(mask, masked_latent.shape[-2:]), masked_latent], dim=1)

    def conditions(self, batch, *, train, generator=None) -> tuple[Cond, Cond | None]:
        captions = list(batch["caption"])
        cond: Cond = {}
        if self.mode == "inpaint":
            mask = batch["mask"]
            if train and self.full_mask_prob > 0:  # whole-image masks, as SD-inpainting's training has
                full = torch.rand(mask.shape[0], device=mask.device) < self.full_mask_prob
                mask = torch.where(full[:, None, None, None], torch.ones_like(mask), mask)
            cond["concat"] = self._inpaint_inputs(batch, generator, mask)
        if train:
            drop = self.drop_mask(len(captions)).tolist()
            captions = ["" if d else c for c, d in zip(captions, drop)]
            return {**cond, "context": self.text_encoder(captions)}, None
        uncond = {**cond, "context": self.text_encoder([""] * len(captions))}
        return {**cond, "context": self.text_encoder(captions)}, uncond

    def init_latents(self, batch, generator):
        """SDEdit starts from the coarse edit when there is one, else from the source."""
        return self.codec.encode(batch.get("coarse", batch["source"]), generator=generator)

    def denoise(self, z, t, cond):
        x = torch.cat([z, cond["concat"]], dim=1) if "concat" in cond else z
        return self.unet(x, t, encoder_hidden_states=cond["context"]).sample

    def export_diffusers(self, out_dir) -> None:
        """Write a StableDiffusionInpaintPipeline (inpaint mode) or StableDiffusionImg2ImgPipeline (sdedit mode)
        directory, with a DDIM scheduler of the training schedule."""
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

        cls = StableDiffusionImg2ImgPipeline if self.mode == "sdedit" else StableDiffusionInpaintPipeline
        pipe = cls(vae=self.codec.vae, text_encoder=self.text_encoder.model, tokenizer=self.text_encoder.tokenizer,
                   unet=self.unet, scheduler=self.schedule.ddim(), safety_checker=None, feature_extractor=None,
                   requires_safety_checker=False)
        pipe.save_pretrained(out_dir, safe_serialization=True)
