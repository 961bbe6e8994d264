"""MagDiff's building blocks: U-Net inflation, Adaptive Prompts Alignment (APA) and High-Fidelity Alignment (HFA).

Kept apart from `magdiff.py` so each part can be tested on its own.

* `inflate_unet` turns the shared 2-D SD-1.x U-Net into diffusers' `UNetMotionModel` (AnimateDiff motion modules:
  temporal self-attention with sinusoidal frame positions after every resnet / spatial transformer). diffusers
  builds the motion modules' `proj_out` as a plain `nn.Linear` (NOT zero-initialised, unlike AnimateDiff's own
  `zero_module`), so a fresh adapter is zeroed here: the inflated net then computes exactly the image net frame by
  frame. A pretrained AnimateDiff `MotionAdapter` is loaded as is.
* `APAProcessor`: the cross-attention processor `to_out(a_t * Attn(Q, K_text, V_text) + a_i * Attn(Q, K_img, V_img))`.
* `HFAPyramid`: subject VAE latents at several resolutions -> the noisy latent's size, concatenated on channels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from refedit.backbone.attention import install_processors
from refedit.backbone.unet import transformer_blocks

#: module names (relative to the U-Net) of the spatial transformers (LDM "SpatialTransformer" = diffusers
#: Transformer2DModel) and of the temporal layers (motion modules)
SPATIAL_RE = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+")
TEMPORAL_RE = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+")


# --------------------------------------------------------------------------------------------- inflation
def fresh_motion_adapter(unet: UNet2DConditionModel, num_attention_heads: int = 8, max_frames: int = 32,
                         meta: bool = False) -> MotionAdapter:
    """An AnimateDiff-layout adapter matching `unet`'s blocks (the layout a pretrained adapter is saved in)."""
    cfg = unet.config
    with torch.device("meta") if meta else nullcontext():
        return MotionAdapter(block_out_channels=tuple(cfg.block_out_channels),
                             motion_layers_per_block=cfg.layers_per_block,
                             motion_num_attention_heads=num_attention_heads,
                             motion_norm_num_groups=cfg.norm_num_groups, motion_max_seq_length=max_frames,
                             use_motion_mid_block=True)


def zero_motion_outputs(unet: UNetMotionModel) -> int:
    """Zero every motion module's output projection, so each temporal block is the identity (its residual)."""
    n = 0
    for name, m in unet.named_modules():
        if TEMPORAL_RE.fullmatch(name):
            nn.init.zeros_(m.proj_out.weight)
            nn.init.zeros_(m.proj_out.bias)
            n += 1
    return n


def inflate_unet(unet: UNet2DConditionModel, adapter: MotionAdapter | str | None = None, *,
                 num_attention_heads: int = 8, max_frames: int = 32, meta: bool = False) -> UNetMotionModel:
    """2-D U-Net -> `UNetMotionModel` sharing its weights. `adapter`: None (fresh, zero-initialised outputs),
    a `MotionAdapter` or a path / hub id of one (AnimateDiff weights, loaded unchanged)."""
    fresh = adapter is None
    if isinstance(adapter, str):
        adapter = MotionAdapter.from_pretrained(adapter)
    if adapter is None:
        adapter = fresh_motion_adapter(unet, num_attention_heads, max_frames, meta=meta)
    if meta:
        with torch.device("meta"):
            return UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    model = UNetMotionModel.from_unet2d(unet, adapter)
    if fresh:
        zero_motion_outputs(model)
    return model


def spatial_block_names(unet: nn.Module) -> list[str]:
    """BasicTransformerBlocks of the spatial transformers only (the motion modules hold BasicTransformerBlocks
    too, whose attn2 is temporal self-attention, not cross-attention)."""
    return [n for n, _ in transformer_blocks(unet) if ".attentions." in n]


