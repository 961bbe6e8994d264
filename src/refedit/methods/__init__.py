"""Methods: one LightningModule per paper, all on the shared latent-diffusion engine of `base.py`."""

from refedit.methods.base import LatentEditModule, load_method

__all__ = ["LatentEditModule", "load_method"]
