"""Training: AR pre-training and TiDAR AR -> diffusion conversion."""

from .objective import LossParts, Objective
from .trainer import TrainConfig, train

__all__ = ["LossParts", "Objective", "TrainConfig", "train"]
