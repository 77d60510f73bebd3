"""Photometric effects: shadows next to objects, lighting gradients, glare, colour casts, brightness and
contrast, blur, sensor noise and JPEG re-encoding. All take an ``np.random.Generator`` and work on BGR
uint8 images; heavy full-image work is done once, in ``camera_pipeline``."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from .scenes import fractal_noise, soft_blur


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def _roi(poly: np.ndarray, pad: float, w: int, h: int):
    x0, y0 = np.floor(poly.min(0) - pad).astype(int)
    x1, y1 = np.ceil(poly.max(0) + pad).astype(int)
    return max(0, x0), max(0, y0), min(w, x1 + 1), min(h, y1 + 1)


def drop_shadow(rng, img: np.ndarray, quad: np.ndarray, strength: float, blur: float, offset) -> None:
    """Darken ``img`` in place under a blurred copy of ``quad`` shifted by ``offset`` (a soft shadow that
    the object, composited afterwards, mostly covers: what shows is the rim on the side away from the
    light). ``strength`` in [0, 1] is the darkening at the shadow's core."""
    h, w = img.shape[:2]
    q = quad + np.asarray(offset, np.float64)
    x0, y0, x1, y1 = _roi(np.vstack([q, quad]), 3 * blur + 2, w, h)
    if x1 <= x0 or y1 <= y0:
        return
    k = max(1.0, blur / 1.5)  # draw the (soft) shadow at reduced resolution
    sw, sh = max(1, round((x1 - x0) / k)), max(1, round((y1 - y0) / k))
    m = np.zeros((sh, sw), np.float32)
    cv2.fillConvexPoly(m, np.round((q - [x0, y0]) / k * 16).astype(np.int32), 1.0, cv2.LINE_AA, shift=4)
    if blur > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), blur / k)
    if k > 1:
        m = cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    g = 1 - strength * m
    roi = img[y0:y1, x0:x1]
    roi[:] = cv2.multiply(roi.astype(np.float32), cv2.merge([g, g, g])).astype(np.uint8)


