"""Rendered paper pages: articles, letters, invoices, book pages, spreadsheets, notes and receipts on
paper with yellowing, mottling, folds and stains. ``render_page(rng, h, w)`` -> BGR uint8 (h, w, 3).

Text and line drawings go onto a single-channel ink mask (cheap); colour elements (charts, photos,
highlighter, stains) are drawn onto the composited page afterwards."""

from __future__ import annotations

import cv2
import numpy as np

from . import figures
from .scenes import _colorize, fractal_noise
from .text import Font, random_word

# (name, weight, columns choices, body line px as a fraction of page height, margin fraction of width)
LAYOUTS = [("article", 0.32, (1, 1, 2, 2, 3)), ("letter", 0.14, (1,)), ("form", 0.14, (1,)),
           ("book", 0.12, (1,)), ("sheet", 0.1, (1,)), ("notes", 0.08, (1,)), ("receipt", 0.1, (1,))]


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def paper(rng, h: int, w: int) -> np.ndarray:
    """Paper colour (white, cream, yellowed, grey recycled, rarely pastel) with mottling."""
    v = _u(rng, 200, 253)
    r = rng.random()
    if r < 0.8:  # white to yellowed: blue drops most, then green
        y = _u(rng, 0, 1) ** 2
        c = np.array([v - y * 40, v - y * 12, v], np.float32)
    elif r < 0.94:  # grey / recycled
        c = np.full(3, v - _u(rng, 0, 20), np.float32) + rng.uniform(-5, 5, 3)
    else:  # light pastel paper
        c = v - rng.uniform(0, 30, 3).astype(np.float32)
    t = fractal_noise(rng, h, w, base=_u(rng, 2, 6), octaves=7, gain=_u(rng, 0.45, 0.7))
    a = _u(rng, 0.01, 0.06)
    return _colorize(rng, t, c * (1 - a), np.minimum(c * (1 + a), 255))


