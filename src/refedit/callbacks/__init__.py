from refedit.callbacks.image_logger import ImageLogger

__all__ = ["ImageLogger"]
