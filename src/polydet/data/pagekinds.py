"""Page kinds of generator 2.0 (``page`` class: light paper dominated by text, tables or drawings).

Real typeset pages (PDF manuals of the active source split, printed onto tinted paper), CJK text,
printed slides, pages carrying photographs (still mostly text: a page with figures is a page), coloured
paper, and generator 1.0's rendered layouts. ``page_texture_v2(rng, h, w) -> (BGR uint8, alpha | None)``.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from . import objects
from .effects import shade_texture
from .pages import paper, render_page
from .scenes import picture
from .sources import active_split, extra
from .text import Font, random_word

# CJK text: common Han characters, kana and Hangul (the font, WenQuanYi Micro Hei, draws all three).
_HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 2500)]
_KANA = [chr(c) for c in range(0x3041, 0x3097)] + [chr(c) for c in range(0x30A1, 0x30FB)]
_HANGUL = [chr(c) for c in range(0xAC00, 0xAC00 + 800)]
_CJK_PUNCT = ["\u3002", "\u3001", "\uFF0C", "\u300C", "\u300D"]


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def fit_onto_paper(rng, src: np.ndarray, h: int, w: int) -> np.ndarray:
    """A page image placed on paper of (h, w): turned a quarter when that fits the shape better, scaled
    to fill it (a little cropped or margined, never stretched by more than 8 %), white multiplied into
    the paper's tint so the ink stays ink."""
    if (src.shape[1] > src.shape[0]) != (w > h) and rng.random() < 0.85:
        src = np.ascontiguousarray(np.rot90(src, 1 if rng.random() < 0.5 else 3))
    sh, sw = src.shape[:2]
    sx, sy = w / sw, h / sh
    s = max(sx, sy) if max(sx, sy) / min(sx, sy) < 1.15 else min(sx, sy)  # crop a margin or add one
    ax, ay = s * _u(rng, 0.96, 1.04), s * _u(rng, 0.96, 1.04)
    nw, nh = max(1, round(sw * ax)), max(1, round(sh * ay))
    img = cv2.resize(src, (nw, nh), interpolation=cv2.INTER_AREA if ax < 1 else cv2.INTER_LINEAR)
    canvas = np.full((h, w, 3), 255, np.uint8)
    x0, y0 = (w - nw) // 2, (h - nh) // 2
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x0 + nw), min(h, y0 + nh)
    canvas[cy0:cy1, cx0:cx1] = img[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return cv2.multiply(canvas, paper(rng, h, w), scale=1 / 255)


def real_page(rng, h: int, w: int) -> np.ndarray | None:
    """A page of a real PDF manual of the active split (None when the split has no pages)."""
    pages = extra().pages
    if not pages:
        return None
    return fit_onto_paper(rng, pages[int(rng.integers(len(pages)))], h, w)


@functools.lru_cache(maxsize=8)
def _cjk_font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _cjk_line(rng, n: int, script: str) -> str:
    chars = {"han": _HAN, "ja": _HAN[:800] + _KANA * 3, "ko": _HANGUL}[script]
    idx = rng.integers(0, len(chars), n)
    out = [chars[i] for i in idx]
    for k in range(int(rng.integers(0, 3))):
        out[int(rng.integers(n))] = _CJK_PUNCT[int(rng.integers(len(_CJK_PUNCT)))]
    return "".join(out)


def cjk_page(rng, h: int, w: int) -> np.ndarray | None:
    """Chinese, Japanese or Korean text (title, paragraphs, sometimes vertical-free ruled boxes)."""
    fonts = extra().fonts
    if not fonts:
        return None
    from PIL import Image, ImageDraw

    script = ("han", "ja", "ko")[int(rng.integers(3))]
    size = max(6, int(h / _u(rng, 35, 70)))
    font, big = _cjk_font(fonts[0], size), _cjk_font(fonts[0], int(size * _u(rng, 1.5, 2.5)))
    ink = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(ink)
    m, y = int(w * _u(rng, 0.06, 0.14)), int(h * _u(rng, 0.05, 0.1))
    per_line = max(1, (w - 2 * m) // size)
    d.text((m, y), _cjk_line(rng, max(2, per_line // 3), script), fill=255, font=big)
    y += int(big.size * 1.8)
    lead = _u(rng, 1.3, 1.8)
    while y + size < h - int(h * 0.06):
        n = per_line if rng.random() < 0.85 else int(per_line * _u(rng, 0.2, 0.9))
        indent = size * 2 if rng.random() < 0.15 else 0
        d.text((m + indent, y), _cjk_line(rng, max(1, n - indent // size), script), fill=255, font=font)
        y += int(size * lead) + (size if rng.random() < 0.1 else 0)
    a = np.asarray(ink, np.float32)[..., None] * (1 / 255)
    pg = paper(rng, h, w).astype(np.float32)
    return (pg * (1 - a) + rng.uniform(0, 50, 3) * a).astype(np.uint8)


def slide(rng, h: int, w: int) -> np.ndarray:
    """A printed presentation slide: light background, a coloured title band, bullet lines, maybe a
    picture or a bar chart (the text still dominates)."""
    bg = np.array([_u(rng, 225, 255)] * 3) - rng.uniform(0, 25, 3)
    page = np.empty((h, w, 3), np.uint8)
    page[:] = bg.astype(np.uint8)
    band = int(h * _u(rng, 0.1, 0.2))
    col = rng.uniform(40, 200, 3)
    page[:band] = col.astype(np.uint8)
    ink = np.zeros((h, w), np.uint8)
    title = Font(rng, band * _u(rng, 0.35, 0.55), "any", bold=True)
    title.line(ink[:band], [random_word(rng, caps=1) for _ in range(int(rng.integers(2, 5)))],
               int(w * 0.05), max(0, (band - title.height) // 2))
    body = Font(rng, h / _u(rng, 14, 24), "any")
    text_w = int(w * (0.55 if rng.random() < 0.4 else 0.88))
    y = band + body.height
    while y + body.height < h * 0.92:
        cv2.circle(ink, (int(w * 0.06), y + body.height // 2), max(1, body.size // 6), 255, -1)
        body.line(ink, body.fill_line(rng, int(text_w * _u(rng, 0.4, 0.95))), int(w * 0.09), y)
        y += int(body.height * _u(rng, 1.5, 2.2))
    a = ink.astype(np.float32)[..., None] * (1 / 255)
    fg = np.array([255.0] * 3) if rng.random() < 0.3 else rng.uniform(0, 60, 3)
    txt = np.where(np.arange(h)[:, None, None] < band, np.full(3, 255.0), fg)
    page = (page * (1 - a) + txt * a).astype(np.uint8)
    if text_w < w * 0.7:  # the right part: a picture or a chart
        x0, y0, x1, y1 = int(w * 0.66), int(band + h * 0.08), int(w * 0.95), int(h * 0.85)
        if x1 - x0 > 4 and y1 - y0 > 4:
            page[y0:y1, x0:x1] = picture(rng, y1 - y0, x1 - x0) if rng.random() < 0.5 else bg.astype(np.uint8)
            if rng.random() < 0.5:
                n = int(rng.integers(3, 7))
                for i in range(n):
                    bh = int((y1 - y0) * _u(rng, 0.2, 0.9))
                    bx = x0 + int((x1 - x0) * (i + 0.2) / n)
                    cv2.rectangle(page, (bx, y1 - bh), (bx + int((x1 - x0) * 0.6 / n), y1),
                                  rng.uniform(30, 220, 3).tolist(), -1)
    return page


def photo_page(rng, h: int, w: int) -> np.ndarray:
    """A text page carrying one or two photographs (a magazine or report page); the pictures cover at
    most ~35 % of it, so text dominates and the class stays ``page``."""
    page = real_page(rng, h, w) if rng.random() < 0.5 else None
    if page is None:
        page = render_page(rng, h, w)
    budget = 0.35 * h * w
    for _ in range(int(rng.integers(1, 3))):
        pw, ph = int(w * _u(rng, 0.25, 0.6)), int(h * _u(rng, 0.12, 0.3))
        if pw * ph > budget or pw < 8 or ph < 8:
            continue
        budget -= pw * ph
        x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        page[y:y + ph, x:x + pw] = picture(rng, ph, pw)
    return page


def tint_paper(rng, page: np.ndarray) -> np.ndarray:
    """Coloured paper (pastel yellow, pink, blue, green): the white multiplied by a light colour."""
    c = 255 - rng.uniform(10, 70, 3) * (rng.random(3) < 0.7)
    return cv2.multiply(page, np.full_like(page, 1) * c.astype(np.uint8), scale=1 / 255)


# (kind, weight under the train split, weight under the held-out split): the held-out set's pages are
# mostly its own manuals, so it measures pages the generator never rendered.
KINDS = (("rendered", 0.36, 0.0), ("real", 0.34, 0.75), ("cjk", 0.08, 0.03), ("slide", 0.07, 0.07),
         ("photos", 0.15, 0.15))


def page_texture_v2(rng, h: int, w: int):
    col = 2 if active_split() == "heldout" else 1
    p = np.array([k[col] for k in KINDS])
    kind = KINDS[int(rng.choice(len(KINDS), p=p / p.sum()))][0]
    if kind == "rendered":
        return objects.page_texture(rng, h, w)
    tex = {"real": real_page, "cjk": cjk_page, "slide": slide, "photos": photo_page}[kind](rng, h, w)
    if tex is None:  # the split lacks that source
        return objects.page_texture(rng, h, w)
    if rng.random() < 0.1:
        tex = tint_paper(rng, tex)
    return shade_texture(rng, tex, _u(rng, 0, 0.35), glare=_u(rng, 0, 0.25) if rng.random() < 0.1 else 0), None
