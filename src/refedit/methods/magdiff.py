"""MagDiff (Zhao et al., ECCV 2024): subject-driven video generation and editing (arXiv 2311.17338).

Inflation — choice (b), diffusers' motion modules: the shared SD-1.x U-Net becomes a `UNetMotionModel`
(`UNetMotionModel.from_unet2d(unet, MotionAdapter(...))`): an AnimateDiff temporal transformer (self-attention
over frames, sinusoidal frame positions) after every resnet/spatial-transformer pair in every block, mid block
included. Why: it is diffusers' maintained video U-Net, it loads AnimateDiff adapters (`motion.adapter`), and it
passes the init-equivalence test once the motion modules' `proj_out` is zeroed — diffusers leaves it at default
init, so `magdiff_parts.inflate_unet` zeroes it for a fresh adapter; the inflated net then equals the image net
frame by frame. Differences to the release (VidRD-style): no temporal conv residuals in the resnets (AnimateDiff
has none) and two temporal self-attentions per motion block.

Conditions (per sample; the U-Net sees frames as its batch):
* Subject-Driven Alignment: the condition is the segmented subject on black (`subject`, cropped to the subject;
  `subject_inplace`, the first frame with everything but the subject blacked out).
* Frame images: `subject_frames: first` (release) gives frame 0 the subject and the other frames a blank image,
  black (-1 in [-1,1]: the release zeroes the 8-bit pixels of those frames before mapping them to [-1,1], for its
  CLIP and VAE inputs alike); `all` gives every frame the subject.
* APA: CLIP vision tokens of each frame image (all tokens) -> perceiver resampler (diffusers' IP-Adapter-Plus
  resampler, 16 learned queries) -> 16 image tokens per frame image. `image_context: all_frames` (release): the
  tokens of all F frame images are concatenated, cat([text, tokens of frame 0, ..., of frame F-1]), and that one
  context is given to every frame, so the subject's tokens reach every frame; `per_frame`: frame f attends to
  cat([text, its own 16 tokens]) only (with `subject_frames: first` frames 1..F-1 then never see the subject
  through APA). Each APA processor splits its context after the text tokens (the tokenizer's fixed length).
* HFA: VAE latents of the subject image at 1.5/1.25/1.0 x the video size (paper: 384/320/256 for 256 px) ->
  pooled to the latent size -> 3x3 conv to `hfa_channels` each (default the latent's width: 4 with SD's VAE) ->
  concatenated to the noisy latent on channels (conv_in widened, zero init); `hfa: single` is the release's one
  latent (input: two latents). `hfa_input: inplace` (release) encodes `subject_inplace`, pixel-aligned with frame 0, resized to each scale (alignment kept);
  `crop` encodes the cropped `subject` letterboxed to each size (not aligned with the frame). The same
  `subject_frames` rule applies per frame (the others get the blank image's latents).
* Text dropped with p = cond_drop_prob for CFG; at sampling CFG is on text only (negative = empty text, same
  image tokens and HFA latents).

What trains: the paper's set (temporal layers, spatial transformers with APA, conv_in, resampler, HFA convs) on a
pretrained U-Net. With `backbone.unet.pretrained: null` the U-Net is random and its frozen resnets could never
learn, so the whole U-Net trains then (logged at build).

Latents are (B, 4, F, h, w) (diffusers' AnimateDiff layout), frames encoded one by one by the image VAE.
Editing is SDEdit-style (the paper's "tuning-free editing" has no inversion in the release): the source clip
(`video`) is encoded, noised to `strength` and denoised with the new subject / caption.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from torch import nn

from refedit.backbone.encoders import FrozenImageEncoder, FrozenTextEncoder
from refedit.backbone.latents import InputLayout
from refedit.backbone.unet import build_unet
from refedit.methods.base import Cond, LatentEditModule
from refedit.methods.magdiff_parts import HFAPyramid, inflate_unet, install_apa, letterbox

log = logging.getLogger(__name__)

_TRAINABLE_UNET_RE = re.compile(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(attentions|motion_modules)")


def text_length(encoder: FrozenTextEncoder) -> int:
    """Tokens per encoded caption: the tokenizer pads every caption to its model_max_length (without a loaded
    tokenizer, on meta, the text model's position count, which SD's tokenizer length equals)."""
    if encoder.tokenizer is not None:
        return int(encoder.tokenizer.model_max_length)
    return int(encoder.model.config.max_position_embeddings)


class MagDiff(LatentEditModule):
    name = "magdiff"
    # `subject_inplace` joins both with hfa_input=inplace (set in build)
    train_keys = ("video", "subject", "caption")
    sample_keys = ("subject", "caption")
    data_hint = ("Use a data config that yields clips with a segmented subject, e.g. data=toyworld "
                 "data.task=subject_video (or a captioned clip folder with subject masks).")
    frozen_modules = ("codec", "text_encoder", "image_encoder")

    def build(self, num_frames: int = 8, motion: Mapping[str, Any] | None = None,
              image_tokens: Mapping[str, Any] | None = None, subject_frames: str = "first",
              image_context: str = "all_frames", apa: Mapping[str, Any] | None = None, hfa: str = "pyramid",
              hfa_scales: tuple[float, ...] | list[float] = (1.5, 1.25, 1.0), hfa_channels: int | None = None,
              hfa_input: str = "inplace", unet_init: str = "text_to_image") -> None:
        if subject_frames not in ("first", "all"):
            raise ValueError(f"method.subject_frames must be 'first' or 'all', got {subject_frames!r}")
        if image_context not in ("all_frames", "per_frame"):
            raise ValueError(f"method.image_context must be 'all_frames' or 'per_frame', got {image_context!r}")
        if hfa_input not in ("inplace", "crop"):
            raise ValueError(f"method.hfa_input must be 'inplace' or 'crop', got {hfa_input!r}")
        motion = {"adapter": None, "num_attention_heads": 8, "max_frames": 32, **dict(motion or {})}
        tok = {"num_tokens": 16, "features": "tokens", "depth": 4, "hidden_dims": None, "dim_head": 64, "heads": 12,
               "ffn_ratio": 4, **dict(image_tokens or {})}
        apa = {"alpha_text": 1.0, "alpha_image": 1.5, **dict(apa or {})}
        if tok["features"] not in ("tokens", "penultimate"):
            raise ValueError(f"method.image_tokens.features must be 'tokens' or 'penultimate', got {tok['features']!r}")
        self.num_frames = int(num_frames)
        self.max_frames = int(motion["max_frames"])
        if not 1 <= self.num_frames <= self.max_frames:
            raise ValueError(f"method.num_frames={self.num_frames} must be in [1, motion.max_frames="
                             f"{self.max_frames}] (the temporal position embedding's length)")
        self.subject_frames = subject_frames
        self.image_context = image_context
        self.hfa_input = hfa_input
        if hfa_input == "inplace":
            self.train_keys = (*type(self).train_keys, "subject_inplace")
            self.sample_keys = (*type(self).sample_keys, "subject_inplace")
            self.data_hint = (f"{type(self).data_hint} method.hfa_input=inplace also needs 'subject_inplace' (the "
                              f"first frame, subject only, on black); method.hfa_input=crop encodes the cropped "
                              f"subject instead.")
        self.image_features = tok["features"]
        self.num_image_tokens = int(tok["num_tokens"])

        self.text_encoder = FrozenTextEncoder.from_backbone(self.backbone_cfg, meta=self.meta)
        self.image_encoder = FrozenImageEncoder.from_backbone(self.backbone_cfg, meta=self.meta)
        c = self.codec.latent_channels
        self.hfa = HFAPyramid(hfa, hfa_scales, c, c if hfa_channels is None else int(hfa_channels),
                              fit="resize" if hfa_input == "inplace" else "letterbox")
        self.layout = InputLayout((("latent", c), ("hfa", self.hfa.out_channels)), "MagDiff")
        unet2d = build_unet(self.backbone_cfg["unet"], layout=self.layout, meta=self.meta, init=unet_init)
        cross_dim = int(unet2d.config.cross_attention_dim)
        if self.text_encoder.dim != cross_dim:
            raise ValueError(f"text encoder width {self.text_encoder.dim} != U-Net cross_attention_dim {cross_dim}")
        self.unet = inflate_unet(unet2d, motion["adapter"], num_attention_heads=int(motion["num_attention_heads"]),
                                 max_frames=self.max_frames, meta=self.meta)
        del unet2d
        with torch.device("meta") if self.meta else nullcontext():
            # image tokens share the text width: both are concatenated into one encoder_hidden_states tensor
            self.resampler = IPAdapterPlusImageProjection(
                embed_dims=self.image_encoder.hidden_size, output_dims=cross_dim,
                hidden_dims=int(tok["hidden_dims"] or cross_dim), depth=int(tok["depth"]),
                dim_head=int(tok["dim_head"]), heads=int(tok["heads"]), num_queries=self.num_image_tokens,
                ffn_ratio=float(tok["ffn_ratio"]))
            self.apa = install_apa(self.unet, text_length(self.text_encoder), float(apa["alpha_text"]),
                                   float(apa["alpha_image"]))
        if self.backbone_cfg.get("gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()
        self.train_whole_unet = not self.backbone_cfg["unet"].get("pretrained")
        if self.train_whole_unet:
            log.warning("magdiff: backbone.unet.pretrained is null, so the U-Net is randomly initialised: training "
                        "the whole U-Net (resnets, samplers, time embedding and conv_out too), not only the paper's "
                        "temporal / spatial-transformer / conv_in set, which needs a pretrained image U-Net")

    # ------------------------------------------------------------------ what trains
    def trainable_modules(self) -> dict[str, nn.Module]:
        """Temporal layers, spatial transformers (incl. APA K/V and alphas, which live in their attn2 processors),
        conv_in, resampler, HFA convs. Resnets, up/down samplers, time embedding, conv_out stay frozen, except
        on a random U-Net (`backbone.unet.pretrained: null`), where the whole U-Net trains."""
        mods: dict[str, nn.Module] = {"resampler": self.resampler, "hfa": self.hfa}
        if self.train_whole_unet:
            return {"unet": self.unet, **mods}
        mods["unet.conv_in"] = self.unet.conv_in
        for name, m in self.unet.named_modules():
            if _TRAINABLE_UNET_RE.fullmatch(name):
                mods[f"unet.{name}"] = m
        return mods

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.trainable_modules().values() for p in m.parameters()]

    # ------------------------------------------------------------------ latents
    def _frames(self, batch: Mapping[str, Any]) -> int:
        return int(batch["video"].shape[1]) if "video" in batch else self.num_frames

    def _latent_hw(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        d = self.codec.downsample
        if "video" in batch:
            h, w = batch["video"].shape[-2:]
        else:
            h = w = int(self.backbone_cfg["resolution"])
        if h % d or w % d:
            raise ValueError(f"clip size {h}x{w} is not divisible by the VAE downsample factor {d}")
        return h // d, w // d

    def _encode_clip(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,F,3,H,W) -> (B,4,F,h,w), frame by frame through the image VAE."""
        b, f = video.shape[:2]
        z = self.codec.encode(video.flatten(0, 1), generator=generator)
        return z.view(b, f, *z.shape[1:]).transpose(1, 2)

    def target_latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self._encode_clip(batch["video"])

    def latent_shape(self, batch: Mapping[str, Any]) -> tuple[int, ...]:
        n = batch["video"].shape[0] if "video" in batch else batch["subject"].shape[0]
        return (n, self.codec.latent_channels, self._frames(batch), *self._latent_hw(batch))

    def init_latents(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        if "video" not in batch:
            raise ValueError("magdiff editing (strength < 1) needs the source clip as batch['video'] "
                             "(refedit.edit: source=clip.mp4); generation uses strength=1")
        return self._encode_clip(batch["video"], generator=generator)

    def decode(self, z: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        b, _, f = z.shape[:3]
        x = self.codec.decode(z.transpose(1, 2).flatten(0, 1))
        return x.view(b, f, *x.shape[1:])

    # ------------------------------------------------------------------ conditions
    def _per_frame(self, subject: torch.Tensor, blank: torch.Tensor | None, frames: int) -> torch.Tensor:
        """(N, ...) subject features + (1, ...) blank-image features -> (N, F, ...) by `subject_frames`."""
        first = subject[:, None]
        if self.subject_frames == "all" or frames == 1:
            return first.expand(-1, frames, *subject.shape[1:])
        rest = blank[:, None].expand(subject.shape[0], frames - 1, *blank.shape[1:])
        return torch.cat([first, rest], dim=1)

    def subject_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,h,w) subjects -> (N, num_image_tokens, D) resampled CLIP tokens."""
        size = self.image_encoder.image_size
        feats = self.image_encoder(letterbox(images, (size, size)), output=self.image_features)
        return self.resampler(feats.to(self.resampler.latents.dtype))

    def hfa_latents(self, images: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """(N,3,any,any) subjects -> (N, hfa.out_channels, h, w); VAE posterior mode (a deterministic condition)."""
        return self.hfa(images, latent_hw, self.codec.downsample, lambda x: self.codec.encode(x, sample=False))

    def hfa_image(self, batch: Mapping[str, Any], latent_hw: tuple[int, int]) -> torch.Tensor:
        """What HFA encodes: the in-place subject (frame-sized) or the cropped one, by `hfa_input`."""
        if self.hfa_input == "crop":
            return batch["subject"]
        self.check_batch(batch, ("subject_inplace",))
        img = batch["subject_inplace"]
        want = tuple(d * self.codec.downsample for d in latent_hw)
        if tuple(img.shape[-2:]) != want:
            raise ValueError(f"magdiff: batch['subject_inplace'] is {tuple(img.shape[-2:])}, the clip's frames are "
                             f"{want}: the in-place subject must be frame 0's size (method.hfa_input=inplace)")
        return img

    def subject_conditions(self, batch: Mapping[str, Any], frames: int, latent_hw: tuple[int, int]) -> Cond:
        """Per-frame image tokens (N, F, T, D) and HFA latents (N, F, C, h, w). With subject_frames=first the frames
        other than the first have the blank (black) image. T = 16 x F with image_context=all_frames (every frame gets
        the same context: the tokens of all F frame images in frame order), 16 with per_frame."""
        subject, hfa_img = batch["subject"], self.hfa_image(batch, latent_hw)
        n = subject.shape[0]
        blank = self.subject_frames == "first" and frames > 1
        if blank:  # one blank image per batch: its features are the same for every sample
            subject = torch.cat([subject, torch.full_like(subject[:1], -1.0)])
            hfa_img = torch.cat([hfa_img, torch.full_like(hfa_img[:1], -1.0)])
        tokens, hfa = self.subject_tokens(subject), self.hfa_latents(hfa_img, latent_hw)
        image = self._per_frame(tokens[:n], tokens[n:] if blank else None, frames)
        if self.image_context == "all_frames":
            image = image.flatten(1, 2)[:, None].expand(-1, frames, -1, -1)
        return {"image": image, "hfa": self._per_frame(hfa[:n], hfa[n:] if blank else None, frames)}

    def conditions(self, batch, *, train, generator=None) -> tuple[Cond, Cond | None]:
        captions = list(batch["caption"])
        frames = self._frames(batch)
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames exceed motion.max_frames={self.max_frames}")
        subj = self.subject_conditions(batch, frames, self._latent_hw(batch))
        if train:
            drop = self.drop_mask(len(captions)).tolist()
            captions = ["" if d else c for c, d in zip(captions, drop)]
            return {"text": self.text_encoder(captions), **subj}, None
        cond = {"text": self.text_encoder(captions), **subj}
        uncond = {"text": self.text_encoder([""] * len(captions)), **subj}
        return cond, uncond

    def denoise(self, z, t, cond):
        n, _, f = z.shape[:3]
        x = torch.cat([z, cond["hfa"].transpose(1, 2).to(z.dtype)], dim=1)
        text = cond["text"][:, None].expand(-1, f, -1, -1)
        context = torch.cat([text, cond["image"].to(text.dtype)], dim=2).flatten(0, 1)  # (N*F, L_text + T, D)
        return self.unet(x, t, encoder_hidden_states=context).sample

    # ------------------------------------------------------------------ edit entry point
    def prepare_edit_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A source clip longer than the temporal position embedding is cut to its first motion.max_frames."""
        if "video" in batch and batch["video"].shape[1] > self.max_frames:
            log.warning("source clip has %d frames; editing the first %d (motion.max_frames)",
                        batch["video"].shape[1], self.max_frames)
            batch = {**batch, "video": batch["video"][:, : self.max_frames]}
        return batch

    def parameter_counts(self) -> dict[str, int]:
        """Sizes for reports: total, trainable and per part."""
        def count(mods):
            return sum(p.numel() for m in mods for p in m.parameters())

        named = dict(self.unet.named_modules())
        return {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.trainable_parameters()),
            "unet": count([self.unet]),
            "temporal": count([m for n, m in named.items() if re.fullmatch(r".*\.motion_modules\.\d+", n)]),
            "spatial_transformers": count([m for n, m in named.items() if re.fullmatch(r".*\.attentions\.\d+", n)]),
            "apa_image_kv": count(self.apa.values()),
            "resampler": count([self.resampler]),
            "hfa": count([self.hfa]),
            "conv_in": count([self.unet.conv_in]),
        }
