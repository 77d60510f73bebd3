"""Polygon YOLOv5 model: building from a yaml (v6.0 and v5.0 layouts), and loading/saving weights
(polydet checkpoints, the seeds' state_dicts, pickled YOLOv5 training checkpoints read without running them)."""

from .checkpoint import Checkpoint, load_model, read_checkpoint, save_checkpoint
from .unpickle import UnsafeCheckpointError
from .yolo import CFG_DIR, PolygonDetect, PolygonYOLO, describe_layout, load_cfg

__all__ = ["CFG_DIR", "Checkpoint", "PolygonDetect", "PolygonYOLO", "UnsafeCheckpointError", "describe_layout",
           "load_cfg", "load_model", "read_checkpoint", "save_checkpoint"]
