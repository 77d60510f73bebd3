"""Fast text rendering onto an ink mask: TrueType words through a sprite cache, or OpenCV Hershey fonts.

FreeType costs ~25 us per glyph here, far too slow for ~600 words a page, so each (font, word) is
rendered once at a canonical size and resized for every other size; both steps are LRU-cached. The
cache only changes speed, never pixels, so output stays deterministic.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .sources import pool

WORDS = """the of and to in is that for it as was with be by on not he this are or his from at which but have
an they you were her she there been one all we their has would when if so no will more about up out
who can them some could what into than only other new time these two may then do first any my now
such like our over man even most made after also did many before must through back years where much
your way well down should because each just those people how too little state good very make world
still own see men work long get here between both life being under never day same another know while
last might us great old year off come since against go came right used take three system data model
results method analysis table figure section report value total page number price order date account
service invoice amount shipping customer address street city phone email please payment due balance
research study effect process design market energy water health school company group public policy
information program development management general national question project important control
level form sample average figure review energy product quality history local community include
network image signal density surface material temperature pressure function measure process field""".split()
PUNCT = [",", ".", ";", ":"]
# A fixed pool of number strings (prices, counts, dates) so the sprite cache stays small.
def _numbers() -> list[str]:
    r = np.random.default_rng(1234)  # a private generator: no global state
    ints = {str(int(r.integers(0, 10 ** int(r.integers(1, 6))))) + ["", "", "%", ".00", ".5"][int(r.integers(5))]
            for _ in range(400)}
    return sorted(ints | {f"{r.uniform(0, 999):.2f}" for _ in range(100)})


NUMBERS = _numbers()
HERSHEY = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
           cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL]
SCRIPT = [cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX]


def random_word(rng, caps: float = 0.08, digits: float = 0.05) -> str:
    r, a, b = rng.random(3)  # one call: the generator's per-call overhead dominates here
    return _word(r, a, b, caps, digits)


def _word(r: float, a: float, b: float, caps: float = 0.08, digits: float = 0.05) -> str:
    """A token from three uniform numbers: a number, or a word, maybe capitalised / punctuated."""
    if r < digits:
        return NUMBERS[int(a * len(NUMBERS))]
    w = WORDS[int(a * len(WORDS))]
    if r < digits + caps:
        w = w.capitalize()
    if b < 0.1:
        w += PUNCT[int(b * 10 * len(PUNCT))]
    return w


@functools.lru_cache(maxsize=64)
def _ttf(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def _canonical(size: int) -> int:
    return 24 if size <= 28 else 56


@functools.lru_cache(maxsize=40000)
def _canon_sprite(font: int, csize: int, word: str) -> np.ndarray:
    f = _ttf(pool().fonts[font], csize)
    asc, desc = f.getmetrics()
    w = max(1, int(np.ceil(f.getlength(word))))
    m, (ox, oy) = f.getmask2(word, mode="L", anchor="ls")
    out = np.zeros((asc + desc, w + 2), np.uint8)
    mw, mh = m.size
    if mw and mh:
        g = np.array(m, dtype=np.uint8).reshape(mh, mw)
        y0, x0 = max(0, asc + oy), max(0, ox)
        g = g[: out.shape[0] - y0, : out.shape[1] - x0]
        out[y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = g
    return out


@functools.lru_cache(maxsize=60000)
def sprite(font: int, size: int, word: str) -> np.ndarray:
    """Ink mask (uint8) of ``word`` in TrueType font #``font`` at ``size`` px line height; every sprite of
    a (font, size) has the same height with the baseline at the same row."""
    if len(word) > 1 and word[-1] in PUNCT:  # glue punctuation: keeps the cache to the vocabulary
        return np.hstack([sprite(font, size, word[:-1]), sprite(font, size, word[-1])])
    c = _canonical(size)
    s = _canon_sprite(font, c, word)
    if size == c:
        return s
    h = max(1, round(s.shape[0] * size / c))
    w = max(1, round(s.shape[1] * size / c))
    return cv2.resize(s, (w, h), interpolation=cv2.INTER_AREA if size < c else cv2.INTER_LINEAR)


@functools.lru_cache(maxsize=20000)
def _hershey_width(face: int, scale: float, thick: int, word: str) -> int:
    return cv2.getTextSize(word, face, scale, thick)[0][0]


class Font:
    """One typeface at one pixel size, drawing words onto a uint8 ink mask (255 = full ink)."""

    def __init__(self, rng, size: float, kind: str = "any", bold: bool = False):
        fonts = pool().fonts
        self.size = max(3, int(round(size)))
        self.hershey = kind == "hershey" or kind == "script" or (kind == "any" and (not fonts or rng.random() < 0.2))
        if self.hershey:
            self.face = (SCRIPT if kind == "script" else HERSHEY)[int(rng.integers(2 if kind == "script" else 6))]
            if rng.random() < 0.15 and kind != "script":
                self.face |= cv2.FONT_ITALIC
            (_, th), base = cv2.getTextSize("Hg", self.face, 1.0, 1)
            self.scale = self.size / (th + base) * 0.95
            self.thick = max(1, int(round(self.size / 14))) + (1 if bold else 0)
            self.height = self.size
        else:
            cands = [i for i, p in enumerate(fonts) if ("Bol" in p or "cmb" in p) == bold]
            if kind == "mono":
                cands = [i for i, p in enumerate(fonts) if "Mono" in p or "cmtt" in p] or cands
            self.face = cands[int(rng.integers(len(cands)))]
            self.height = sprite(self.face, self.size, "Hg").shape[0]
        self.space = max(1, int(round(self.size * 0.28)))
        self._cache: dict[str, np.ndarray] = {}
        self._width: dict[str, int] = {}

    def width(self, word: str) -> int:
        w = self._width.get(word)
        if w is None:
            w = self._width[word] = (_hershey_width(self.face, self.scale, self.thick, word) if self.hershey
                                     else self.sprite(word).shape[1])
        return w

    def sprite(self, word: str) -> np.ndarray:
        s = self._cache.get(word)  # a per-font dict in front of the LRU: the hot path of a page
        if s is None:
            s = self._cache[word] = sprite(self.face, self.size, word)
        return s

    def draw(self, mask: np.ndarray, word: str, x: int, y: int, value: int = 255) -> int:
        """Draw ``word`` with its line box's top-left at (x, y); returns its width."""
        if self.hershey:
            cv2.putText(mask, word, (x, y + int(self.size * 0.75)), self.face, self.scale, value, self.thick,
                        cv2.LINE_AA)
            return self.width(word)
        s = self.sprite(word)
        paste_max(mask, s if value == 255 else (s.astype(np.uint16) * value // 255).astype(np.uint8), x, y)
        return s.shape[1]

    def line(self, mask, words: list[str], x: int, y: int, width: int | None = None, value: int = 255,
             align: str = "left") -> None:
        """Draw words on one line; ``width`` with align='justify' spreads the gaps to fill it."""
        ws = [self.width(w) for w in words]
        gap = float(self.space)
        total = sum(ws) + gap * (len(words) - 1)
        if width is not None and align == "justify" and len(words) > 1:
            gap = (width - sum(ws)) / (len(words) - 1)
        elif width is not None and align == "center":
            x += int((width - total) / 2)
        elif width is not None and align == "right":
            x += int(width - total)
        cx = float(x)
        for w, ww in zip(words, ws):
            self.draw(mask, w, int(cx), y, value)
            cx += ww + gap

    def fill_line(self, rng, width: int, caps: float = 0.08, digits: float = 0.05) -> list[str]:
        """Random words that fit in ``width`` px."""
        out, used = [], 0
        while True:
            for r, a, b in rng.random((max(4, width // (self.size * 3) + 2), 3)).tolist():  # batched draws
                w = _word(r, a, b, caps, digits)
                ww = self.width(w)
                if used + ww > width:
                    return out or [w[: max(1, len(w) * width // max(ww, 1))]]
                out.append(w)
                used += ww + self.space


def paste_max(mask: np.ndarray, s: np.ndarray, x: int, y: int) -> None:
    """mask[y:, x:] = max(mask, s), clipped to the mask."""
    h, w = s.shape
    if x >= 0 and y >= 0 and x + w <= mask.shape[1] and y + h <= mask.shape[0]:  # the common case
        region = mask[y:y + h, x:x + w]
        np.maximum(region, s, out=region)
        return
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, mask.shape[1]), min(y + h, mask.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    region = mask[y0:y1, x0:x1]
    np.maximum(region, s[y0 - y:y1 - y, x0 - x:x1 - x], out=region)


def warm() -> None:
    """Render every vocabulary token in every font at the canonical body size (a few seconds, once
    per process). Call it in the parent before forking loader workers so they share the sprites."""
    fonts = pool().fonts
    tokens = WORDS + [w.capitalize() for w in WORDS] + NUMBERS + PUNCT
    for f in range(len(fonts)):
        for t in tokens:
            _canon_sprite(f, 24, t)
