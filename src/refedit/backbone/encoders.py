"""Frozen CLIP encoders (text and image) behind one small interface, loaded like any SD component.

No gradients; a method keeps them in eval mode by naming them in `frozen_modules` (`LatentEditModule.train`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from refedit.backbone.loading import load_component

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_image_processor_class() -> type:
    """transformers' CLIP image processor, PIL backend where the library has one (>= 5): without torchvision,
    which refedit does not depend on, `CLIPImageProcessor` resolves to it anyway but warns on every import.
    Both save the same `preprocessor_config.json` (image_processor_type CLIPImageProcessor)."""
    import transformers

    try:
        return transformers.CLIPImageProcessorPil
    except AttributeError:  # transformers 4
        return transformers.CLIPImageProcessor


class FrozenTextEncoder(torch.nn.Module):
    """Captions -> CLIP last hidden states (B, 77, D), tokenised exactly as diffusers' SD pipelines do."""

    def __init__(self, tokenizer: CLIPTokenizer, model: CLIPTextModel):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.requires_grad_(False).eval()

    @classmethod
    def from_backbone(cls, backbone: Mapping[str, Any], meta: bool = False) -> FrozenTextEncoder:
        """`meta=True`: architecture only (no tokenizer files needed), for full-size checks without weights."""
        tok = None if meta else load_component(CLIPTokenizer, backbone["tokenizer"], name="tokenizer")
        model = load_component(CLIPTextModel, backbone["text_encoder"], name="text_encoder", meta=meta)
        return cls(tok, model)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        device = next(self.model.parameters()).device
        return self.model(ids.to(device))[0]


class FrozenImageEncoder(torch.nn.Module):
    """Images in [-1,1] -> CLIP vision features: pooled CLS, all tokens, penultimate tokens or projected embeds.

    Preprocessing is done on tensors (resize + CLIP normalisation) so training never leaves the device.
    """

    def __init__(self, model: CLIPVisionModelWithProjection, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_backbone(cls, backbone: Mapping[str, Any], meta: bool = False) -> FrozenImageEncoder:
        model = load_component(CLIPVisionModelWithProjection, backbone["image_encoder"], name="image_encoder",
                               meta=meta)
        return cls(model, *(() if meta else _processor_stats(backbone.get("feature_extractor"))))

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.model.config.patch_size) ** 2 + 1

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.model.dtype)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, output: str = "pooled", preprocessed: bool = False) -> torch.Tensor:
        px = images if preprocessed else self.preprocess(images)
        out = self.model(pixel_values=px, output_hidden_states=output == "penultimate")
        if output == "pooled":
            return self.model.vision_model.post_layernorm(out.last_hidden_state[:, 0])
        if output == "tokens":
            return out.last_hidden_state
        if output == "penultimate":
            return out.hidden_states[-2]
        if output == "embeds":
            return out.image_embeds
        raise ValueError(f"unknown image feature output '{output}' (pooled, tokens, penultimate, embeds)")


def clip_image_processor(spec: Mapping[str, Any] | None, image_size: int = 224, meta: bool = False):
    """The backbone's saved feature_extractor/ (CLIPImageProcessor: a pipeline's image preprocessing) when `spec`
    points at one, else the OpenAI CLIP preprocessing at `image_size`."""
    import os

    spec = dict(spec or {})
    if spec.get("pretrained") and not meta:
        root = os.path.expanduser(str(spec["pretrained"]))
        if not os.path.isdir(root) or os.path.isdir(os.path.join(root, spec.get("subfolder") or "")):
            return load_component(clip_image_processor_class(), spec, name="feature_extractor")
    return clip_image_processor_class()(size={"shortest_edge": image_size},
                                        crop_size={"height": image_size, "width": image_size},
                                        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))


def _processor_stats(spec: Mapping[str, Any] | None):
    """CLIP normalisation from a saved feature_extractor/, else OpenAI's constants."""
    proc = clip_image_processor(spec)
    return tuple(proc.image_mean), tuple(proc.image_std)
