"""3-D tilt + pinhole projection of flat rectangles, placement in the image, and small convex-polygon
geometry (area, clipping) used for the occlusion bound. NumPy only, float64 internally."""

from __future__ import annotations

import math

import numpy as np


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """R = Ry @ Rx @ Rz (radians): spin the object in its own plane, then tilt it."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def project_rect(aspect: float, rx: float, ry: float, rz: float, dist: float) -> np.ndarray:
    """Corners (4, 2) of a ``aspect`` x 1 rectangle (w/h = aspect; texture order TL, TR, BR, BL) seen by a
    unit-focal pinhole camera at distance ``dist`` along the optical axis after rotation (rx, ry, rz)."""
    a = aspect / 2
    obj = np.array([[-a, -0.5, 0], [a, -0.5, 0], [a, 0.5, 0], [-a, 0.5, 0]])
    pts = obj @ rotation(rx, ry, rz).T + np.array([0, 0, dist])
    return pts[:, :2] / pts[:, 2:3]


def poly_area(p: np.ndarray) -> float:
    """Unsigned shoelace area of a simple polygon (N, 2)."""
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _ccw(p: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    s = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return p if s >= 0 else p[::-1]


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: ``subject`` (N, 2) clipped by the convex polygon ``clip`` (M, 2) -> (K, 2)."""
    out = [tuple(p) for p in _ccw(np.asarray(subject, np.float64))]
    c = _ccw(np.asarray(clip, np.float64))
    for i in range(len(c)):
        a, b = c[i], c[(i + 1) % len(c)]
        inp, out = out, []
        if not inp:
            break

        def side(p):
            return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

        for j in range(len(inp)):
            p, q = inp[j], inp[(j + 1) % len(inp)]
            sp, sq = side(p), side(q)
            if sp >= 0:
                out.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return np.array(out, np.float64).reshape(-1, 2)


def inter_area(a: np.ndarray, b: np.ndarray) -> float:
    return poly_area(clip_convex(a, b))


def hidden_fraction(quad: np.ndarray, above: list[np.ndarray]) -> float:
    """Fraction of convex ``quad`` covered by the union of the convex polygons drawn on top of it:
    inclusion-exclusion over the (convex) intersections, exact; 2^k terms for k occluders."""
    area = poly_area(quad)
    if area <= 0 or not above:
        return 0.0
    hidden = 0.0
    for mask in range(1, 1 << len(above)):
        piece = np.asarray(quad, np.float64)
        for j, q in enumerate(above):
            if mask >> j & 1 and len(piece) >= 3:
                piece = clip_convex(piece, q)
        sign = 1.0 if bin(mask).count("1") % 2 else -1.0
        hidden += sign * poly_area(piece)
    return hidden / area


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def order_corners_np(q: np.ndarray) -> np.ndarray:
    """Canonical corner order TL, TR, BR, BL, ``(..., 4, 2) -> (..., 4, 2)``: NumPy twin of
    ``polydet.ops.polygon.order_corners`` (a test keeps them equal). The seeds' rule: the two top corners
    (smallest y, ties by smaller x) left to right, then the two bottom corners right to left; where that
    gives a self-intersecting or counter-clockwise quad, the corners in clockwise angular order around
    their centroid, starting at the same first corner."""
    q = np.asarray(q)
    shape = q.shape
    if q.size == 0:
        return q.copy()
    p = q.reshape(-1, 4, 2)
    w = p.astype(np.float64)
    x, y = w[..., 0], w[..., 1]
    by_x = np.argsort(x, axis=1, kind="stable")
    by_yx = np.take_along_axis(by_x, np.argsort(np.take_along_axis(y, by_x, 1), axis=1, kind="stable"), 1)
    xs = np.take_along_axis(x, by_yx, 1)
    top = np.take_along_axis(by_yx[:, :2], np.argsort(xs[:, :2], axis=1, kind="stable"), 1)
    bottom = np.take_along_axis(by_yx[:, 2:], np.argsort(-xs[:, 2:], axis=1, kind="stable"), 1)
    seed = np.concatenate([top, bottom], 1)
    s = np.take_along_axis(w, seed[..., None], 1)

    def crosses(p0, p1, p2, p3):
        d1, d2 = _cross(p1 - p0, p2 - p0), _cross(p1 - p0, p3 - p0)
        d3, d4 = _cross(p3 - p2, p0 - p2), _cross(p3 - p2, p1 - p2)
        return (d1 * d2 < 0) & (d3 * d4 < 0)

    c0, c1, c2, c3 = (s[:, k] for k in range(4))
    d = s[:, 1:] - s[:, :1]
    signed = _cross(d[:, 0], d[:, 1]) + _cross(d[:, 1], d[:, 2])
    bad = crosses(c0, c1, c2, c3) | crosses(c1, c2, c3, c0) | (signed < 0)
    rel = w - w.mean(1, keepdims=True)
    ring = np.argsort(np.arctan2(rel[..., 1], rel[..., 0]), axis=1, kind="stable")  # clockwise on screen
    start = np.argmax(ring == seed[:, :1], axis=1)[:, None]
    ring = np.take_along_axis(ring, (start + np.arange(4)) % 4, 1)
    idx = np.where(bad[:, None], ring, seed)
    return np.take_along_axis(p, idx[..., None], 1).reshape(shape)


def sample_quad(rng, img_w: int, img_h: int, aspect: float, area_frac: float, max_tilt: float,
                fov=(40.0, 75.0), min_area: float = 0.03, margin: float = 1.0) -> np.ndarray | None:
    """A perspective quad (4, 2) in pixels, texture order TL, TR, BR, BL, covering about ``area_frac`` of
    the image with all corners at least ``margin`` px inside, or None if it cannot fit above
    ``min_area``. Distance follows from the field of view and target size, so close (large) objects
    get strong perspective and far (small) ones almost none, as in real photos."""
    rx, ry = (math.radians(rng.uniform(-max_tilt, max_tilt)) for _ in range(2))
    rz = math.radians(rng.uniform(0, 360))
    f_long = 0.5 / math.tan(math.radians(rng.uniform(*fov)) / 2)  # focal length in long-side units
    long = max(img_w, img_h)
    img_area = (img_w / long) * (img_h / long) / f_long ** 2  # image area at unit focal length
    dist = math.sqrt(aspect / (area_frac * img_area))
    dist = max(dist, 0.5 * math.sqrt(aspect + 1 / aspect) + 0.05)  # keep the whole object in front
    q = project_rect(aspect, rx, ry, rz, dist)
    q = q * (f_long * long)  # to pixels around the principal point
    a = poly_area(q)
    if not np.isfinite(a) or a <= 0:
        return None
    q = q * math.sqrt(area_frac * img_w * img_h / a)
    lo, hi = q.min(0), q.max(0)
    span = hi - lo
    room = np.array([img_w, img_h], np.float64) - 2 * margin
    if np.any(span > room):  # too big for the frame in this pose: shrink until it fits
        q = q * float(np.min(room / span)) * 0.999
        lo, hi = q.min(0), q.max(0)
        span = hi - lo
    if poly_area(q) < min_area * img_w * img_h:
        return None
    off = np.array([rng.uniform(margin, margin + room[0] - span[0]), rng.uniform(margin, margin + room[1] - span[1])])
    return q - lo + off
