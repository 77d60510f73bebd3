"""Backgrounds (natural-photo crops mixed with procedural desk/wood/fabric/stone textures) and the
pictures printed on photos, cards and screens. All functions take an ``np.random.Generator`` and return
BGR uint8; they are deterministic given the generator state."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .sources import active_split, picture_sources, pool


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def fractal_noise(rng, h: int, w: int, base: float = 4.0, octaves: int = 5, gain: float = 0.5) -> np.ndarray:
    """Multi-octave value noise in about [0, 1], float32 (h, w); ``base`` = cells along the long side.
    Octaves are summed coarse to fine at a resolution just above each octave's frequency, so the cost
    is about one full-size resize."""
    long = max(h, w)
    acc, tot, amp, cells = None, 0.0, 1.0, base
    cells = min(cells, max(1.0, long / 2))  # at least one octave, even for a tiny image
    for _ in range(octaves):
        if cells > long / 2 and acc is not None:
            break
        gh = max(2, int(round(cells * h / long)) + 2)
        gw = max(2, int(round(cells * w / long)) + 2)
        grid = rng.random((gh, gw), dtype=np.float32)
        if acc is None:
            acc = grid
        else:
            th, tw = min(h, gh * 4), min(w, gw * 4)
            acc = cv2.resize(acc, (tw, th), interpolation=cv2.INTER_CUBIC)
            acc += amp * cv2.resize(grid, (tw, th), interpolation=cv2.INTER_CUBIC)
        tot += amp
        amp *= gain
        cells *= 2
    return cv2.resize(acc, (w, h), interpolation=cv2.INTER_CUBIC) / tot


def soft_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; a wide one is done on a downscaled copy (same look, a fraction of the cost)."""
    if sigma <= 0.3:
        return img
    if sigma <= 3:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    h, w = img.shape[:2]
    k = sigma / 1.5
    small = cv2.resize(img, (max(1, round(w / k)), max(1, round(h / k))), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), 1.5), (w, h), interpolation=cv2.INTER_LINEAR)


def random_color(rng, lo: int = 0, hi: int = 255) -> np.ndarray:
    return rng.integers(lo, hi + 1, 3).astype(np.float32)


def muted_color(rng, lo: float = 15, hi: float = 245) -> np.ndarray:
    """Colours of real surfaces: mostly greys/whites/blacks and desaturated tints, sometimes vivid."""
    v = rng.uniform(lo, hi)
    sat = rng.uniform(0, 0.35) if rng.random() < 0.8 else rng.uniform(0.35, 0.9)
    c = rng.uniform(0, 255, 3)
    return np.clip(v + sat * (c - c.mean()), 0, 255).astype(np.float32)


def color_matrix(rng, hue_deg: float, sat: float) -> np.ndarray:
    """3x3 BGR matrix: rotate hue by ``hue_deg`` around the grey axis and scale saturation by ``sat``."""
    a = math.radians(hue_deg)
    k = np.ones((3, 3), np.float32) / 3
    rot = (math.cos(a) * (np.eye(3) - k) + math.sin(a) / math.sqrt(3) *
           np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], np.float32) + k)
    return (k + sat * (rot - k)).astype(np.float32)


