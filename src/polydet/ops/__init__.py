"""Pure tensor/array ops: letterbox, exact polygon IoU, polygon NMS, corner ordering."""

from .letterbox import Letterbox, letterbox  # noqa: F401
from .nms import polygon_nms  # noqa: F401
from .polygon import order_corners, polygon_area, polygon_iou  # noqa: F401
