"""Pictures of detections: polygons, class names and scores drawn on the image."""

from __future__ import annotations

import cv2
import numpy as np

from .results import Detections

COLORS = [(0, 200, 255), (255, 80, 40), (60, 220, 60), (220, 60, 220), (255, 255, 0), (0, 80, 255)]  # BGR


def draw_detections(img: np.ndarray, dets: Detections, thickness: int | None = None) -> np.ndarray:
    """Return a copy of BGR ``img`` with each of ``dets`` drawn (outline, a dot on the first corner, label).
    ``img`` may be a reduced decode of the image (BatchResult.pixels): the polygons are mapped onto it."""
    out = img.copy()
    h, w = out.shape[:2]
    t = thickness or max(2, round(max(h, w) / 400))
    scale = max(0.5, max(h, w) / 1200)
    for polygon, score, class_id in zip(dets.polygons_for(out.shape), dets.scores, dets.class_ids):
        color = COLORS[int(class_id) % len(COLORS)]
        pts = np.round(np.asarray(polygon, dtype=np.float64)).astype(np.int32)
        cv2.polylines(out, [pts], True, color, t, cv2.LINE_AA)
        cv2.circle(out, tuple(int(v) for v in pts[0]), t * 3, color, -1, cv2.LINE_AA)  # marks the TL corner
        label = f"{dets.class_name(int(class_id))} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, t // 2))
        x, y = int(pts[:, 0].min()), int(max(pts[:, 1].min(), th + base))
        cv2.rectangle(out, (x, y - th - base), (x + tw, y), color, -1)
        cv2.putText(out, label, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, t // 2),
                    cv2.LINE_AA)
    return out
