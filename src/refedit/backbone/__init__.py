"""The shared latent-diffusion parts every method is assembled from."""

from refedit.backbone.loading import load_component
from refedit.backbone.schedule import NoiseSchedule
from refedit.backbone.unet import build_unet, widen_conv_in
from refedit.backbone.vae import LatentCodec

__all__ = ["LatentCodec", "NoiseSchedule", "build_unet", "load_component", "widen_conv_in"]
