"""Unlabelled look-alikes and occluders of generator 2.0.

Hard negatives are rectangular things that are neither page nor photo, drawn into the scene in
perspective before the objects: windows (panes showing a bright scene), tiled walls and floors, book
spines on a shelf, empty picture frames / mirrors / pin boards on a wall, keyboards. Occluders (pens,
mugs, a hand-like blob) are drawn over the objects afterwards, hiding at most ``max_hidden`` of any.
"""

from __future__ import annotations

import cv2
import numpy as np

from .camera import hidden_fraction, poly_area, sample_quad
from .effects import drop_shadow
from .scenes import muted_color, natural, soft_blur, wood
from .text import Font, random_word

def _u(rng, a, b):
    return float(rng.uniform(a, b))


def _color(rng, lo=0, hi=255):
    return rng.uniform(lo, hi, 3).tolist()


def window(rng, h, w):
    """A window: frame and mullions around panes that show a bright, blurred outdoor scene."""
    outside = cv2.convertScaleAbs(natural(rng, h, w, textures=False), alpha=_u(rng, 0.9, 1.4), beta=_u(rng, 20, 70))
    tex = soft_blur(outside, max(h, w) * _u(rng, 0, 0.01))
    col, t = _color(rng, 150, 255) if rng.random() < 0.7 else _color(rng, 20, 120), max(2, int(min(h, w) * 0.04))
    nx, ny = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    for i in range(nx + 1):
        x = int(i * (w - t) / nx)
        cv2.rectangle(tex, (x, 0), (x + t, h), col, -1)
    for j in range(ny + 1):
        y = int(j * (h - t) / ny)
        cv2.rectangle(tex, (0, y), (w, y + t), col, -1)
    return tex


