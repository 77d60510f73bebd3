"""The numba NMS kernel's geometry: per-quad tables and the IoU of one pair, bit for bit ``polygon.py``'s.

A scalar transcription of ``polygon.quad_tables`` and ``polygon.pair_iou``: the same hull (angular
order around the centroid, reflex corner replaced by its predecessor), the same half-plane clipping,
relative to the same points of the pair, with the same tolerances and the same verdict on coincident
edges (either copy on the other's line), the same operations in the same order, in float64, without
fastmath (so no fused multiply-add). The IoU values, hence the kept boxes, are those of the torch
path; ``tests/unit/test_nms.py`` checks the tables and IoUs bit for bit. Two library functions are not
torch's: ``sqrt`` (torch on x86 takes MKL's, which can differ in the last bit) only scales the 1e-9
on-line tolerance, and ``atan2`` (torch: Sleef) only orders corners; they could matter only for
corners at exactly equal angles (collinear quads, of area and IoU 0) or an IoU within ~1e-16 of the
threshold.
"""

from __future__ import annotations

import math

import numpy as np

# Table columns, one row per quad (the transpose of polygon.quad_tables' (37, K) layout).
_HX, _NX, _HY, _NY, _EX, _EY, _C, _TOL = 0, 4, 8, 12, 16, 20, 24, 28
_AREA, _X0, _Y0, _X1, _Y1 = 32, 33, 34, 35, 36
_WIDTH = 37

_TINY = np.finfo(np.float64).tiny
_REL_TOL = 1e-9  # polygon._REL_TOL
_CONTAIN = 1 - 1e-10  # pair_iou: inter this close to the smaller area means containment


def jit(fn=None, *, inline="never"):
    """``njit`` with an on-disk cache where numba finds a writable place for it, else without one
    (numba raises at decoration time when no cache locator works, e.g. read-only site-packages and
    no writable home). IEEE division (``error_model="numpy"``), as torch. ``@jit(inline="always")``
    for a helper split out of a hot loop: numba inlines it into its callers' IR, so the split costs no
    call there (a call per quad or candidate made the kernel measurably slower).

    numba is imported at each decoration, not once here, so that every kernel module needs it when it
    is imported, this one already loaded or not. numba's cache tracks a function's own file only
    (numba#1833): after editing one kernel module, clear ``$NUMBA_CACHE_DIR`` (or the ``__pycache__``
    beside it) before trusting the functions of the modules that call it.
    """
    from numba import njit

    if fn is None:
        return lambda f: jit(f, inline=inline)
    try:
        return njit(cache=True, nogil=True, error_model="numpy", inline=inline)(fn)
    except RuntimeError:
        return njit(cache=False, nogil=True, error_model="numpy", inline=inline)(fn)


@jit(inline="always")
def _hull(q, r, x, y, ang, hx, hy, gx, gy):
    """Quad ``r`` of ``q (K, 8)`` -> its hull corners into ``gx, gy (4,)``, as polygon.quad_tables:
    corners in angular order around their centroid, a corner inside the other three's triangle
    replaced by a copy of its predecessor. ``x, y, ang, hx, hy (4,)``: scratch (corners, angles,
    corners in angular order)."""
    for v in range(4):
        x[v] = q[r, 2 * v]
        y[v] = q[r, 2 * v + 1]
    mx = (((x[0] + x[1]) + x[2]) + x[3]) / 4.0
    my = (((y[0] + y[1]) + y[2]) + y[3]) / 4.0
    for v in range(4):
        ang[v] = math.atan2(y[v] - my, x[v] - mx)
    for v in range(4):  # NaN corners give colliding ranks: fill first, as a defined result
        hx[v] = np.nan
        hy[v] = np.nan
    for v in range(4):
        rank = 0
        for u in range(4):
            if ang[u] < ang[v] or (ang[u] == ang[v] and u < v):
                rank += 1
        if rank < 4:
            hx[rank] = x[v]
            hy[rank] = y[v]
    for c in range(4):  # a corner inside the other three's triangle -> copy of its predecessor
        p = (c + 3) % 4
        n = (c + 1) % 4
        if (hx[c] - hx[p]) * (hy[n] - hy[c]) - (hy[c] - hy[p]) * (hx[n] - hx[c]) < 0:
            gx[c] = hx[p]
            gy[c] = hy[p]
        else:
            gx[c] = hx[c]
            gy[c] = hy[c]