def jitter_colors(rng, img: np.ndarray, hue: float = 25, sat=(0.6, 1.4), gamma=(0.7, 1.4)) -> np.ndarray:
    """Hue rotation, saturation scale, per-channel gain and gamma (one LUT), as photos vary in print."""
    m = color_matrix(rng, _u(rng, -hue, hue), _u(rng, *sat)) * rng.uniform(0.85, 1.15, (3, 1)).astype(np.float32)
    out = cv2.transform(img, m)
    g = _u(rng, *gamma)
    lut = np.clip(255 * (np.arange(256) / 255) ** g, 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def _gray3(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)


def _tint_gray(rng, img: np.ndarray) -> np.ndarray:
    """Colourise a grey picture as a two-tone (sepia, blue hour, ...) so grey sources add colour variety."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None] / 255
    # Muted tones near the grey axis: sepia, cold blue, faded green... not saturated neon.
    tone = random_color(rng, 0, 255) - 127.5
    dark = np.clip(_u(rng, 0, 70) + tone * _u(rng, 0, 0.25), 0, 255)
    light = np.clip(_u(rng, 170, 255) + tone * _u(rng, 0, 0.3), 0, 255)
    return np.clip(dark + g * (light - dark), 0, 255).astype(np.uint8)


def crop_resize(rng, src: np.ndarray, h: int, w: int, zoom=(1.0, 3.0)) -> np.ndarray:
    """A random crop of ``src`` with the aspect of (h, w), magnified ``zoom`` times relative to the
    largest such crop, flipped at random, resized to (h, w)."""
    sh, sw = src.shape[:2]
    cw = sw / _u(rng, *zoom)
    ch = cw * h / w
    if ch > sh:
        ch = sh / _u(rng, *zoom)
        cw = ch * w / h
    cw, ch = max(4, min(sw, int(cw))), max(4, min(sh, int(ch)))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    crop = src[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if cw > w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp)


def natural(rng, h: int, w: int, textures: bool = True, zoom=(1.0, 3.0)) -> np.ndarray:
    """A crop of a bundled photo (or grey texture), with random colour changes."""
    srcs = picture_sources(textures)
    src = _gray3(srcs[int(rng.integers(len(srcs)))])
    if rng.random() < 0.25:  # any orientation: upside-down scenes are still scenes
        src = np.rot90(src, int(rng.integers(1, 4)))
    img = crop_resize(rng, src, h, w, zoom)
    gray = bool(np.abs(img[..., 0].astype(np.int16) - img[..., 2]).mean() < 2)
    if gray and rng.random() < 0.6:
        img = _tint_gray(rng, img)
    return jitter_colors(rng, img)


def _colorize(rng, t: np.ndarray, c0, c1) -> np.ndarray:
    """Map t in [0, 1] (h, w) onto the colour ramp c0 -> c1 through a LUT (fast, no float images)."""
    t8 = cv2.convertScaleAbs(t, alpha=255.0)
    x = np.linspace(0, 1, 256, dtype=np.float32)[:, None]
    lut = np.clip(np.asarray(c0, np.float32) + x * (np.asarray(c1, np.float32) - c0), 0, 255)
    return cv2.LUT(cv2.merge([t8, t8, t8]), lut.astype(np.uint8)[:, None, :])


def wood(rng, h, w):
    """Wood grain: distorted stripes along one axis, sometimes split into planks."""
    if rng.random() < 0.5:  # grain along the other axis
        return np.ascontiguousarray(np.rot90(wood_(rng, w, h)))
    return wood_(rng, h, w)


_WOODS = np.array([[150, 190, 220], [90, 140, 190], [60, 100, 150], [40, 60, 90], [50, 80, 150], [110, 130, 140]],
                  np.float32)  # BGR: birch, oak, pine-stained, walnut, cherry, grey-washed


def wood_(rng, h, w):
    """Grain runs along y (the planks' length): wavy lines from noise stretched along y."""
    n = cv2.resize(fractal_noise(rng, max(4, h // 10), w, base=4, octaves=4), (w, h), interpolation=cv2.INTER_LINEAR)
    fine = cv2.resize(fractal_noise(rng, max(4, h // 20), w, base=_u(rng, 40, 120), octaves=2), (w, h))
    xs = np.linspace(0, 1, w, dtype=np.float32)[None, :] * _u(rng, 30, 120)
    t = 0.5 + 0.5 * np.sin(xs + n * _u(rng, 6, 20))
    t = 0.45 * t ** _u(rng, 1, 3) + 0.35 * fine + 0.2 * n
    base = _WOODS[int(rng.integers(len(_WOODS)))] * _u(rng, 0.75, 1.15) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    img = _colorize(rng, t, base * _u(rng, 0.55, 0.8), np.minimum(base * _u(rng, 1.1, 1.3), 255))
    if rng.random() < 0.6:  # plank seams, planks a little different in tone
        step = max(8, int(w / rng.uniform(1.5, 6)))
        x0 = int(rng.integers(0, step))
        for x in range(x0 - step, w, step):
            sl = img[:, max(0, x):max(0, x + step)]
            k = _u(rng, 0.85, 1.12)
            if sl.size:
                sl[:] = cv2.convertScaleAbs(sl, alpha=k)
            if x > 0:
                cv2.line(img, (x, 0), (x, h), tuple(float(v) * 0.45 for v in base), max(1, w // 500))
    return img


def fabric(rng, h, w):
    """Woven cloth / carpet: a fine periodic weave over low-frequency colour variation."""
    f = _u(rng, 0.3, 1.2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = _u(rng, 0, math.pi)
    u, v = xx * math.cos(a) + yy * math.sin(a), -xx * math.sin(a) + yy * math.cos(a)
    weave = 0.5 + 0.25 * (np.sin(u * f) + np.sin(v * f * _u(rng, 0.7, 1.3)))
    t = 0.55 * weave + 0.45 * fractal_noise(rng, h, w, base=_u(rng, 2, 8), octaves=4)
    c = muted_color(rng, 10, 230)
    return _colorize(rng, t, c * 0.55, np.minimum(c * 1.3 + 10, 255))


def desk(rng, h, w):
    """Laminate / painted desk or wall: nearly uniform colour with mottling and fine speckle."""
    c = muted_color(rng)
    t = fractal_noise(rng, h, w, base=_u(rng, 2, 6), octaves=8, gain=_u(rng, 0.5, 0.75))
    amp = _u(rng, 0.05, 0.25)
    return _colorize(rng, t, c * (1 - amp) * rng.uniform(0.9, 1.1, 3), c * (1 + amp) * rng.uniform(0.9, 1.1, 3))


def stone(rng, h, w):
    """Marble / granite: turbulent veins or speckled grains."""
    n = fractal_noise(rng, h, w, base=_u(rng, 2, 5), octaves=6)
    if rng.random() < 0.5:
        xs = np.linspace(0, _u(rng, 3, 12), w, dtype=np.float32)[None, :]
        t = np.abs(np.sin(xs + n * _u(rng, 6, 14))) ** 0.3
    else:
        t = 0.5 * n + 0.5 * fractal_noise(rng, h, w, base=max(h, w) / _u(rng, 3, 8), octaves=2)
    return _colorize(rng, t, muted_color(rng, 0, 120), muted_color(rng, 120, 255))


def bokeh(rng, h, w):
    """Out-of-focus lights: a dark or colourful gradient with blurred discs (cafe, street at night)."""
    img = _colorize(rng, fractal_noise(rng, h, w, base=2, octaves=2), random_color(rng, 0, 120),
                    random_color(rng, 40, 220))
    lights = np.zeros((h, w, 3), np.uint8)
    s = max(h, w)
    for _ in range(int(rng.integers(10, 60))):
        r = int(s * _u(rng, 0.01, 0.08))
        cv2.circle(lights, (int(rng.integers(w)), int(rng.integers(h))), r, random_color(rng, 60, 255).tolist(), -1)
    lights = soft_blur(lights, s * _u(rng, 0.004, 0.02))
    return cv2.addWeighted(img, _u(rng, 0.3, 1), lights.astype(np.uint8), _u(rng, 0.3, 0.8), 0)


PROCEDURAL = (wood, fabric, desk, stone, wood, desk, bokeh)  # repeats = weights


def _blend(rng, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Blend two images through a soft random mask (irregular seams, not rectangles)."""
    h, w = a.shape[:2]
    m = fractal_noise(rng, h, w, base=_u(rng, 1.5, 4), octaves=3)
    m = np.clip((m - _u(rng, 0.35, 0.65)) * _u(rng, 3, 12) + 0.5, 0, 1)[..., None]
    return (a * m + b * (1 - m)).astype(np.uint8)


def background(rng, h: int, w: int, work: int = 480) -> np.ndarray:
    """A natural-looking scene: photo crops, procedural surfaces or both; sometimes defocused.
    Built at most ``work`` px on the long side, then resized (the model sees it at 224-320 px anyway)."""
    s = min(1.0, work / max(h, w))
    if s < 1:
        small = background(rng, max(8, round(h * s)), max(8, round(w * s)), work)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    r = rng.random()
    if r < 0.5:
        img = natural(rng, h, w)
        if rng.random() < 0.25:
            img = _blend(rng, img, natural(rng, h, w))
    elif r < 0.8:
        img = PROCEDURAL[int(rng.integers(len(PROCEDURAL)))](rng, h, w)
        if rng.random() < 0.3:
            img = _blend(rng, img, natural(rng, h, w))
    else:  # a surface under a scene's light/colour: multiply a texture into a photo
        img = natural(rng, h, w).astype(np.float32)
        tex = (desk, fabric, stone)[int(rng.integers(3))](rng, h, w).astype(np.float32)  # no stripes
        img = np.clip(img * (0.4 + 0.6 * tex / max(float(tex.mean()), 1.0)), 0, 255).astype(np.uint8)
    if rng.random() < 0.35:  # shallow depth of field behind the objects
        img = soft_blur(img, max(h, w) * _u(rng, 0.002, 0.01))
    return img


def face_portrait(rng, h: int, w: int) -> np.ndarray:
    """A (blurry, tiny-source) portrait: an LFW face over a coloured studio backdrop."""
    faces = pool().faces
    if len(faces) == 0 or active_split() == "heldout":  # the faces are a training source
        return natural(rng, h, w, textures=False)
    f = faces[int(rng.integers(len(faces)))]
    img = crop_resize(rng, _gray3(f), h, w, zoom=(1.0, 1.3))
    img = soft_blur(img, max(h, w) / 250)  # the cubic upscale is smooth already; just soften it
    return _tint_gray(rng, img) if rng.random() < 0.6 else img


def detail(img: np.ndarray) -> float:
    """High-frequency contrast of a picture (std of a 64-px thumbnail minus its blur): near 0 for a
    blank, gradient or featureless crop, 5-30 for real scenes."""
    t = cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA).astype(np.float32)
    return float(np.std(t - cv2.GaussianBlur(t, (0, 0), 2)))


def picture(rng, h: int, w: int) -> np.ndarray:
    """What a printed photo / card / screen shows: mostly natural photos, sometimes portraits,
    black-and-white prints, night scenes. Featureless crops (black sky, blank wall) are redrawn: a
    blank print is not what the class means."""
    for _ in range(4):
        r = rng.random()
        if r < 0.85:
            img = natural(rng, h, w, textures=rng.random() < 0.15, zoom=(1.0, 2.5))
        elif r < 0.92:
            img = face_portrait(rng, h, w)
        elif r < 0.95:
            img = bokeh(rng, h, w)
        else:
            img = _blend(rng, natural(rng, h, w, textures=False), natural(rng, h, w, textures=False))
        if detail(img) >= 3.0:
            break
    if rng.random() < 0.12:  # black-and-white print
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return img
