"""Object textures (flat, front-facing, before projection) and unlabelled clutter.

``page_texture`` and ``photo_texture`` return ``(BGR uint8 (h, w, 3), alpha uint8 (h, w) or None)``;
alpha is only for shapes that are not full rectangles (rounded card/phone corners, dog-ears)."""

from __future__ import annotations

import cv2
import numpy as np

from .effects import drop_shadow, shade_texture
from .pages import render_page
from .scenes import picture, random_color
from .text import Font


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def rounded_alpha(h: int, w: int, r: int) -> np.ndarray:
    a = np.full((h, w), 255, np.uint8)
    if r < 1:
        return a
    a[:r, :r] = a[:r, -r:] = a[-r:, :r] = a[-r:, -r:] = 0
    for cx, cy in ((r, r), (w - 1 - r, r), (r, h - 1 - r), (w - 1 - r, h - 1 - r)):
        cv2.circle(a, (cx, cy), r, 255, -1, cv2.LINE_AA)
    return a


def page_texture(rng, h: int, w: int):
    tex = render_page(rng, h, w)
    tex = shade_texture(rng, tex, _u(rng, 0, 0.35), glare=_u(rng, 0, 0.25) if rng.random() < 0.1 else 0)
    alpha = None
    if rng.random() < 0.06:  # dog-eared corner: a folded-over triangle, the label keeps the sheet's corner
        alpha = np.full((h, w), 255, np.uint8)
        s = int(min(h, w) * _u(rng, 0.04, 0.12))
        tri = np.array([[0, 0], [s, 0], [0, s]], np.int32)
        cv2.fillConvexPoly(alpha, tri, 0, cv2.LINE_AA)
        flap = np.array([[s, 0], [0, s], [s, s]], np.int32)
        cv2.fillConvexPoly(tex, flap, tuple(float(v) * 0.85 for v in tex[min(h - 1, s), min(w - 1, s)]), cv2.LINE_AA)
        k = int(rng.integers(4))
        tex, alpha = np.ascontiguousarray(np.rot90(tex, k)), np.ascontiguousarray(np.rot90(alpha, k))
        if k % 2:  # keep the requested shape
            tex, alpha = cv2.resize(tex, (w, h)), cv2.resize(alpha, (w, h))
    return tex, alpha