@jit(inline="always")
def _table_row(t, r, gx, gy):
    """Row ``r`` of the table from the hull corners ``gx, gy (4,)``: edges, tolerances, area, box."""
    x0 = min(min(gx[0], gx[1]), min(gx[2], gx[3]))
    x1 = max(max(gx[0], gx[1]), max(gx[2], gx[3]))
    y0 = min(min(gy[0], gy[1]), min(gy[2], gy[3]))
    y1 = max(max(gy[0], gy[1]), max(gy[2], gy[3]))
    area2 = 0.0
    mag = 0.0
    for c in range(4):
        n = (c + 1) % 4
        t1 = (gx[c] - gx[0]) * (gy[n] - gy[0])
        t2 = (gy[c] - gy[0]) * (gx[n] - gx[0])
        area2 += t1 - t2
        mag += abs(t1) + abs(t2)
    area = 0.5 * area2 if area2 > 1e-10 * mag else 0.0
    thick = area / max(max(x1 - x0, y1 - y0), _TINY)
    for c in range(4):
        n = (c + 1) % 4
        ex = gx[n] - gx[c]
        ey = gy[n] - gy[c]
        t[r, _HX + c] = gx[c]
        t[r, _NX + c] = gx[n]
        t[r, _HY + c] = gy[c]
        t[r, _NY + c] = gy[n]
        t[r, _EX + c] = ex
        t[r, _EY + c] = ey
        t[r, _C + c] = ex * gy[c] - ey * gx[c]
        t[r, _TOL + c] = _REL_TOL * thick * math.sqrt(ex * ex + ey * ey)
    t[r, _AREA] = area
    t[r, _X0] = x0
    t[r, _Y0] = y0
    t[r, _X1] = x1
    t[r, _Y1] = y1


@jit
def quad_tables(q):
    """``q (K, 8)`` float64 corners ``x0, y0, ..., x3, y3`` -> ``(K, 37)`` table, the transpose of
    ``polygon.quad_tables`` (same values)."""
    k = q.shape[0]
    t = np.empty((k, _WIDTH), np.float64)
    x, y, ang, hx, hy, gx, gy = (np.empty(4), np.empty(4), np.empty(4), np.empty(4), np.empty(4),
                                 np.empty(4), np.empty(4))
    for r in range(k):
        _hull(q, r, x, y, ang, hx, hy, gx, gy)
        _table_row(t, r, gx, gy)
    return t


@jit
def _fmax(a, b):
    """``torch.maximum`` for two floats: NaN if either is."""
    return a if (a >= b or a != a) else b


@jit
def _fmin(a, b):
    """``torch.minimum`` for two floats: NaN if either is."""
    return a if (a <= b or a != a) else b


@jit
def _tols(t, q, wx, wy, out):
    """pair_iou's on-line tolerances of quad ``q``'s 4 hull edges into ``out (4,)``, in a pair whose box
    is ``wx`` by ``wy``: the table's shape part plus the pair's rounding part."""
    for k in range(4):
        out[k] = t[q, _TOL + k] + 1e-13 * (abs(t[q, _EX + k]) * wy + abs(t[q, _EY + k]) * wx)


@jit
def _sides(t, a, b, s):
    """``s[h, v]``: pair_iou's ``s`` of quad ``a``'s hull corner ``v`` w.r.t. hull edge ``h`` of quad
    ``b`` (edge ``k`` runs from corner ``k`` to corner ``k + 1``: its ends' values are ``s[h, k]`` and
    ``s[h, (k + 1) % 4]``, bit for bit those torch computes for the table's edge starts and ends)."""
    for h in range(4):
        ex = t[b, _EX + h]
        ey = t[b, _EY + h]
        hx = t[b, _HX + h]
        hy = t[b, _HY + h]
        for v in range(4):
            s[h, v] = ex * (t[a, _HY + v] - hy) - ey * (t[a, _HX + v] - hx)


