"""Perspective rectification of a detected quad: the "dewarp" step of a document scanner."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


def rectified_size(polygon) -> tuple[int, int]:
    """(width, height) of the rectified crop: the longer of each pair of opposite sides, in pixels.

    polygon: (4, 2) corners TL, TR, BR, BL.
    """
    q = np.asarray(polygon, dtype=np.float64).reshape(4, 2)
    top, right, bottom, left = (np.linalg.norm(q[(i + 1) % 4] - q[i]) for i in range(4))
    return max(1, int(round(max(top, bottom)))), max(1, int(round(max(left, right))))


def dewarp(img: np.ndarray, polygon, max_side: int | None = 1024) -> np.ndarray:
    """Warp the quad ``polygon`` of ``img`` to an upright rectangle.

    img: (H, W[, C]) array; polygon: (4, 2) pixel corners in order TL, TR, BR, BL (the model's order).
    The output keeps the quad's own side lengths (longest of each opposite pair), scaled down so that
    its longer side is at most ``max_side`` (None: no cap). Returns (h, w[, C]) of img's dtype.
    Raises InvalidInputError for a polygon that is not 4 finite points or has no area.
    """
    import cv2

    q = np.asarray(polygon, dtype=np.float64)
    if q.shape not in ((4, 2), (8,)) or not np.isfinite(q).all():
        raise InvalidInputError(f"dewarp needs 4 finite (x, y) corners, got shape {q.shape}")
    q = q.reshape(4, 2)
    area = 0.5 * abs(np.dot(q[:, 0], np.roll(q[:, 1], -1)) - np.dot(q[:, 1], np.roll(q[:, 0], -1)))
    if area < 1.0:
        raise InvalidInputError("dewarp: the polygon has no area")
    w, h = rectified_size(q)
    if max_side is not None and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(1, int(round(w * s))), max(1, int(round(h * s)))
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(q.astype(np.float32), dst)
    return cv2.warpPerspective(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
