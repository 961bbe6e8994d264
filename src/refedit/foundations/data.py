"""Stage-1 training and held-out data, rendered from toyworld into memory.

Every part draws its scenes from its own seed range (`SEEDS`, inside toyworld's train split and far from the
ranges the methods' datasets index), and each held-out set from a range of its own, so held-out numbers are
measured on scenes no stage-1 part has seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from refedit.data.toyworld import (
    build_sample,
    object_caption,
    render_scene,
    sample_spec,
    scene_caption,
    visible_objects,
)

#: first seed of each stage-1 set (sets hold at most 1M scenes each)
SEEDS = {"vae": 10_000_000, "clip": 11_000_000, "clip_heldout": 11_900_000, "probe": 20_000_000,
         "probe_heldout": 20_500_000, "locator": 21_000_000, "prior": 30_000_000, "prior_heldout": 31_000_000,
         "inpaint_heldout": 32_000_000}
ATTRIBUTES = ("shape", "colour", "pattern")


def _image(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).float() / 127.5 - 1


@dataclass
class Crops:
    """Object crops (N,3,s,s) in [-1,1], their object masks (N,1,s,s), labels (N,3: shape, colour, pattern) and
    captions."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    captions: list[str]


def object_crops(first_seed: int, n: int, size: int, desc: str) -> Crops:
    """The exemplar of toyworld's self-reference task: the object's square box window rendered at `size`."""
    imgs, masks, labels, caps = [], [], [], []
    for seed in tqdm(range(first_seed, first_seed + n), desc=desc, leave=False):
        s = build_sample("exemplar_inpaint_self", seed, size=64, reference_size=size)
        imgs.append(s["reference"])
        masks.append(s["reference_mask"])
        labels.append([int(s["meta"]["labels"][k]) for k in ATTRIBUTES])
        caps.append(s["caption"])
    return Crops(torch.stack(imgs), torch.stack(masks), torch.tensor(labels), caps)


@dataclass
class Scenes:
    """Frames (N,3,H,W) in [-1,1] with scene captions; `objects[i]` lists (caption, visible mask (H,W) bool, labels)
    of the nameable objects of frame i, the most visible first."""

    images: torch.Tensor
    captions: list[str]
    objects: list[list[tuple[str, np.ndarray, tuple[int, int, int]]]]

    def any_object_masks(self) -> torch.Tensor:
        """(N,1,H,W) float: 1 where any nameable object is visible (the locator's target)."""
        h, w = self.images.shape[-2:]
        out = torch.zeros(len(self.images), 1, h, w)
        for i, objs in enumerate(self.objects):
            for _, m, _ in objs:
                out[i, 0] = torch.maximum(out[i, 0], torch.from_numpy(m.astype(np.float32)))
        return out


def scenes(first_seed: int, n: int, size: int, desc: str, single_object: float = 0.0,
           min_visible: float = 0.3, closeups: float = 0.0) -> Scenes:
    """`n` frames: a `closeups` fraction of object close-ups (toyworld's exemplar window of one object, rendered
    at `size`, with the object's caption), then a `single_object` fraction of one-object scenes whose object is
    at least `min_visible` visible (others are skipped), the rest toyworld's own 1-3 object scenes."""
    imgs, caps, objs = [], [], []
    seed = first_seed
    n_close = int(round(closeups * n))
    n_single = n_close + int(round(single_object * n))
    bar = tqdm(total=n, desc=desc, leave=False)
    for i in range(n_close):
        s = build_sample("exemplar_inpaint_self", first_seed + 500_000 + i, size=64, reference_size=size)
        imgs.append(s["reference"])
        caps.append(s["caption"])
        objs.append([(s["caption"], s["reference_mask"][0].numpy() > 0.5,
                      tuple(int(s["meta"]["labels"][k]) for k in ATTRIBUTES))])
        bar.update(1)
    while len(imgs) < n:
        one = len(imgs) < n_single
        clip = render_scene(sample_spec(seed, n_objects=1 if one else None), size)
        seed += 1
        vis = visible_objects(clip, min_fraction=min_visible if one else 0.3)
        if one and not vis:
            continue
        imgs.append(_image(clip.rgb_u8[0]))
        caps.append(scene_caption(clip))
        objs.append([(object_caption(clip.spec.objects[o]), clip.masks[0, o],
                      tuple(int(clip.spec.objects[o].labels[k]) for k in ATTRIBUTES)) for o in vis])
        bar.update(1)
    bar.close()
    return Scenes(torch.stack(imgs), caps, objs)
