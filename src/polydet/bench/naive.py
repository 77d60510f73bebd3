"""The seeds' way, as a baseline: PIL decode and resize, one image at a time, and a shapely-loop NMS.

Same model artifact and thresholds as the pipeline, so a ratio against it measures the pipeline's own
work (decode, letterbox, batching, vectorised NMS), not a different network.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..ops.letterbox import PAD_VALUE
from ..ops.reference import shapely_nms


class NaiveDetector:
    def __init__(self, backend, conf: float = 0.25, iou: float = 0.45, max_det: int = 100):
        self.backend, self.conf, self.iou, self.max_det = backend, conf, iou, max_det
        self.size = backend.info.imgsz
        self.names = backend.info.names

    def detect_one(self, data: bytes) -> dict:
        from PIL import Image

        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        r = self.size / max(w, h)
        nw, nh = round(w * r), round(h * r)
        canvas = Image.new("RGB", (self.size, self.size), (PAD_VALUE,) * 3)
        left, top = (self.size - nw) // 2, (self.size - nh) // 2
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), (left, top))
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        pred = self.backend(x).cpu().numpy()  # the seeds' NMS runs on the CPU, whatever the device
        dets, _ = shapely_nms(pred, conf=self.conf, iou=self.iou, max_det=self.max_det)
        out = []
        for row in dets[0]:
            # plain floats: the served naive handler json.dumps this (numpy float32 is not serializable)
            poly = [[float(min(max((row[2 * k] - left) / r, 0), w)), float(min(max((row[2 * k + 1] - top) / r, 0), h))]
                    for k in range(4)]
            out.append({"class_id": int(row[9]), "class_name": self.names[int(row[9])], "score": float(row[8]),
                        "polygon": poly})
        return {"width": w, "height": h, "detections": out}
