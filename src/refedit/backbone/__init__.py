"""The shared latent-diffusion parts every method is assembled from."""

from refedit.backbone.latents import InputLayout, inpaint_layout, latent_mask, text_to_image_layout
from refedit.backbone.loading import load_component
from refedit.backbone.schedule import NoiseSchedule
from refedit.backbone.unet import build_unet, widen_conv_in
from refedit.backbone.vae import LatentCodec

__all__ = ["InputLayout", "LatentCodec", "NoiseSchedule", "build_unet", "inpaint_layout", "latent_mask",
           "load_component", "text_to_image_layout", "widen_conv_in"]
