"""Latent-space inputs every method builds the same way: masks at latent size and the U-Net's input layout.

A method's U-Net reads ``cat([noisy latent, conditions...], dim=1)``. Its `InputLayout` names each channel
group in that order, with sizes derived from the VAE (`LatentCodec.latent_channels`), so one VAE config
decides every channel count (SD: 4 latent channels -> 9 for inpainting, 13 for MimicBrush) and the U-Net is
checked against it, as diffusers' `StableDiffusionInpaintPipeline` checks latent + mask + masked image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel mask -> latent-size mask, resized as diffusers' inpainting pipeline does (nearest)."""
    return F.interpolate(mask.float(), size=latent_hw)


@dataclass(frozen=True)
class InputLayout:
    """A U-Net's input: named channel groups in concatenation order, the noisy latent first (its width is the
    VAE's latent_channels, which is also the U-Net's output width). `name` says what U-Net this is in errors."""

    groups: tuple[tuple[str, int], ...]
    name: str = "U-Net"

    def __post_init__(self) -> None:
        if not self.groups or any(int(n) < 1 for _, n in self.groups):
            raise ValueError(f"InputLayout needs channel groups of positive width, got {self.groups}")
        names = [g for g, _ in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"InputLayout group names must be unique, got {names}")

    @property
    def in_channels(self) -> int:
        return sum(int(n) for _, n in self.groups)

    @property
    def latent_channels(self) -> int:
        return int(self.groups[0][1])

    def width(self, group: str) -> int:
        return int(dict(self.groups)[group])

    def slice(self, group: str) -> slice:
        """The channels of `group` in the concatenated input (e.g. to permute conv_in weights)."""
        start = 0
        for g, n in self.groups:
            if g == group:
                return slice(start, start + int(n))
            start += int(n)
        raise KeyError(f"{self.name} input has no channel group {group!r}: {[g for g, _ in self.groups]}")

    def prefixes(self) -> tuple[int, ...]:
        """Widths a U-Net can be widened from (zero-init channels appended): the ends of the leading groups."""
        out, total = [], 0
        for _, n in self.groups:
            total += int(n)
            out.append(total)
        return tuple(out)

    def extend(self, *groups: tuple[str, int], name: str | None = None) -> InputLayout:
        return InputLayout(self.groups + tuple(groups), name or self.name)

    def describe(self) -> str:
        return " + ".join(f"{g} {n}" for g, n in self.groups) + f" = {self.in_channels}"

    def _check_out(self, unet, what: str) -> None:
        out = int(unet.config.out_channels)
        if out != self.latent_channels:
            raise ValueError(f"{what}: the U-Net predicts {out} channels, the VAE's latents have {self.latent_channels} "
                             f"(backbone.vae latent_channels): backbone.unet and backbone.vae do not belong together")

    def check(self, unet, what: str = "backbone.unet") -> None:
        """The U-Net takes exactly this input and predicts a latent (diffusers' inpaint pipeline's check)."""
        got = int(unet.config.in_channels)
        if got != self.in_channels:
            raise ValueError(f"{what}: the {self.name} U-Net's config expects {got} input channels, but its input "
                             f"is {self.describe()} (from the VAE's latent_channels={self.latent_channels}): check "
                             f"backbone.unet and backbone.vae")
        self._check_out(unet, what)

    def check_widenable(self, unet, what: str = "backbone.unet") -> None:
        """A pretrained U-Net this layout can start from: its input is a leading part of the layout (the new
        channels are zero-initialised behind it), its output the VAE latent."""
        got = int(unet.config.in_channels)
        if got not in self.prefixes():
            raise ValueError(f"{what}: the method needs a {self.name} U-Net ({self.describe()}) or one whose input "
                             f"is its first groups ({' or '.join(map(str, self.prefixes()))} channels) to widen; "
                             f"this one has {got} input channels")
        self._check_out(unet, what)


def text_to_image_layout(latent_channels: int) -> InputLayout:
    """The noisy latent alone (SD: 4 channels)."""
    return InputLayout((("latent", int(latent_channels)),), "text-to-image")


def inpaint_layout(latent_channels: int) -> InputLayout:
    """SD-inpainting's input in diffusers' order: noisy latent, mask (1 = edit), masked-image latent (SD: 9)."""
    c = int(latent_channels)
    return InputLayout((("latent", c), ("mask", 1), ("masked_image", c)), "inpainting")