class Writer:
    """Flows blocks top-to-bottom through columns inside the page margins."""

    def __init__(self, rng, ink, box, ncols: int, gutter: int):
        self.rng, self.ink = rng, ink
        x0, y0, x1, y1 = box
        cw = (x1 - x0 - gutter * (ncols - 1)) / ncols
        self.cols = [(int(x0 + i * (cw + gutter)), int(x0 + i * (cw + gutter) + cw)) for i in range(ncols)]
        self.y0, self.y1 = y0, y1
        self.col, self.y = 0, y0
        self.overlays: list = []  # (function, args) drawn onto the colour page after compositing

    @property
    def x(self):
        return self.cols[self.col][0]

    @property
    def width(self):
        return self.cols[self.col][1] - self.cols[self.col][0]

    def room(self, hgt: int) -> bool:
        """True if ``hgt`` px fit in this column, moving to the next one if needed."""
        if self.y + hgt <= self.y1:
            return True
        if self.col + 1 < len(self.cols):
            self.col, self.y = self.col + 1, self.y0
            return self.y + hgt <= self.y1
        return False

    def paragraph(self, font: Font, lead: float, nlines: int, align="justify", indent=0, value=255) -> bool:
        lh = int(font.height * lead)
        for i in range(nlines):
            if not self.room(lh):
                return False
            ind = indent if i == 0 else 0
            last = i == nlines - 1
            width = int(self.width * (_u(self.rng, 0.2, 0.9) if last else 1)) - ind
            words = font.fill_line(self.rng, width)
            font.line(self.ink, words, self.x + ind, self.y, width, value, "left" if last else align)
            self.y += lh
        return True

    def heading(self, font: Font, text: list[str], align="left", value=255) -> bool:
        lh = int(font.height * 1.3)
        if not self.room(lh * 2):
            return False
        self.y += int(font.height * _u(self.rng, 0.2, 0.8))
        font.line(self.ink, text, self.x, self.y, self.width, value, align)
        self.y += lh
        return True

    def block(self, hgt: int, draw, *args) -> bool:
        """Reserve ``hgt`` px of the column (shrunk to what is left if that is at least half) and call
        ``draw(writer, x, y, w, h, *args)``."""
        if self.y1 - self.y >= max(8, hgt // 2) and not (self.y + hgt <= self.y1):
            hgt = self.y1 - self.y
        if hgt < 8 or not self.room(hgt):
            return False
        draw(self, self.x, self.y, self.width, hgt, *args)
        self.y += hgt
        return True


def _body(rng, h, kind="any", lo=55, hi=110):
    """Body font: line height = page height / U(lo, hi) (about 9-12 pt on A4)."""
    return Font(rng, h / _u(rng, lo, hi) / 1.25, kind)


def _title(rng, body: Font, scale=(1.6, 3.2)):
    return Font(rng, body.size * _u(rng, *scale), "any", bold=rng.random() < 0.8)


def _flow(rng, wr: Writer, body: Font, lead: float, fig_p=0.25, table_p=0.15, head_p=0.2, title=None):
    """Fill the columns with paragraphs, headings, figures, tables and lists until the page is full."""
    head = Font(rng, body.size * _u(rng, 1.1, 1.6), "any", bold=True)
    align = "justify" if rng.random() < 0.6 else "left"
    indent = int(body.size * _u(rng, 0, 3)) if rng.random() < 0.5 else 0
    fails = 0
    for _ in range(80):
        r = rng.random()
        if r < head_p:
            ok = wr.heading(head, [f"{int(rng.integers(1, 9))}."] * (rng.random() < 0.5)
                            + [random_word(rng, caps=1) for _ in range(int(rng.integers(1, 5)))])
        elif r < head_p + fig_p:
            # figures stay small enough that the page is still dominated by text
            ok = wr.block(int(min(wr.width * _u(rng, 0.35, 0.8), (wr.y1 - wr.y0) * _u(rng, 0.15, 0.3))),
                          figures.figure, body)
        elif r < head_p + fig_p + table_p:
            ok = wr.block(int(body.height * lead * int(rng.integers(3, 12))), figures.table, body)
        elif r < head_p + fig_p + table_p + 0.1:
            ok = wr.block(int(body.height * lead * int(rng.integers(2, 7))), figures.bullets, body, lead)
        else:
            ok = wr.paragraph(body, lead, int(rng.integers(2, 12)), align, indent)
            wr.y += int(body.height * lead * _u(rng, 0, 0.8))
        fails = 0 if ok else fails + 1
        if fails >= 4:
            break


def layout(rng, ink, h, w, kind: str) -> list:
    """Draw one page layout of ``kind`` onto ``ink``; returns colour overlays to draw afterwards."""
    m = int(w * _u(rng, 0.04, 0.14))
    top, bot = int(h * _u(rng, 0.03, 0.1)), int(h * _u(rng, 0.03, 0.1))
    ncols = dict((k, c) for k, _, c in LAYOUTS)[kind]
    ncols = ncols[int(rng.integers(len(ncols)))] if w > h * 0.6 else 1
    body = _body(rng, h, "mono" if kind in ("receipt",) and rng.random() < 0.6 else "any")
    if kind == "notes":
        body = Font(rng, h / _u(rng, 25, 40) / 1.2, "script")
    lead = _u(rng, 1.1, 1.6)
    wr = Writer(rng, ink, (m, top, w - m, h - bot), ncols, int(w * _u(rng, 0.02, 0.05)))
    small = Font(rng, body.size * 0.8, "any")
    if rng.random() < 0.5 and kind not in ("receipt", "notes"):  # running header + rule
        small.line(ink, [random_word(rng) for _ in range(int(rng.integers(2, 6)))], m, top // 3 + 1,
                   w - 2 * m, 200, ["left", "right", "center"][int(rng.integers(3))])
        if rng.random() < 0.5:
            cv2.line(ink, (m, top - 2), (w - m, top - 2), 255, max(1, h // 900))
    if rng.random() < 0.6 and kind != "receipt":  # page number
        small.line(ink, [str(int(rng.integers(1, 400)))], m, h - bot + small.height // 2, w - 2 * m, 255,
                   ["center", "right"][int(rng.integers(2))])
    if kind == "article":
        full = Writer(rng, ink, (m, top, w - m, h - bot), 1, 0)
        full.heading(_title(rng, body), [random_word(rng, caps=0.7) for _ in range(int(rng.integers(2, 6)))],
                     ["left", "center"][int(rng.integers(2))])
        if rng.random() < 0.5:
            full.paragraph(Font(rng, body.size * 0.9, "any"), lead, int(rng.integers(1, 6)), "justify")
        wr.y0 = wr.y = full.y + body.height
        _flow(rng, wr, body, lead)
    elif kind == "book":
        if rng.random() < 0.3:
            wr.heading(_title(rng, body, (1.5, 2.5)), [random_word(rng, caps=1) for _ in range(2)], "center")
            wr.y += body.height * 2
        _flow(rng, wr, body, lead, fig_p=0.02, table_p=0.0, head_p=0.02)
    elif kind == "letter":
        wr.block(int(h * _u(rng, 0.06, 0.12)), figures.letterhead, body)
        for _ in range(int(rng.integers(2, 5))):
            wr.paragraph(body, lead, int(rng.integers(1, 4)), "left")
            wr.y += body.height
        _flow(rng, wr, body, lead, fig_p=0.0, table_p=0.03, head_p=0.0)
        wr.block(int(body.height * 3), figures.signature, body)
    elif kind == "form":
        wr.heading(_title(rng, body, (1.3, 2.2)), [random_word(rng, caps=1) for _ in range(2)])
        wr.block(int(body.height * lead * int(rng.integers(3, 8))), figures.fields, body, lead)
        wr.block(int(body.height * lead * int(rng.integers(5, 16))), figures.table, body)
        _flow(rng, wr, body, lead, fig_p=0.05, table_p=0.3, head_p=0.1)
    elif kind == "sheet":
        wr.block(wr.y1 - wr.y, figures.table, Font(rng, body.size * _u(rng, 0.7, 1), "any"))
    elif kind == "notes":
        wr.overlays.append((figures.ruled, (body, lead)))
        _flow(rng, wr, body, lead, fig_p=0.05, table_p=0.0, head_p=0.05)
    else:  # receipt
        wr.heading(_title(rng, body, (1.2, 2.0)), [random_word(rng, caps=1)], "center")
        wr.block(int(body.height * lead * int(rng.integers(6, 30))), figures.receipt_lines, body, lead)
        _flow(rng, wr, body, lead, fig_p=0.0, table_p=0.2, head_p=0.05)
    return wr.overlays


def render_page(rng, h: int, w: int) -> np.ndarray:
    """A printed page of (h, w) px, BGR uint8."""
    kinds, weights = [k for k, _, _ in LAYOUTS], np.array([p for _, p, _ in LAYOUTS])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    ink = np.zeros((h, w), np.uint8)
    overlays = layout(rng, ink, h, w, kind)
    page = paper(rng, h, w)
    if rng.random() < 0.3:  # faded toner / light print
        ink = cv2.convertScaleAbs(ink, alpha=_u(rng, 0.55, 0.9))
    if rng.random() < 0.15 and min(h, w) > 300:  # heavy toner / bold print
        ink = cv2.dilate(ink, np.ones((2, 2), np.uint8))
    a = ink.astype(np.float32) * (1 / 255)
    color = rng.uniform(0, 60, 3) if rng.random() < 0.8 else np.array([_u(rng, 60, 140), _u(rng, 10, 60),
                                                                        _u(rng, 0, 40)])  # black / blue ink
    inkimg = np.empty_like(page)
    inkimg[:] = color.astype(np.uint8)
    page = cv2.blendLinear(page, inkimg, 1 - a, a)
    for fn, args in overlays:
        fn(rng, page, *args)
    figures.wear(rng, page)
    return page
