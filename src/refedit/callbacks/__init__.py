from refedit.callbacks.ema import EMA
from refedit.callbacks.image_logger import ImageLogger
from refedit.callbacks.loss_trend import LossTrend
from refedit.callbacks.preemption import PreemptionCheckpoint
from refedit.callbacks.rng import RNGState

__all__ = ["EMA", "ImageLogger", "LossTrend", "PreemptionCheckpoint", "RNGState"]
