"""The numba NMS kernel's greedy loop: candidates in score order against the kept boxes near them.

Each candidate is compared with the kept boxes whose axis-aligned boxes share a cell of a uniform grid
with its own (cells about the mean box size): a pair with no common cell has no box overlap, so the
bound in :func:`_suppresses` rejects it anyway. The result is that of comparing with every kept box;
the grid only keeps large ``max_det`` from costing n x max_det comparisons.
"""

from __future__ import annotations

import math

import numpy as np

from ._nms_geometry import _AREA, _X0, _X1, _Y0, _Y1, jit, pair_iou, quad_tables

_SLACK = 1 - 1e-9  # nms._candidate_pairs: the bound's slack

# Grid of kept boxes: at most this many cells a side, and a kept box covering more cells than this
# goes to a list that every candidate checks instead.
_GRID_SIDE = 64
_BIG = 16


@jit
def _suppresses(t, cls, agnostic, k, i, iou, thr, s):
    """Does kept box ``k`` suppress candidate ``i`` (``k`` ranks higher)? ``thr``: ``iou`` with slack;
    ``s``: pair_iou's scratch."""
    if not agnostic and cls[k] != cls[i]:
        return False
    # nms._candidate_pairs' bound: min(box overlap, areas) / union must reach the threshold
    wx = max(min(t[k, _X1], t[i, _X1]) - max(t[k, _X0], t[i, _X0]), 0.0)
    wy = max(min(t[k, _Y1], t[i, _Y1]) - max(t[k, _Y0], t[i, _Y0]), 0.0)
    ak = t[k, _AREA]
    ai = t[i, _AREA]
    u = min(wx * wy, min(ak, ai))
    if not u >= thr * (ak + ai - u):
        return False
    return pair_iou(t, k, i, s) >= iou


@jit
def _cell(v, v0, scale, cells):
    """Grid cell ``floor((v - v0) * scale)`` clamped to ``[0, cells)``: monotonic in ``v``; NaN -> 0."""
    if cells == 1:
        return 0
    f = (v - v0) * scale
    if not f > 0:
        return 0
    if f >= cells - 1:
        return cells - 1
    return int(f)


@jit
def _grid(t, n):
    """The grid over the ``n`` boxes of table ``t``: ``(x0, y0, sx, sy, nx, ny)``, the origin, the
    scales from coordinates to cells and the cells a side. Cells of about the mean box extent over
    the boxes' span (at most ~4 cells a candidate); one cell where that is not finite."""
    gx0, gy0, gx1, gy1, ext = np.inf, np.inf, -np.inf, -np.inf, 0.0
    for i in range(n):
        gx0 = min(gx0, t[i, _X0])
        gy0 = min(gy0, t[i, _Y0])
        gx1 = max(gx1, t[i, _X1])
        gy1 = max(gy1, t[i, _Y1])
        ext += max(t[i, _X1] - t[i, _X0], t[i, _Y1] - t[i, _Y0])
    ext /= n
    spanx, spany = gx1 - gx0, gy1 - gy0
    nx = ny = 1
    if math.isfinite(spanx) and math.isfinite(spany) and math.isfinite(ext) and ext > 0:
        side = float(min(_GRID_SIDE, max(1, int(math.sqrt(4.0 * n)))))
        nx = max(1, int(min(side, spanx / ext)))
        ny = max(1, int(min(side, spany / ext)))
    sx = nx / spanx if nx > 1 else 0.0
    sy = ny / spany if ny > 1 else 0.0
    return gx0, gy0, sx, sy, nx, ny


@jit(inline="always")
def _near(i, cx0, cx1, cy0, cy1, nx, head, nxt, box, big, nb, stamp, look):
    """Into ``look``: the kept boxes on the big list and those in cells ``cx0..cx1 x cy0..cy1``, each
    once (``stamp[k] == i`` marks ``k`` as listed for candidate ``i``); returns how many."""
    nl = nb
    for m in range(nb):
        look[m] = big[m]
    for cy in range(cy0, cy1 + 1):
        for cx in range(cx0, cx1 + 1):
            e = head[cy * nx + cx]
            while e >= 0:
                k = box[e]
                if stamp[k] != i:
                    stamp[k] = i
                    look[nl] = k
                    nl += 1
                e = nxt[e]
    return nl


@jit(inline="always")
def _insert(i, cx0, cx1, cy0, cy1, nx, head, nxt, box, ne):
    """Kept box ``i`` into cells ``cx0..cx1 x cy0..cy1`` (entries ``ne``, ``ne + 1``, ... of the cells'
    chains: ``head`` per cell, then ``nxt``); returns the next free entry."""
    for cy in range(cy0, cy1 + 1):
        for cx in range(cx0, cx1 + 1):
            c = cy * nx + cx
            box[ne] = i
            nxt[ne] = head[c]
            head[c] = ne
            ne += 1
    return ne


@jit
def greedy(quads, cls, iou, agnostic, max_det):
    """Greedy NMS over candidates sorted by score: ``quads (n, 8) float64, cls (n,) int64`` -> kept
    indices ``(k,) int64``, ascending, ``k <= max_det``. Needs ``iou > 0`` (nms_image handles 0)."""
    n = quads.shape[0]
    cap = min(n, max_det)
    kept = np.empty(cap, np.int64)
    if cap == 0:
        return kept
    t = quad_tables(quads)
    thr = iou * _SLACK
    gx0, gy0, sx, sy, nx, ny = _grid(t, n)
    head = np.full(nx * ny, -1, np.int64)  # per cell: last entry; entries chain through nxt
    nxt = np.empty(cap * _BIG, np.int64)
    box = np.empty(cap * _BIG, np.int64)
    big = np.empty(cap, np.int64)  # kept boxes over more than _BIG cells
    stamp = np.full(n, -1, np.int64)  # kept box k last listed for candidate stamp[k]
    look = np.empty(cap, np.int64)
    scratch = np.empty((2, 5, 4))
    ne = nb = nk = 0
    for i in range(n):
        # cells of i's box (rounding is monotonic: overlapping boxes share a cell)
        cx0, cx1 = _cell(t[i, _X0], gx0, sx, nx), _cell(t[i, _X1], gx0, sx, nx)
        cy0, cy1 = _cell(t[i, _Y0], gy0, sy, ny), _cell(t[i, _Y1], gy0, sy, ny)
        ncell = (cx1 - cx0 + 1) * (cy1 - cy0 + 1)
        if ncell > nk:  # fewer kept boxes than cells to look in: all of them
            nl = nk
            for m in range(nk):
                look[m] = kept[m]
        else:
            nl = _near(i, cx0, cx1, cy0, cy1, nx, head, nxt, box, big, nb, stamp, look)
        hit = False  # one call site of _suppresses keeps the compiled code small
        for m in range(nl):
            if _suppresses(t, cls, agnostic, look[m], i, iou, thr, scratch):
                hit = True
                break
        if hit:
            continue
        kept[nk] = i
        nk += 1
        if nk == cap:
            break
        if ncell > _BIG:
            big[nb] = i
            nb += 1
        else:
            ne = _insert(i, cx0, cx1, cy0, cy1, nx, head, nxt, box, ne)
    return kept[:nk]
