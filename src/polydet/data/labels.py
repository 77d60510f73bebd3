"""Label files in the PolygonObjectDetection convention: one ``class x1 y1 x2 y2 x3 y3 x4 y4`` line per
object, coordinates normalised to [0, 1] by the image width/height; an empty file means no objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_labels(path, labels: np.ndarray, w: int, h: int) -> None:
    """``labels`` (K, 9) [cls, x1, y1, ..., x4, y4] in pixels -> normalised lines with 6 decimals."""
    labels = np.asarray(labels, np.float64).reshape(-1, 9)
    scale = np.array([w, h] * 4, np.float64)
    lines = []
    for row in labels:
        xy = row[1:] / scale
        lines.append(f"{int(row[0])} " + " ".join(f"{v:.6f}" for v in xy))
    Path(path).write_text("".join(line + "\n" for line in lines))


def read_labels(path, w: int, h: int) -> np.ndarray:
    """Normalised label lines -> (K, 9) float32 [cls, x1, ..., y4] in pixels. A missing or empty file
    gives (0, 9). Malformed lines raise ValueError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        return np.zeros((0, 9), np.float32)
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 9:
            raise ValueError(f"{p}:{n}: expected 9 values (class x1 y1 ... x4 y4), got {len(parts)}")
        rows.append([float(v) for v in parts])
    out = np.array(rows, np.float64).reshape(-1, 9)
    out[:, 1:] *= np.array([w, h] * 4, np.float64)
    return out.astype(np.float32)
