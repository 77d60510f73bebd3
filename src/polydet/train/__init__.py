"""Training: the seeds' polygon loss and a resumable, time-budgeted trainer."""

from .loss import LossHyp, PolygonLoss, order_penalty, paired_polygon_iou
from .trainer import ModelEMA, TrainConfig, main, make_parser, train

__all__ = ["LossHyp", "ModelEMA", "PolygonLoss", "TrainConfig", "main", "make_parser", "order_penalty",
           "paired_polygon_iou", "train"]