# --------------------------------------------------------------------------------------------- APA
class APAProcessor(nn.Module):
    """Adaptive Prompts Alignment on one cross-attention.

    The block passes `encoder_hidden_states = cat([text tokens, image tokens], dim=1)`; the first
    `num_text_tokens` are the text (the tokenizer's fixed length; the release splits at its 77 the same way), the
    rest are image tokens, however many: 16 of one frame's image, or 16 per frame for the release's context of
    all F frame images. Q is shared; text K/V use the pretrained `attn.to_k/to_v`; image K/V are this processor's own layers,
    initialised as copies of the text projections when the widths match (IP-Adapter's init), else default init.
    `alpha_text`, `alpha_image` are learnable scalars (paper: 1.0 and 1.5).
    """

    def __init__(self, attn: Attention, num_text_tokens: int, image_dim: int | None = None,
                 alpha_text: float = 1.0, alpha_image: float = 1.5):
        super().__init__()
        if num_text_tokens < 1:
            raise ValueError(f"APA needs at least one text token, got num_text_tokens={num_text_tokens}")
        self.num_text_tokens = int(num_text_tokens)
        in_dim = attn.to_k.in_features if image_dim is None else int(image_dim)
        out_dim = attn.to_k.out_features
        dev = attn.to_k.weight.device
        bias = attn.to_k.bias is not None
        self.to_k_img = nn.Linear(in_dim, out_dim, bias=bias, device=dev, dtype=attn.to_k.weight.dtype)
        self.to_v_img = nn.Linear(in_dim, attn.to_v.out_features, bias=attn.to_v.bias is not None, device=dev,
                                  dtype=attn.to_v.weight.dtype)
        self.copied_init = in_dim == attn.to_k.in_features and dev.type != "meta"
        if self.copied_init:
            self.to_k_img.load_state_dict(attn.to_k.state_dict())
            self.to_v_img.load_state_dict(attn.to_v.state_dict())
        self.alpha_text = nn.Parameter(torch.tensor(float(alpha_text), device=dev))
        self.alpha_image = nn.Parameter(torch.tensor(float(alpha_image), device=dev))

    @staticmethod
    def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, heads, d // heads).transpose(1, 2)

    def forward(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= self.num_text_tokens:
            got = None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape)
            raise ValueError(f"APA cross-attention needs encoder_hidden_states = cat([{self.num_text_tokens} text "
                             f"tokens, image tokens], dim=1), got {got}")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        text = encoder_hidden_states[:, : self.num_text_tokens]
        image = encoder_hidden_states[:, self.num_text_tokens:]
        if attention_mask is not None:  # a mask, if any, is over the text tokens
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            text, image = attn.norm_encoder_hidden_states(text), attn.norm_encoder_hidden_states(image)
        q = self._heads(attn.to_q(hidden_states), attn.heads)
        k_t, v_t = self._heads(attn.to_k(text), attn.heads), self._heads(attn.to_v(text), attn.heads)
        k_i, v_i = self._heads(self.to_k_img(image), attn.heads), self._heads(self.to_v_img(image), attn.heads)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k_t, k_i = attn.norm_k(k_t), attn.norm_k(k_i)
        out_t = F.scaled_dot_product_attention(q, k_t, v_t, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out_i = F.scaled_dot_product_attention(q, k_i, v_i, dropout_p=0.0, is_causal=False)
        out = self.alpha_text * out_t + self.alpha_image * out_i
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_apa(unet: nn.Module, num_text_tokens: int, alpha_text: float = 1.0,
                alpha_image: float = 1.5) -> dict[str, APAProcessor]:
    """Put an `APAProcessor` on the cross-attention (attn2) of every spatial transformer block; returns them by
    block name."""
    procs: dict[str, APAProcessor] = {}

    def make(name: str, attn: Attention, current) -> APAProcessor:
        procs[name] = APAProcessor(attn, num_text_tokens, alpha_text=alpha_text, alpha_image=alpha_image)
        return procs[name]

    install_processors(unet, spatial_block_names(unet), make, which="attn2")
    return procs


# --------------------------------------------------------------------------------------------- subject images
def letterbox(images: torch.Tensor, size: tuple[int, int], fill: float = -1.0) -> torch.Tensor:
    """Resize (N,3,h,w) in [-1,1] to `size` keeping the aspect ratio: pad with black first (the background of a
    segmented subject, so padding adds nothing), then resize."""
    n, c, h, w = images.shape
    th, tw = size
    if h * tw != w * th:
        if w * th < h * tw:  # too narrow: pad the width
            new_w = round(h * tw / th)
            left = (new_w - w) // 2
            images = F.pad(images, (left, new_w - w - left, 0, 0), value=fill)
        else:
            new_h = round(w * th / tw)
            top = (new_h - h) // 2
            images = F.pad(images, (0, 0, top, new_h - h - top), value=fill)
    if images.shape[-2:] != (th, tw):
        images = F.interpolate(images.float(), size=(th, tw), mode="bicubic", align_corners=False,
                               antialias=True).clamp(-1, 1)
    return images


class HFAPyramid(nn.Module):
    """High-Fidelity Alignment: subject VAE latents -> features at the noisy latent's size (B, out_channels, h, w).

    `pyramid` (paper): one latent per scale factor (pixel sizes = factor x video size; paper 384/320/256 for 256-px
    video = 1.5/1.25/1.0), each adaptive-avg-pooled to the latent size and mapped by its own 3x3 conv to
    `channels` channels. `single` (release): one latent at the video size, concatenated as is (4 channels).

    `fit` says how an input image reaches each pixel size: `resize` for a full frame with the subject in place
    (the release's input: stretching a frame-shaped image to each size and pooling back keeps every latent pixel
    over the same frame pixels, so the latents stay aligned with the frame's); `letterbox` for a cropped subject
    of any aspect (padded with black, then resized: no alignment with the frame exists).
    """

    def __init__(self, mode: str = "pyramid", scales: Sequence[float] = (1.5, 1.25, 1.0), latent_channels: int = 4,
                 channels: int = 4, fit: str = "resize"):
        super().__init__()
        if mode not in ("pyramid", "single"):
            raise ValueError(f"method.hfa must be 'pyramid' or 'single', got {mode!r}")
        if fit not in ("resize", "letterbox"):
            raise ValueError(f"HFAPyramid fit must be 'resize' or 'letterbox', got {fit!r}")
        self.mode, self.fit = mode, fit
        self.scales = tuple(float(s) for s in scales) if mode == "pyramid" else (1.0,)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"method.hfa_scales must be positive factors of the video size, got {list(scales)}")
        self.convs = (nn.ModuleList(nn.Conv2d(latent_channels, channels, 3, padding=1) for _ in self.scales)
                      if mode == "pyramid" else None)
        self.out_channels = channels * len(self.scales) if mode == "pyramid" else latent_channels

    def pixel_sizes(self, latent_hw: tuple[int, int], downsample: int) -> list[tuple[int, int]]:
        """Subject sizes to encode: factor x video size, rounded to whole latent pixels."""
        h, w = latent_hw
        return [(max(1, round(s * h)) * downsample, max(1, round(s * w)) * downsample) for s in self.scales]

    def _fit(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.fit == "letterbox":
            return letterbox(images, size)
        if tuple(images.shape[-2:]) == tuple(size):
            return images
        return F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False,
                             antialias=True).clamp(-1, 1)

    def scale_latents(self, subject: torch.Tensor, latent_hw: tuple[int, int], downsample: int,
                      encode: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """One VAE latent per scale, pooled to `latent_hw` (before the per-scale convs)."""
        out = []
        for size in self.pixel_sizes(latent_hw, downsample):
            z = encode(self._fit(subject, size))
            if tuple(z.shape[-2:]) != tuple(latent_hw):
                z = F.adaptive_avg_pool2d(z, latent_hw)
            out.append(z)
        return out

    def forward(self, subject: torch.Tensor, latent_hw: tuple[int, int], downsample: int,
                encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """subject (N,3,any,any) in [-1,1]; `encode` maps images to scaled VAE latents (frozen codec)."""
        zs = self.scale_latents(subject, latent_hw, downsample, encode)
        return torch.cat([self.convs[i](z) for i, z in enumerate(zs)] if self.convs is not None else zs, dim=1)
