"""Page elements: plots, diagrams, tables, lists, letterheads, signatures, form fields, receipt lines,
ruled paper and paper wear (folds, stains, highlighter, dust).

Block functions have the signature ``fn(writer, x, y, w, h, *args)`` and draw on ``writer.ink``
(uint8, 255 = ink); colour parts are queued on ``writer.overlays`` as ``(fn(rng, page, ...), args)``."""

from __future__ import annotations

import cv2
import numpy as np

from .scenes import picture
from .sources import pool
from .text import Font, random_word


def _u(rng, a, b):
    return float(rng.uniform(a, b))


def _lw(h: int) -> int:
    return max(1, int(round(h / 150)))


def _curve(rng, n: int, lo: float, hi: float) -> np.ndarray:
    v = np.cumsum(rng.normal(0, 1, n)) + rng.normal(0, 3) * np.linspace(0, 1, n)
    v = (v - v.min()) / max(float(np.ptp(v)), 1e-6)
    return lo + v * (hi - lo)


def figure(wr, x, y, w, h, body: Font):
    """A figure with an optional caption: line plot, bar chart, diagram, drawing or photo."""
    rng, ink = wr.rng, wr.ink
    cap = body.height * 2 if rng.random() < 0.7 else 0
    fh = h - cap
    if cap:
        Font(rng, body.size * 0.85, "any").line(ink, ["Figure", f"{int(rng.integers(1, 12))}:"] +
                                                body.fill_line(rng, int(w * 0.7)), x, y + fh + body.height // 3)
    kind = rng.choice(["plot", "bars", "diagram", "drawing", "photo"], p=[0.3, 0.15, 0.2, 0.15, 0.2])
    lw = _lw(fh)
    if kind == "photo":
        fw = int(min(w * _u(rng, 0.4, 0.9), fh * _u(rng, 0.8, 1.8)))
        wr.overlays.append((_photo, (x + (w - fw) // 2, y, fw, fh)))
    elif kind in ("plot", "bars"):
        _chart(wr, x, y, w, fh, lw, body, kind == "plot")
    elif kind == "diagram":
        _diagram(wr, x, y, w, fh, lw, body)
    else:
        _drawing(wr, x, y, w, fh, lw)


def _chart(wr, x, y, w, h, lw, body: Font, plot: bool):
    """Axes with ticks and labels, then curves (``plot``) or bars."""
    rng, ink = wr.rng, wr.ink
    ax0, ay1 = x + int(w * 0.12), y + int(h * 0.88)
    cv2.line(ink, (ax0, y), (ax0, ay1), 255, lw)
    cv2.line(ink, (ax0, ay1), (x + w, ay1), 255, lw)
    for t in np.linspace(ax0, x + w, int(rng.integers(4, 9))):
        cv2.line(ink, (int(t), ay1), (int(t), ay1 + 3 * lw), 255, lw)
    small = Font(rng, min(max(4, h / 14), body.size), "any")
    for t in np.linspace(y, ay1, int(rng.integers(3, 7)))[:-1]:
        small.line(ink, [str(int(rng.integers(0, 100)))], x, int(t) - small.height // 2)
    if plot:
        for k in range(int(rng.integers(1, 4))):
            xs = np.linspace(ax0, x + w, int(rng.integers(8, 80)))
            pts = np.stack([xs, _curve(rng, len(xs), y + h * 0.05, ay1)], 1).astype(np.int32)
            if rng.random() < 0.5:
                wr.overlays.append((_poly, (pts, lw)))
            else:
                cv2.polylines(ink, [pts], False, 255 - 60 * k, lw, cv2.LINE_AA)
        return
    n = int(rng.integers(3, 12))
    bw = (x + w - ax0) / n
    vals = rng.uniform(0.1, 0.95, n)
    for i, v in enumerate(vals):
        r = (int(ax0 + bw * (i + 0.15)), int(ay1 - v * (ay1 - y)), int(ax0 + bw * (i + 0.85)), ay1)
        if rng.random() < 0.5:
            wr.overlays.append((_rect, (r,)))
        else:
            cv2.rectangle(ink, r[:2], r[2:], int(rng.integers(60, 256)), -1)


def _diagram(wr, x, y, w, h, lw, body: Font):
    """Boxes with labels joined by arrows."""
    rng, ink = wr.rng, wr.ink
    small = Font(rng, min(max(4, h / 10), body.size * 1.2), "any")
    n = int(rng.integers(2, 6))
    boxes = []
    for i in range(n):
        bx = x + int(w * (i + 0.1) / n)
        by = y + int(rng.uniform(0.05, 0.6) * h)
        bw, bh = int(w / n * 0.75), int(h * _u(rng, 0.2, 0.35))
        cv2.rectangle(ink, (bx, by), (bx + bw, by + bh), 255, lw)
        small.line(ink, [random_word(rng)], bx + 2, by + bh // 2 - small.height // 2, bw - 4, 255, "center")
        boxes.append((bx, by, bw, bh))
    for a, b in zip(boxes, boxes[1:]):
        cv2.arrowedLine(ink, (a[0] + a[2], a[1] + a[3] // 2), (b[0], b[1] + b[3] // 2), 255, lw,
                        cv2.LINE_AA, tipLength=0.15)


def _drawing(wr, x, y, w, h, lw):
    """A technical line drawing: circles, rectangles and lines."""
    rng, ink = wr.rng, wr.ink
    for _ in range(int(rng.integers(3, 12))):
        c = (int(x + _u(rng, 0.1, 0.9) * w), int(y + _u(rng, 0.1, 0.9) * h))
        s = int(min(w, h) * _u(rng, 0.05, 0.4))
        if rng.random() < 0.4:
            cv2.circle(ink, c, s, 255, lw, cv2.LINE_AA)
        elif rng.random() < 0.6:
            cv2.rectangle(ink, (c[0] - s, c[1] - s // 2), (c[0] + s, c[1] + s // 2), 255, lw)
        else:
            cv2.line(ink, c, (int(x + _u(rng, 0, 1) * w), int(y + _u(rng, 0, 1) * h)), 255, lw, cv2.LINE_AA)


def _photo(rng, page, x, y, w, h):
    h, w = min(h, page.shape[0] - y), min(w, page.shape[1] - x)
    if h > 4 and w > 4:
        page[y:y + h, x:x + w] = picture(rng, h, w)


def _poly(rng, page, pts, lw):
    cv2.polylines(page, [pts], False, rng.integers(0, 200, 3).tolist(), lw, cv2.LINE_AA)


def _rect(rng, page, r):
    cv2.rectangle(page, r[:2], r[2:], rng.integers(0, 230, 3).tolist(), -1)


def table(wr, x, y, w, h, font: Font):
    """A table: header row, ruled or gridded cells with words and numbers."""
    rng, ink = wr.rng, wr.ink
    rh = int(font.height * _u(rng, 1.3, 1.9))
    nr = max(1, h // rh)
    nc = int(rng.integers(2, 8))
    cuts = np.sort(rng.uniform(0, 1, nc - 1)) if rng.random() < 0.5 else np.linspace(0, 1, nc + 1)[1:-1]
    xs = [x] + [int(x + c * w) for c in cuts] + [x + w]
    style = rng.integers(3)  # 0 full grid, 1 horizontal rules, 2 header rule only
    lw = max(1, font.size // 12)
    if rng.random() < 0.3:  # shaded header
        cv2.rectangle(ink, (x, y), (x + w, y + rh), int(rng.integers(30, 90)), -1)
    for r in range(nr + 1):
        if style < 2 or r in (0, 1, nr):
            cv2.line(ink, (x, y + r * rh), (x + w, y + r * rh), 255, lw)
    if style == 0:
        for cx in xs:
            cv2.line(ink, (cx, y), (cx, y + nr * rh), 255, lw)
    for r in range(nr):
        for c in range(nc):
            cw = xs[c + 1] - xs[c] - font.space * 2
            if cw < 4 or rng.random() < 0.1:
                continue
            words = [random_word(rng, digits=0.1 if r == 0 else 0.6) for _ in range(int(rng.integers(1, 3)))]
            font.line(ink, font.fill_line(rng, cw)[:len(words)] if sum(map(font.width, words)) > cw else words,
                      xs[c] + font.space, y + r * rh + (rh - font.height) // 2, cw, 255,
                      "right" if c and rng.random() < 0.5 else "left")


def bullets(wr, x, y, w, h, font: Font, lead: float):
    rng, ink = wr.rng, wr.ink
    lh = int(font.height * lead)
    for i in range(h // lh):
        cy = y + i * lh
        cv2.circle(ink, (x + font.size // 2, cy + font.height // 2), max(1, font.size // 6), 255, -1)
        font.line(ink, font.fill_line(rng, int(w * _u(rng, 0.3, 0.9)) - font.size * 2), x + font.size * 2, cy)


def letterhead(wr, x, y, w, h, body: Font):
    rng, ink = wr.rng, wr.ink
    s = int(h * 0.8)
    right = rng.random() < 0.5
    lx = x + w - s if right else x
    wr.overlays.append((_logo, (lx, y, s)))
    big = Font(rng, h * 0.35, "any", bold=True)
    tx = x if right else x + s + body.size
    big.line(ink, [random_word(rng, caps=1) for _ in range(2)], tx, y)
    small = Font(rng, body.size * 0.8, "any")
    for i in range(2):
        small.line(ink, small.fill_line(rng, int(w * 0.4)), tx, y + big.height + i * small.height)
    cv2.line(ink, (x, y + h - 2), (x + w, y + h - 2), 255, max(1, h // 60))


def _logo(rng, page, x, y, s):
    logos = pool().logos
    if s < 6 or y + s > page.shape[0] or x + s > page.shape[1] or x < 0:
        return
    if logos and rng.random() < 0.6:
        lg = logos[int(rng.integers(len(logos)))]
        sc = s / max(lg.shape[:2])
        lg = cv2.resize(lg, (max(1, int(lg.shape[1] * sc)), max(1, int(lg.shape[0] * sc))),
                        interpolation=cv2.INTER_AREA)
        a = lg[..., 3:].astype(np.float32) / 255
        roi = page[y:y + lg.shape[0], x:x + lg.shape[1]]
        roi[:] = (roi * (1 - a) + lg[..., :3] * a).astype(np.uint8)
    else:
        col = rng.integers(0, 220, 3).tolist()
        if rng.random() < 0.5:
            cv2.circle(page, (x + s // 2, y + s // 2), s // 2, col, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(page, (x, y), (x + s, y + s), col, -1)


def signature(wr, x, y, w, h, body: Font):
    wr.overlays.append((_sig, (x + int(w * 0.05), y, int(w * 0.35), h)))


def _sig(rng, page, x, y, w, h):
    t = np.linspace(0, 1, 60)
    xs = x + t * w
    ys = y + h * (0.5 + 0.35 * np.sin(t * _u(rng, 10, 30)) * np.sin(t * _u(rng, 2, 5) + _u(rng, 0, 3)))
    col = [int(v) for v in (rng.integers(80, 160), rng.integers(0, 60), rng.integers(0, 50))]
    cv2.polylines(page, [np.stack([xs, ys], 1).astype(np.int32)], False, col, max(1, h // 15), cv2.LINE_AA)


def fields(wr, x, y, w, h, font: Font, lead: float):
    """Form fields: 'Label: ________' lines and check boxes."""
    rng, ink = wr.rng, wr.ink
    lh = int(font.height * lead)
    for i in range(h // lh):
        cy = y + i * lh
        lab = [random_word(rng, caps=1) + ":"]
        font.line(ink, lab, x, cy)
        lx = x + font.width(lab[0]) + font.space
        if rng.random() < 0.3:
            b = font.size
            for k in range(int(rng.integers(2, 5))):
                bx = lx + k * b * 5
                cv2.rectangle(ink, (bx, cy + 2), (bx + b - 2, cy + b), 255, 1)
                font.line(ink, [random_word(rng)], bx + b + 2, cy)
        else:
            cv2.line(ink, (lx, cy + font.height - 2), (x + int(w * _u(rng, 0.5, 1)), cy + font.height - 2), 255, 1)


def receipt_lines(wr, x, y, w, h, font: Font, lead: float):
    rng, ink = wr.rng, wr.ink
    lh = int(font.height * lead)
    for i in range(h // lh):
        cy = y + i * lh
        if rng.random() < 0.12:
            for dx in range(x, x + w, font.size):
                cv2.line(ink, (dx, cy + lh // 2), (dx + font.size // 2, cy + lh // 2), 255, 1)
            continue
        font.line(ink, [random_word(rng).upper() for _ in range(int(rng.integers(1, 4)))], x, cy)
        font.line(ink, [f"{_u(rng, 0, 300):.2f}"], x, cy, w, 255, "right")


def ruled(rng, page, font: Font, lead: float):
    """Notebook paper: light blue rules and a red margin line."""
    h, w = page.shape[:2]
    lh = max(4, int(font.height * lead))
    col = (int(rng.integers(180, 240)), int(rng.integers(150, 210)), int(rng.integers(100, 170)))
    for yy in range(lh, h, lh):
        cv2.line(page, (0, yy + font.height - lh // 4), (w, yy + font.height - lh // 4), col, 1)
    if rng.random() < 0.7:
        mx = int(w * _u(rng, 0.08, 0.15))
        cv2.line(page, (mx, 0), (mx, h), (120, 120, 230), max(1, w // 500))


def wear(rng, page):
    """Folds, creases, stains, highlighter, dust and darkened edges; in place on the BGR page."""
    h, w = page.shape[:2]
    if rng.random() < 0.3:  # fold lines: a crease with a shading step across it
        vertical = rng.random() < 0.4
        size = w if vertical else h
        n = int(rng.integers(1, 3))
        for k in range(n):
            pos = int(np.clip(size * ((k + 1) / (n + 1) + rng.normal(0, 0.02)), 0, size))
            band = max(2, int(size * _u(rng, 0.02, 0.08)))
            lo = max(0, pos - band)
            g = np.linspace(_u(rng, 0.85, 0.97), 1.0, band, dtype=np.float32)[band - (pos - lo):]
            col = (235, 235, 235) if rng.random() < 0.5 else (150, 150, 150)
            if pos - lo < 1:
                continue
            if vertical:
                sl = page[:, lo:pos]
                sl[:] = (sl * g[None, :, None]).astype(np.uint8)
                cv2.line(page, (pos, 0), (pos, h), col, 1)
            else:
                sl = page[lo:pos]
                sl[:] = (sl * g[:, None, None]).astype(np.uint8)
                cv2.line(page, (0, pos), (w, pos), col, 1)
    if rng.random() < 0.12:  # coffee ring / stain
        c = (int(rng.integers(w)), int(rng.integers(h)))
        r = int(min(h, w) * _u(rng, 0.05, 0.2))
        over = page.copy()
        cv2.circle(over, c, r, (60, 110, 160), max(1, r // 8), cv2.LINE_AA)
        cv2.addWeighted(over, _u(rng, 0.1, 0.3), page, 1 - _u(rng, 0.1, 0.3), 0, dst=page)
    if rng.random() < 0.12:  # highlighter strokes multiply a bright colour into a band
        col = np.array([[60, 255, 255], [120, 255, 120], [255, 200, 255], [255, 220, 120]][int(rng.integers(4))],
                       np.float32) / 255
        for _ in range(int(rng.integers(1, 4))):
            y0, hh = int(rng.integers(0, h)), max(2, h // 60)
            x0, x1 = sorted(rng.integers(0, w, 2))
            roi = page[y0:y0 + hh, x0:x1]
            roi[:] = (roi * col).astype(np.uint8)
    if rng.random() < 0.3:  # dust and toner specks
        for _ in range(int(rng.integers(5, 60))):
            cv2.circle(page, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(0, 2)),
                       (int(rng.integers(0, 120)),) * 3, -1)
