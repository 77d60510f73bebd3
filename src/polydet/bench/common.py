"""Shared benchmark helpers: timing, sample JPEGs, artifacts, tables."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import cv2
import numpy as np

BUNDLED = Path(__file__).resolve().parents[3] / "weights" / "polydet_main_area.pt"


def sample_jpegs(n: int, sizes=(320, 640, 1024, 1600), seed: int = 0, quality: int = 90) -> list[bytes]:
    """JPEGs of several long sides, made of smooth noise with bright quads (page-like), reproducible."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        long = sizes[i % len(sizes)]
        h, w = (long, int(long * 0.75)) if i % 2 else (int(long * 0.75), long)
        small = rng.integers(0, 255, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
        r = min(h, w) * rng.uniform(0.2, 0.35)
        a = rng.uniform(0, np.pi)
        quad = np.array([[cx + r * np.cos(a + k * np.pi / 2), cy + r * np.sin(a + k * np.pi / 2)] for k in range(4)])
        cv2.fillPoly(img, [quad.astype(np.int32)], (235, 235, 230))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(buf.tobytes())
    return out


def timeit(fn, repeat: int = 20, warmup: int = 3, budget_s: float = 20.0) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then up to ``repeat`` times (or until ``budget_s``); seconds."""
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s:
            break
    return times


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    """A Markdown table (pasted as is into BENCHMARKS.md)."""
    cols = cols or list(rows[0])
    fmt = [lambda v: f"{v:.3g}" if isinstance(v, float) and abs(v) < 100 else (f"{v:.0f}" if isinstance(v, float) else str(v))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt[0](r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def weights_or_random() -> str:
    return str(BUNDLED) if BUNDLED.exists() else "random"
