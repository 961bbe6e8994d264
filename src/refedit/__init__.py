"""refedit: train, evaluate and compare reference-guided image and video editing methods."""

__version__ = "0.1.0"
