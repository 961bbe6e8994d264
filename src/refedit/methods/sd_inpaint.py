"""Stable-Diffusion inpainting baseline, with an SDEdit mode (spec: shared/specs/sd_inpaint.md).

UNet input = cat([noisy latent 4, mask 1, masked-image latent 4]) in diffusers' order; mask 1 = edit; the
masked image is the source with the hole set to 0 (mid grey). Text conditioning with caption dropout for CFG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from refedit.backbone.encoders import FrozenTextEncoder
from refedit.backbone.unet import build_unet
from refedit.methods.base import Cond, LatentEditModule


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel mask -> latent-size mask, resized as diffusers' inpainting pipeline does (nearest)."""
    return F.interpolate(mask.float(), size=latent_hw)


class SDInpaint(LatentEditModule):
    name = "sd_inpaint"
    train_keys = ("target", "source", "mask", "caption")
    data_hint = "Use a data config that yields captions and masks, e.g. data=toyworld data.task=text_inpaint."
    frozen_modules = ("codec", "text_encoder")

    def build(self, mode: str = "inpaint", full_mask_prob: float = 0.1) -> None:
        if mode not in ("inpaint", "sdedit"):
            raise ValueError(f"method.mode must be 'inpaint' or 'sdedit', got {mode!r}")
        self.mode = mode
        self.full_mask_prob = float(full_mask_prob)
        self.text_encoder = FrozenTextEncoder.from_backbone(self.backbone_cfg, meta=self.meta)
        self.unet = build_unet(self.backbone_cfg["unet"], in_channels=9, meta=self.meta)
        if self.backbone_cfg.get("gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()

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
        mask = batch["mask"] if "mask" in batch else torch.ones_like(batch["source"][:, :1])
        if train and self.full_mask_prob > 0:  # whole-image masks keep SDEdit-mode inputs in distribution
            full = torch.rand(mask.shape[0], device=mask.device) < self.full_mask_prob
            mask = torch.where(full[:, None, None, None], torch.ones_like(mask), mask)
        elif not train and self.mode == "sdedit":
            mask = torch.ones_like(mask)
        concat = self._inpaint_inputs(batch, generator, mask)
        if train:
            drop = self.drop_mask(len(captions)).tolist()
            captions = ["" if d else c for c, d in zip(captions, drop)]
            return {"concat": concat, "context": self.text_encoder(captions)}, None
        cond = {"concat": concat, "context": self.text_encoder(captions)}
        uncond = {"concat": concat, "context": self.text_encoder([""] * len(captions))}
        return cond, uncond

    def init_latents(self, batch, generator):
        """SDEdit starts from the coarse edit when there is one, else from the source."""
        return self.codec.encode(batch.get("coarse", batch["source"]), generator=generator)

    def denoise(self, z, t, cond):
        return self.unet(torch.cat([z, cond["concat"]], dim=1), t, encoder_hidden_states=cond["context"]).sample

    def export_diffusers(self, out_dir) -> None:
        """Write a StableDiffusionInpaintPipeline directory (DDIM scheduler with the training schedule)."""
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline(vae=self.codec.vae, text_encoder=self.text_encoder.model,
                                              tokenizer=self.text_encoder.tokenizer, unet=self.unet,
                                              scheduler=self.schedule.ddim(), safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(out_dir, safe_serialization=True)