def shade_texture(rng, tex: np.ndarray, strength: float, glare: float = 0.0) -> np.ndarray:
    """Lighting across one object (texture space): a linear gradient plus an optional soft specular
    highlight (glossy photo / screen)."""
    th, tw = tex.shape[:2]
    a = _u(rng, 0, 2 * math.pi)
    gy, gx = np.linspace(-0.5, 0.5, th, dtype=np.float32)[:, None], np.linspace(-0.5, 0.5, tw, dtype=np.float32)
    g = (1 + strength * (gx * math.cos(a) + gy * math.sin(a))).astype(np.float32)
    out = cv2.multiply(tex, cv2.merge([g, g, g]), dtype=cv2.CV_8U)
    if glare > 0:
        spot = np.zeros((max(2, th // 4), max(2, tw // 4)), np.float32)
        c = (int(rng.integers(spot.shape[1])), int(rng.integers(spot.shape[0])))
        ax = (max(1, int(spot.shape[1] * _u(rng, 0.1, 0.5))), max(1, int(spot.shape[0] * _u(rng, 0.05, 0.3))))
        cv2.ellipse(spot, c, ax, _u(rng, 0, 180), 0, 360, 1.0, -1)
        spot = cv2.resize(soft_blur(spot, max(ax) * 0.5 + 1), (tw, th)) * (255 * glare)
        out = cv2.add(out, cv2.merge([spot, spot, spot]), dtype=cv2.CV_8U)
    return out


def gain_map(rng, h: int, w: int, strength: float) -> np.ndarray:
    """Scene lighting as a float32 multiplier at 1/8 of (h, w) (it is smooth): vignetting, a directional gradient, a light pool,
    and sometimes soft cast shadows (a hand or phone between lamp and desk)."""
    sh, sw = max(4, h // 8), max(4, w // 8)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    xx, yy = xx / sw - 0.5, yy / sh - 0.5
    g = np.ones((sh, sw), np.float32)
    if rng.random() < 0.5:  # vignetting
        g *= 1 - _u(rng, 0, 0.6) * (xx * xx + yy * yy) * 2
    a = _u(rng, 0, 2 * math.pi)
    g *= 1 + strength * (xx * math.cos(a) + yy * math.sin(a))
    if rng.random() < 0.3:  # a pool of light
        cx, cy, r = _u(rng, -0.5, 0.5), _u(rng, -0.5, 0.5), _u(rng, 0.2, 0.8)
        g *= 1 + _u(rng, 0.1, 0.4) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r))
    if rng.random() < 0.25:  # cast shadows: blurred random polygons
        m = np.zeros((sh, sw), np.float32)
        for _ in range(int(rng.integers(1, 3))):
            c = rng.uniform([0, 0], [sw, sh])
            pts = c + rng.normal(0, 0.25, (int(rng.integers(3, 7)), 2)) * [sw, sh]
            cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1.0)
        m = soft_blur(m, max(sh, sw) * _u(rng, 0.01, 0.06) + 0.5)
        g *= 1 - _u(rng, 0.15, 0.5) * m
    if rng.random() < 0.3:  # uneven, blotchy light
        g *= 1 + _u(rng, 0.05, 0.2) * (fractal_noise(rng, sh, sw, base=3, octaves=2) - 0.5)
    return np.clip(g, 0.15, 2.0)


_NOISE_STD = 24.0
_NOISE_SIZE = 1600  # >= the largest image side, so every crop is one contiguous-row slice


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of Gaussian noise (std 24 around 128, uint8; fixed seed): drawing ~1 M normals per image costs
    more than the rest of the camera model, and random crops of a bank are indistinguishable. Part of
    it has the same value in all channels (luminance noise), part is independent (chroma noise)."""
    r = np.random.default_rng(20240601)
    ind = r.standard_normal((_NOISE_SIZE, _NOISE_SIZE, 3), dtype=np.float32)
    lum = r.standard_normal((_NOISE_SIZE, _NOISE_SIZE, 1), dtype=np.float32)
    n = (0.6 * ind + 0.8 * lum) * _NOISE_STD
    return np.clip(n + 128, 0, 255).astype(np.uint8)


def noise_patch(rng, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 noise around 128: a random crop of the bank (tiled if the image is larger)."""
    bank = _noise_bank()
    if h > _NOISE_SIZE or w > _NOISE_SIZE:  # larger than the bank: wrap around (slow, rare)
        reps = (h // _NOISE_SIZE + 1, w // _NOISE_SIZE + 1, 1)
        return np.tile(bank, reps)[:h, :w]
    y, x = int(rng.integers(0, _NOISE_SIZE - h + 1)), int(rng.integers(0, _NOISE_SIZE - w + 1))
    return bank[y:y + h, x:x + w]


def camera_pipeline(rng, img: np.ndarray, cfg) -> np.ndarray:
    """Everything the scene light, lens, sensor and encoder do to the whole picture, in that order:
    lighting gains + colour cast + brightness/contrast, Gaussian blur, sensor noise, JPEG."""
    h, w = img.shape[:2]
    cast = np.exp(rng.normal(0, cfg.color_cast, 3)).astype(np.float32)  # white balance / tinted light
    contrast = math.exp(_u(rng, -1, 1) * math.log(cfg.contrast))
    bright = _u(rng, -1, 1) * cfg.brightness * 255
    mean = float(np.mean(cv2.mean(img)[:3]))
    m = np.hstack([np.diag(cast * contrast), (mean * (1 - contrast) + bright) * np.ones((3, 1))]).astype(np.float32)
    out = cv2.transform(img, m)  # uint8 in, saturated uint8 out
    g = gain_map(rng, h, w, _u(rng, 0, cfg.light_gradient))
    g8 = cv2.resize(np.clip(g * 100, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.multiply(out, cv2.merge([g8, g8, g8]), scale=1 / 100)  # all-uint8: OpenCV's fast path
    sigma = _u(rng, 0, cfg.blur_sigma) if rng.random() < 0.7 else 0.0
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    ns = _u(rng, 0, cfg.noise_sigma) if rng.random() < 0.8 else 0.0
    if ns > 0.5:
        k = ns / _NOISE_STD  # the bank is stored as uint8 around 128: uint8+uint8 is OpenCV's fast path
        out = cv2.addWeighted(out, 1.0, np.ascontiguousarray(noise_patch(rng, h, w)), k, -128.0 * k)
    if rng.random() < cfg.jpeg_p:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        out = cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)
    return out
