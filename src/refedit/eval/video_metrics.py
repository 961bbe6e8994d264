"""Clip metrics. Frame consistency (MagDiff, Tune-A-Video...): mean cosine similarity of the features of
consecutive frames, x100 as papers report it. Features default to CLIP image embeddings from the backbone's image
encoder (`backbone_clip_features`); any `feature_fn` taking (N,3,H,W) in [-1,1] works (probe, DINO...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def frame_consistency(clip: torch.Tensor, feature_fn: FeatureFn, *, scale: float = 100.0) -> torch.Tensor:
    """clip (B,F,3,H,W) in [-1,1] -> (B,): scale * mean_f cos(feat(frame f), feat(frame f+1)).
    A one-frame clip has no consecutive pair and gets NaN (skipped by the report's means)."""
    if clip.dim() != 5 or clip.shape[2] != 3:
        raise ValueError(f"frame_consistency: clip must be (B, F, 3, H, W), got {tuple(clip.shape)}")
    b, f = clip.shape[:2]
    if f < 2:
        return torch.full((b,), float("nan"))
    feats = feature_fn(clip.flatten(0, 1)).float().reshape(b, f, -1)
    cos = F.cosine_similarity(feats[:, 1:], feats[:, :-1], dim=-1)  # (B, F-1)
    return (scale * cos.mean(1)).cpu()


def clip_image_features(encoder: torch.nn.Module, output: str = "embeds") -> FeatureFn:
    """A feature_fn from a `refedit.backbone.encoders.FrozenImageEncoder` (projected CLIP image embeddings by
    default, the space CLIP scores are computed in)."""

    def fn(images: torch.Tensor) -> torch.Tensor:
        dev = next(encoder.parameters()).device
        return torch.cat([encoder(chunk.to(dev), output=output) for chunk in images.split(64)])

    return fn


def backbone_clip_features(backbone: Mapping[str, Any], output: str = "embeds") -> FeatureFn:
    """The default feature_fn: CLIP image features of the backbone config's `image_encoder`."""
    from refedit.backbone.encoders import FrozenImageEncoder

    return clip_image_features(FrozenImageEncoder.from_backbone(backbone), output)
