"""Photo kinds of generator 2.0 (``photo`` class: a print, a card or a screen).

Generator 1.0's prints/cards/screens (their pictures now from the active source split), screens with
moiré, glossy prints with strong glare, a photograph *of* a document (a print whose picture shows a
page lying in a scene: the print is the object, so ``photo``), and a screen showing a document (the
screen is the object, so ``photo``; rarer, it is outside TASK.md's range). ``photo_texture_v2(rng, h, w)``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from . import objects
from .camera import sample_quad
from .effects import shade_texture
from .pages import render_page
from .scenes import background, picture, random_color

_TEXTURE_ORDER = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def moire(rng, img: np.ndarray, strength: float) -> np.ndarray:
    """Interference of the screen's pixel grid with the camera's: two slightly rotated fine gratings
    multiplied, leaving slow coloured beat bands."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f, a = _u(rng, 0.6, 1.4), _u(rng, 0, math.pi)
    da, df = _u(rng, 0.01, 0.06), _u(rng, 0.97, 1.03)
    g1 = np.cos((xx * math.cos(a) + yy * math.sin(a)) * f)
    g2 = np.cos((xx * math.cos(a + da) + yy * math.sin(a + da)) * f * df)
    beat = cv2.GaussianBlur(g1 * g2, (0, 0), 1.5 / f)  # the beat survives, the carriers average out
    beat = beat / max(float(np.abs(beat).max()), 1e-6)
    tint = rng.uniform(0.6, 1.4, 3).astype(np.float32)
    gain = 1 + strength * beat[..., None] * tint
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def screen(rng, h: int, w: int, content: np.ndarray | None = None):
    """A phone / monitor / tablet: dark (rarely light) bezel, emitted picture, moiré, glare."""
    s = min(h, w)
    bezel = int(s * _u(rng, 0.015, 0.09))
    tex = np.empty((h, w, 3), np.uint8)
    tex[:] = (random_color(rng, 0, 45) if rng.random() < 0.85 else random_color(rng, 170, 240)).astype(np.uint8)
    ih, iw = max(1, h - 2 * bezel), max(1, w - 2 * bezel)
    pic = picture(rng, ih, iw) if content is None else cv2.resize(content, (iw, ih), interpolation=cv2.INTER_AREA)
    emitted = np.clip(pic.astype(np.float32) * _u(rng, 0.9, 1.25) + _u(rng, 0, 25), 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        emitted = moire(rng, emitted, _u(rng, 0.05, 0.35))
    tex[bezel:bezel + ih, bezel:bezel + iw] = emitted[:h - 2 * bezel, :w - 2 * bezel]
    alpha = objects.rounded_alpha(h, w, int(s * _u(rng, 0.02, 0.1))) if rng.random() < 0.5 else None
    return shade_texture(rng, tex, _u(rng, 0, 0.3), _u(rng, 0.1, 0.6) if rng.random() < 0.5 else 0.0), alpha


def document_scene(rng, h: int, w: int) -> np.ndarray:
    """A picture of a page lying in a scene (what a photograph of a document shows): the page covers
    20-60 % of the picture and the scene shows around it."""
    img = background(rng, h, w)
    aspect = 1 / math.sqrt(2) if rng.random() < 0.7 else math.sqrt(2)
    q = sample_quad(rng, w, h, aspect, _u(rng, 0.2, 0.6), 30.0, (40.0, 70.0), 0.1)
    if q is None:
        return img
    ph, pw = (int(h * 0.8), int(h * 0.8 * aspect)) if aspect < 1 else (int(w * 0.8 / aspect), int(w * 0.8))
    page = render_page(rng, max(ph, 16), max(pw, 16))
    src = _TEXTURE_ORDER * [page.shape[1], page.shape[0]]
    m = cv2.getPerspectiveTransform(src.astype(np.float32), q.astype(np.float32))
    warped = cv2.warpPerspective(page, m, (w, h), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full(page.shape[:2], 255, np.uint8), m, (w, h))
    a = mask.astype(np.float32)[..., None] * (1 / 255)
    return (warped * a + img * (1 - a)).astype(np.uint8)


def print_of(rng, h: int, w: int, picture_img: np.ndarray):
    """A glossy print of ``picture_img``: white border (or none), maybe strong glare."""
    tex = np.empty((h, w, 3), np.uint8)
    t = int(min(h, w) * _u(rng, 0.02, 0.08)) if rng.random() < 0.6 else 0
    tex[:] = np.uint8(_u(rng, 215, 255))
    ih, iw = max(1, h - 2 * t), max(1, w - 2 * t)
    tex[t:t + ih, t:t + iw] = cv2.resize(picture_img, (iw, ih), interpolation=cv2.INTER_AREA)[:h - 2 * t, :w - 2 * t]
    return shade_texture(rng, tex, _u(rng, 0, 0.3), _u(rng, 0.1, 0.6) if rng.random() < 0.4 else 0.0), None


KINDS = (("v1", 0.62), ("screen", 0.16), ("glossy", 0.12), ("doc_photo", 0.06), ("doc_screen", 0.04))


def photo_texture_v2(rng, h: int, w: int):
    p = np.array([k[1] for k in KINDS])
    kind = KINDS[int(rng.choice(len(KINDS), p=p / p.sum()))][0]
    if kind == "v1":
        return objects.photo_texture(rng, h, w)
    if kind == "screen":
        return screen(rng, h, w)
    if kind == "glossy":
        return print_of(rng, h, w, picture(rng, h, w))
    if kind == "doc_photo":
        return print_of(rng, h, w, document_scene(rng, max(16, h // 2), max(16, w // 2)))
    page = render_page(rng, max(16, h), max(16, w))
    return screen(rng, h, w, content=page)