@jit
def _part(t, a, b, dedupe, sa, sb, ta, tb, ox, oy):
    """Shoelace sum, about ``(ox, oy)``, of the pieces of quad ``a``'s hull edges inside quad ``b``'s
    hull (pair_iou's ``part`` for one column). ``sa``: :func:`_sides` of ``a`` w.r.t. ``b``, ``sb``
    the other way; ``ta, tb``: the two quads' edge tolerances (:func:`_tols`). An edge coincident with
    an edge of ``b`` (either lies on the other's line) is not cut by that edge's half-plane; with
    ``dedupe`` (``a`` is pair_iou's ``j``) it is dropped when the two run the same way."""
    acc = 0.0
    for k in range(4):
        k1 = (k + 1) % 4
        lo = 0.0
        hi = 1.0
        for h in range(4):
            tol = tb[h]
            s0 = sa[h, k]
            s1 = sa[h, k1]
            ntol = -tol
            in0 = s0 >= ntol
            in1 = s1 >= ntol
            ta_k = ta[k]
            h1 = (h + 1) % 4
            coinc = (((abs(s0) <= tol) & (abs(s1) <= tol))
                     | ((abs(sb[k, h]) <= ta_k) & (abs(sb[k, h1]) <= ta_k)))
            in0 = in0 | coinc
            in1 = in1 | coinc
            if in1 and not in0:
                lo = max(lo, s0 / (s0 - s1))
            if in1:
                v = 1.0
            elif in0:
                v = s0 / (s0 - s1)
            else:
                v = 0.0
            if dedupe and coinc and t[a, _EX + k] * t[b, _EX + h] + t[a, _EY + k] * t[b, _EY + h] > 0:
                v = 0.0
            hi = min(hi, v)
        frac = max(hi - lo, 0.0)
        acc += frac * ((t[a, _HX + k] - ox) * t[a, _EY + k] - (t[a, _HY + k] - oy) * t[a, _EX + k])
    return acc


@jit
def pair_iou(t, i, j, s):
    """IoU of quads ``i`` and ``j`` of one table, as ``polygon.pair_iou(tab, [i], [j])`` (the order
    matters only for edges that coincide: ``i``'s copy counts); ``s``: scratch, ``np.empty((2, 5, 4))``."""
    wx = _fmax(t[i, _X1], t[j, _X1]) - _fmin(t[i, _X0], t[j, _X0])
    wy = _fmax(t[i, _Y1], t[j, _Y1]) - _fmin(t[i, _Y0], t[j, _Y0])
    si = s[0, :4]
    sj = s[1, :4]
    ti = s[0, 4]
    tj = s[1, 4]
    _tols(t, i, wx, wy, ti)
    _tols(t, j, wx, wy, tj)
    _sides(t, i, j, si)
    _sides(t, j, i, sj)
    ox = t[i, _HX]
    oy = t[i, _HY]
    inter = max(0.5 * (_part(t, i, j, False, si, sj, ti, tj, ox, oy)
                       + _part(t, j, i, True, sj, si, tj, ti, ox, oy)), 0.0)
    ai = t[i, _AREA]
    aj = t[j, _AREA]
    small = min(ai, aj)
    if inter >= small * _CONTAIN:
        inter = small
    union = ai + aj - inter
    return inter / max(union, _TINY) if union > 0 else 0.0


@jit
def pair_ious(t, i, j):
    """``pair_iou`` over index arrays ``i, j (P,)`` (tests and benchmarks)."""
    out = np.empty(i.shape[0], np.float64)
    s = np.empty((2, 5, 4))
    for p in range(i.shape[0]):
        out[p] = pair_iou(t, i[p], j[p], s)
    return out