def photo_texture(rng, h: int, w: int):
    """A printed photo (plain, white/black border, polaroid), a card, or a screen with a bezel."""
    kind = rng.choice(["print", "card", "screen"], p=[0.5, 0.2, 0.3])
    s = min(h, w)
    alpha = None
    if kind == "print":
        tex = np.empty((h, w, 3), np.uint8)
        r = rng.random()
        if r < 0.45:
            b = [0, 0, 0, 0]
        else:
            t = int(s * _u(rng, 0.02, 0.09))
            b = [t, t, t, int(t * _u(rng, 2.5, 4))] if r > 0.9 else [t] * 4  # [left, top, right, bottom]
        tex[:] = (np.array([_u(rng, 215, 255)] * 3) - rng.uniform(0, 20, 3) if rng.random() < 0.85
                  else random_color(rng, 0, 60)).astype(np.uint8)  # white or dark border
        ih, iw = h - b[1] - b[3], w - b[0] - b[2]
        tex[b[1]:b[1] + ih, b[0]:b[0] + iw] = picture(rng, max(ih, 1), max(iw, 1))[:ih, :iw]
        glare = _u(rng, 0.1, 0.5) if rng.random() < 0.3 else 0.0
    elif kind == "card":
        tex = picture(rng, h, w)
        ph = int(h * _u(rng, 0.15, 0.35))
        if rng.random() < 0.5 and ph >= 6:  # a text panel (postcard / ID card) over part of the picture
            y0 = 0 if rng.random() < 0.5 else h - ph
            tex[y0:y0 + ph] = (tex[y0:y0 + ph] * 0.3 + random_color(rng, 150, 255) * 0.7).astype(np.uint8)
            ink = np.zeros((ph, w), np.uint8)
            f = Font(rng, ph / _u(rng, 2.5, 5), "any", bold=rng.random() < 0.5)
            for i in range(max(1, int(ph / (f.height * 1.3)))):
                f.line(ink, f.fill_line(rng, int(w * _u(rng, 0.3, 0.9))), int(w * 0.05), int(i * f.height * 1.3))
            roi = tex[y0:y0 + ph]
            roi[:] = (roi * (1 - ink[..., None] / 255.0)).astype(np.uint8)
        alpha = rounded_alpha(h, w, int(s * _u(rng, 0.02, 0.08)))
        glare = _u(rng, 0.1, 0.4) if rng.random() < 0.3 else 0.0
    else:
        tex = np.empty((h, w, 3), np.uint8)
        bezel = int(s * _u(rng, 0.02, 0.1))
        tex[:] = (random_color(rng, 0, 50) if rng.random() < 0.8 else random_color(rng, 170, 240)).astype(np.uint8)
        ih, iw = max(1, h - 2 * bezel), max(1, w - 2 * bezel)
        screen = picture(rng, ih, iw).astype(np.float32) * _u(rng, 0.9, 1.25) + _u(rng, 0, 25)  # emitted light
        screen = np.clip(screen * np.array([_u(rng, 1.0, 1.15), 1, _u(rng, 0.85, 1.0)]), 0, 255).astype(np.uint8)
        if rng.random() < 0.3:  # status bar of a phone / window title bar
            bh = max(1, int(ih * _u(rng, 0.03, 0.07)))
            screen[:bh] = random_color(rng, 0, 255).astype(np.uint8)
        tex[bezel:bezel + ih, bezel:bezel + iw] = screen[:h - 2 * bezel, :w - 2 * bezel]
        if rng.random() < 0.5:
            alpha = rounded_alpha(h, w, int(s * _u(rng, 0.02, 0.1)))
        glare = _u(rng, 0.1, 0.5) if rng.random() < 0.5 else 0.0
    tex = shade_texture(rng, tex, _u(rng, 0, 0.3), glare)
    return tex, alpha


def clutter(rng, img: np.ndarray) -> None:
    """Unlabelled desk objects drawn in place: pens, round things (cups, coins), dark slabs (a phone face
    down) — edges and shapes the detector must learn to ignore. (No plain coloured rectangles: at low
    resolution they are too close to a card to be fair negatives.)"""
    h, w = img.shape[:2]
    s = max(h, w)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["pen", "round", "slab"], p=[0.45, 0.4, 0.15])
        c = rng.uniform([0, 0], [w, h])
        ang = _u(rng, 0, np.pi)
        if kind == "pen":
            ln, wd = s * _u(rng, 0.15, 0.5), s * _u(rng, 0.006, 0.02)
        elif kind == "slab":
            ln, wd = s * _u(rng, 0.1, 0.3), 0
            wd = ln * _u(rng, 0.45, 0.55)
        if kind == "round":
            r = int(s * _u(rng, 0.02, 0.12))
            drop_shadow(rng, img, np.array([c + [-r, -r], c + [r, -r], c + [r, r], c + [-r, r]]), _u(rng, 0.2, 0.5),
                        r * 0.3, rng.normal(0, r * 0.1, 2))
            col = random_color(rng, 0, 255)
            cv2.circle(img, tuple(np.round(c).astype(int)), r, col.tolist(), -1, cv2.LINE_AA)
            cv2.circle(img, tuple(np.round(c).astype(int)), max(1, int(r * _u(rng, 0.6, 0.9))),
                       (col * _u(rng, 0.5, 1.2)).clip(0, 255).tolist(), -1, cv2.LINE_AA)
            continue
        d, n = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        quad = np.array([c - d * ln / 2 - n * wd / 2, c + d * ln / 2 - n * wd / 2, c + d * ln / 2 + n * wd / 2,
                         c - d * ln / 2 + n * wd / 2])
        drop_shadow(rng, img, quad, _u(rng, 0.2, 0.5), max(wd, 2) * 0.3, rng.normal(0, max(wd, 2) * 0.2, 2))
        col = random_color(rng, 0, 60) if kind == "slab" else random_color(rng, 0, 255)
        cv2.fillConvexPoly(img, np.round(quad * 16).astype(np.int32), col.tolist(), cv2.LINE_AA, shift=4)