def tiles(rng, h, w):
    """Square or brick tiles with grout lines (a wall or floor seen at an angle): many small tiles in
    the muted colours of real ones (big saturated cells would each be a card-like quad)."""
    base = muted_color(rng, 60, 240)
    s = max(6, int(max(h, w) / _u(rng, 8, 24)))
    tex = np.empty((h, w, 3), np.uint8)
    tex[:] = (base * 0.6).astype(np.uint8)
    g = max(1, s // 14)
    for j, y in enumerate(range(0, h, s)):
        off = (s // 2) * (j % 2) if rng.random() < 0.3 else 0
        for x in range(-off, w, s):
            cv2.rectangle(tex, (x + g, y + g), (x + s - g, y + s - g), (base * _u(rng, 0.9, 1.08)).clip(0, 255).tolist(), -1)
    return tex


def spines(rng, h, w):
    """Book spines on a shelf: a row of narrow upright rectangles with titles across them."""
    tex = np.empty((h, w, 3), np.uint8)
    tex[:] = np.uint8(_u(rng, 20, 80))
    x = 0
    while x < w:
        bw = max(3, int(w * _u(rng, 0.03, 0.1)))
        top = int(h * _u(rng, 0, 0.25))
        col = _color(rng, 20, 230)
        cv2.rectangle(tex, (x, top), (x + bw - 1, h), col, -1)
        if bw > 8 and rng.random() < 0.7:
            f = Font(rng, bw * 0.6, "any", bold=True)
            strip = np.zeros((bw, h - top), np.uint8)
            f.line(strip, [random_word(rng, caps=1) for _ in range(int(rng.integers(1, 3)))], int(h * 0.05), 0)
            m = np.ascontiguousarray(np.rot90(strip))[:, :, None] * (1 / 255)
            roi = tex[top:h, x:x + bw]
            ink = np.array(_color(rng, 180, 255) if sum(col) < 380 else _color(rng, 0, 60))
            roi[:] = (roi * (1 - m[:roi.shape[0], :roi.shape[1]]) + ink * m[:roi.shape[0], :roi.shape[1]]).astype(np.uint8)
        x += bw
    return tex


def frame(rng, h, w):
    """An empty picture frame holding a mirror or a pin board: a thick moulding around a blurred or
    cork-like inside (no photograph: a framed print would be a ``photo``)."""
    t = max(3, int(min(h, w) * _u(rng, 0.06, 0.18)))
    tex = wood(rng, h, w) if rng.random() < 0.5 else np.full((h, w, 3), _color(rng, 0, 255), np.uint8)
    r = rng.random()
    ih, iw = max(1, h - 2 * t), max(1, w - 2 * t)
    if r < 0.6:  # mirror: a blurred, darker reflection of a scene
        inner = soft_blur(natural(rng, ih, iw), max(ih, iw) * 0.05)
        inner = cv2.convertScaleAbs(inner, alpha=0.7)
    else:  # cork / felt board (a blank light inside would be a blank sheet: left out)
        inner = np.full((ih, iw, 3), _color(rng, 60, 190), np.uint8)
        noise = rng.normal(0, _u(rng, 5, 20), (ih, iw, 1))
        inner = np.clip(inner + noise, 0, 255).astype(np.uint8)
    tex[t:t + ih, t:t + iw] = inner[:h - 2 * t, :w - 2 * t]
    return tex


def keyboard(rng, h, w):
    """A keyboard: rows of small keys in a dark or light case."""
    dark = rng.random() < 0.6
    tex = np.full((h, w, 3), _u(rng, 10, 50) if dark else _u(rng, 180, 230), np.uint8)
    rows, cols = 5, int(rng.integers(10, 16))
    kw, kh = w / (cols + 1), h / (rows + 1)
    for j in range(rows):
        for i in range(cols):
            x0, y0 = int((i + 0.5) * kw + 1), int((j + 0.5) * kh + 1)
            v = _u(rng, 30, 70) if dark else _u(rng, 210, 250)
            cv2.rectangle(tex, (x0, y0), (int(x0 + kw * 0.85), int(y0 + kh * 0.85)), (v, v, v), -1)
    return tex


NEGATIVES = (window, tiles, spines, frame, keyboard)


def _warp_full(img: np.ndarray, tex: np.ndarray, quad: np.ndarray) -> None:
    h, w = img.shape[:2]
    src = np.array([[0, 0], [tex.shape[1], 0], [tex.shape[1], tex.shape[0]], [0, tex.shape[0]]], np.float32)
    m = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    warped = cv2.warpPerspective(tex, m, (w, h), flags=cv2.INTER_LINEAR)
    a = cv2.warpPerspective(np.full(tex.shape[:2], 255, np.uint8), m, (w, h)).astype(np.float32)[..., None] / 255
    img[:] = (warped * a + img * (1 - a)).astype(np.uint8)


def hard_negatives(rng, img: np.ndarray, max_n: int = 2) -> None:
    """Draw 1..max_n look-alikes into the scene, in perspective, 3-60 % of the image each (tiles may
    overflow the frame: a wall is bigger than the picture)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, max_n + 1))):
        fn = NEGATIVES[int(rng.integers(len(NEGATIVES)))]
        aspect = _u(rng, 0.4, 2.5) if fn is not spines else _u(rng, 1.5, 4)
        q = sample_quad(rng, w, h, aspect, _u(rng, 0.03, 0.6), 35.0, (35.0, 90.0), 0.02)
        if q is None:
            continue
        if fn is tiles:  # a tiled wall or floor extends beyond the picture (a small tiled patch is a sheet)
            q = (q - q.mean(0)) * _u(rng, 1.5, 3) + q.mean(0)
        tw = int(np.clip(np.linalg.norm(q[1] - q[0]), 16, 600))
        th = int(np.clip(np.linalg.norm(q[3] - q[0]), 16, 600))
        if rng.random() < 0.5:
            drop_shadow(rng, img, q, _u(rng, 0.1, 0.4), np.sqrt(poly_area(q)) * 0.02, rng.normal(0, 3, 2))
        _warp_full(img, fn(rng, th, tw), q)


def occluders(rng, img: np.ndarray, quads: list[np.ndarray], max_hidden: float = 0.3) -> np.ndarray | None:
    """A pen, a mug or a hand-like blob over an object's edge; skipped when it would hide more than
    ``max_hidden`` of any object (the labels keep the hidden corners). Returns the polygon drawn, or None."""
    if not quads:
        return None
    q = quads[int(rng.integers(len(quads)))]
    i = int(rng.integers(4))
    c = q[i] + (q[(i + 1) % 4] - q[i]) * _u(rng, 0, 1)  # a point on one of its edges
    s = np.sqrt(poly_area(q))
    if rng.random() < 0.5:  # pen: a thin bar across the edge
        ang = _u(rng, 0, np.pi)
        d, n = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        ln, wd = s * _u(rng, 0.3, 0.8), s * _u(rng, 0.02, 0.05)
        poly = np.array([c - d * ln / 2 - n * wd, c + d * ln / 2 - n * wd, c + d * ln / 2 + n * wd, c - d * ln / 2 + n * wd])
        col = _color(rng, 0, 255)
    else:  # a blob: a mug seen from above or a thumb (skin tones)
        r = s * _u(rng, 0.08, 0.2)
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        poly = c + np.stack([np.cos(t) * r * _u(rng, 0.7, 1.3), np.sin(t) * r], 1)
        col = (rng.uniform([80, 120, 170], [140, 170, 230]).tolist() if rng.random() < 0.5 else _color(rng, 0, 255))
    if any(hidden_fraction(o, quads[k + 1:] + [poly]) > max_hidden for k, o in enumerate(quads)):
        return None
    drop_shadow(rng, img, poly, _u(rng, 0.2, 0.5), s * 0.02, rng.normal(0, s * 0.01, 2))
    cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], col, cv2.LINE_AA, shift=4)
    return poly
