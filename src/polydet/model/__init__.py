"""Polygon YOLOv5 model: building from a yaml, and loading/saving weights."""

from .checkpoint import load_model, save_checkpoint
from .yolo import CFG_DIR, PolygonDetect, PolygonYOLO, load_cfg

__all__ = ["CFG_DIR", "PolygonDetect", "PolygonYOLO", "load_cfg", "load_model", "save_checkpoint"]
