"""Greedy polygon NMS as one compiled CPU loop (numba), bit for bit the arithmetic of ``polygon.py``.

``nms.py`` imports this module lazily and only on CPU: numba is optional at run time (a missing or
broken numba means the torch path). :func:`nms_image` does one image in one call:
the seeds' candidate filter (as ``nms.candidates``), a stable sort by score, then :func:`greedy`, which
walks the candidates in order, compares each with the kept boxes of its class (of any class when
agnostic) and keeps it unless one of them reaches IoU >= ``iou``; it stops at ``max_det`` kept. A pair
is evaluated exactly only when the bound of ``nms._candidate_pairs`` (box overlap vs union) lets it
reach the threshold.

The geometry is a scalar transcription of ``polygon.quad_tables`` and ``polygon.pair_iou``: the same
hull (angular order around the centroid, reflex corner replaced by its predecessor), the same
half-plane clipping, relative to the same points of the pair, with the same tolerances and the same
verdict on coincident edges (either copy on the other's line), the same operations in the same order,
in float64, without fastmath (so no fused multiply-add). The IoU values, hence the kept boxes, are
those of the torch path; ``tests/unit/test_nms.py`` checks the tables and IoUs bit for bit. Two
library functions are not torch's: ``sqrt`` (torch on x86 takes MKL's, which can differ in the last
bit) only scales the 1e-9 on-line tolerance, and ``atan2`` (torch: Sleef) only orders corners; they
could matter only for corners at exactly equal angles (collinear quads, of area and IoU 0) or an IoU
within ~1e-16 of the threshold.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Table columns, one row per quad (the transpose of polygon.quad_tables' (37, K) layout).
_HX, _NX, _HY, _NY, _EX, _EY, _C, _TOL = 0, 4, 8, 12, 16, 20, 24, 28
_AREA, _X0, _Y0, _X1, _Y1 = 32, 33, 34, 35, 36
_WIDTH = 37

_TINY = np.finfo(np.float64).tiny
_REL_TOL = 1e-9  # polygon._REL_TOL
_CONTAIN = 1 - 1e-10  # pair_iou: inter this close to the smaller area means containment
_SLACK = 1 - 1e-9  # nms._candidate_pairs: the bound's slack


def _jit(fn):
    """``njit`` with an on-disk cache where numba finds a writable place for it, else without one
    (numba raises at decoration time when no cache locator works, e.g. read-only site-packages and
    no writable home). IEEE division (``error_model="numpy"``), as torch."""
    try:
        return njit(cache=True, nogil=True, error_model="numpy")(fn)
    except RuntimeError:
        return njit(cache=False, nogil=True, error_model="numpy")(fn)


@_jit
def quad_tables(q):
    """``q (K, 8)`` float64 corners ``x0, y0, ..., x3, y3`` -> ``(K, 37)`` table, the transpose of
    ``polygon.quad_tables`` (same values)."""
    k = q.shape[0]
    t = np.empty((k, _WIDTH), np.float64)
    x = np.empty(4)
    y = np.empty(4)
    ang = np.empty(4)
    hx = np.empty(4)
    hy = np.empty(4)
    gx = np.empty(4)
    gy = np.empty(4)
    for r in range(k):
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
    return t


@_jit
def _fmax(a, b):
    """``torch.maximum`` for two floats: NaN if either is."""
    return a if (a >= b or a != a) else b


@_jit
def _fmin(a, b):
    """``torch.minimum`` for two floats: NaN if either is."""
    return a if (a <= b or a != a) else b


@_jit
def _tols(t, q, wx, wy, out):
    """pair_iou's on-line tolerances of quad ``q``'s 4 hull edges into ``out (4,)``, in a pair whose box
    is ``wx`` by ``wy``: the table's shape part plus the pair's rounding part."""
    for k in range(4):
        out[k] = t[q, _TOL + k] + 1e-13 * (abs(t[q, _EX + k]) * wy + abs(t[q, _EY + k]) * wx)


@_jit
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


@_jit
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


@_jit
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


@_jit
def pair_ious(t, i, j):
    """``pair_iou`` over index arrays ``i, j (P,)`` (tests and benchmarks)."""
    out = np.empty(i.shape[0], np.float64)
    s = np.empty((2, 5, 4))
    for p in range(i.shape[0]):
        out[p] = pair_iou(t, i[p], j[p], s)
    return out


@_jit
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


# Grid of kept boxes: at most this many cells a side, and a kept box covering more cells than this
# goes to a list that every candidate checks instead.
_GRID_SIDE = 64
_BIG = 16


@_jit
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


@_jit
def greedy(quads, cls, iou, agnostic, max_det):
    """Greedy NMS over candidates sorted by score: ``quads (n, 8) float64, cls (n,) int64`` -> kept
    indices ``(k,) int64``, ascending, ``k <= max_det``. Needs ``iou > 0`` (nms_image handles 0).

    Each candidate is compared with the kept boxes whose axis-aligned boxes share a cell of a uniform
    grid with its own (cells about the mean box size): a pair with no common cell has no box overlap,
    so the bound in :func:`_suppresses` rejects it anyway. The result is that of comparing with every
    kept box; the grid only keeps large ``max_det`` from costing n x max_det comparisons.
    """
    n = quads.shape[0]
    cap = min(n, max_det)
    kept = np.empty(cap, np.int64)
    if cap == 0:
        return kept
    t = quad_tables(quads)
    thr = iou * _SLACK
    # The grid: cells of about the mean box extent over the boxes' span; one cell if not finite.
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
        side = float(min(_GRID_SIDE, max(1, int(math.sqrt(4.0 * n)))))  # at most ~4 cells a candidate
        nx = max(1, int(min(side, spanx / ext)))
        ny = max(1, int(min(side, spany / ext)))
    sx = nx / spanx if nx > 1 else 0.0
    sy = ny / spany if ny > 1 else 0.0
    head = np.empty(nx * ny, np.int64)
    for c in range(nx * ny):
        head[c] = -1  # per cell: last entry; entries chain through nxt
    nxt = np.empty(cap * _BIG, np.int64)
    box = np.empty(cap * _BIG, np.int64)
    big = np.empty(cap, np.int64)  # kept boxes over more than _BIG cells
    stamp = np.empty(n, np.int64)
    for c in range(n):
        stamp[c] = -1  # kept box k last compared with candidate stamp[k]
    look = np.empty(cap, np.int64)
    scratch = np.empty((2, 5, 4))
    ne = nb = nk = 0
    for i in range(n):
        # cells of i's box (rounding is monotonic: overlapping boxes share a cell)
        cx0 = _cell(t[i, _X0], gx0, sx, nx)
        cx1 = _cell(t[i, _X1], gx0, sx, nx)
        cy0 = _cell(t[i, _Y0], gy0, sy, ny)
        cy1 = _cell(t[i, _Y1], gy0, sy, ny)
        ncell = (cx1 - cx0 + 1) * (cy1 - cy0 + 1)
        # the kept boxes to compare with (one call site of _suppresses keeps the compiled code small)
        if ncell > nk:  # fewer kept boxes than cells to look in: all of them
            nl = nk
            for m in range(nk):
                look[m] = kept[m]
        else:
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
        hit = False
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
            for cy in range(cy0, cy1 + 1):
                for cx in range(cx0, cx1 + 1):
                    c = cy * nx + cx
                    box[ne] = i
                    nxt[ne] = head[c]
                    head[c] = ne
                    ne += 1
    return kept[:nk]


@_jit
def _stable_argsort(key, m):
    """Indices sorting ``key[:m]`` ascending, ties in index order (a bottom-up merge sort over runs
    sorted by insertion; written out because numba's np.argsort(kind="mergesort") compiles slowly)."""
    idx = np.empty(m, np.int64)
    tmp = np.empty(m, np.int64)
    for i in range(m):
        idx[i] = i
    run = 16
    for lo in range(0, m, run):
        hi = min(lo + run, m)
        for i in range(lo + 1, hi):
            v = idx[i]
            kv = key[v]
            j = i - 1
            while j >= lo and key[idx[j]] > kv:
                idx[j + 1] = idx[j]
                j -= 1
            idx[j + 1] = v
    width = run
    while width < m:
        for lo in range(0, m, 2 * width):
            mid = min(lo + width, m)
            hi = min(lo + 2 * width, m)
            a, b, o = lo, mid, lo
            while a < mid and b < hi:
                if key[idx[b]] < key[idx[a]]:  # strictly less: the left run wins ties
                    tmp[o] = idx[b]
                    b += 1
                else:
                    tmp[o] = idx[a]
                    a += 1
                o += 1
            while a < mid:
                tmp[o] = idx[a]
                a += 1
                o += 1
            while b < hi:
                tmp[o] = idx[b]
                b += 1
                o += 1
        idx, tmp = tmp, idx
        width *= 2
    return idx


@_jit
def nms_image(x, thr, iou, agnostic, multi_label, max_det, max_candidates, allow):
    """``nms.polygon_nms`` for one image's rows ``x (N, 9+nc)`` (float32 or float64) -> ``(K, 10)`` rows
    ``[x1..y4, score, cls]`` in ``x``'s dtype. ``thr``: conf in ``x``'s dtype (torch compares in the
    tensor's dtype); ``allow (nc,)`` bool: the classes kept by the ``classes`` option.

    Candidates as ``nms.candidates``: obj > conf, score = obj * cls in ``x``'s dtype; the first maximal
    class (a NaN score is the maximum, as in torch, and drops the row), or every (row, class) over
    conf with ``multi_label``; sorted by score descending, ties in row order; the first
    ``max_candidates``.
    """
    n = x.shape[0]
    nc = x.shape[1] - 9
    cap = n * nc if multi_label else n
    rows = np.empty(cap, np.int64)
    cand_cls = np.empty(cap, np.int64)
    neg = np.empty(cap, x.dtype)  # -score: an ascending stable sort is descending by score
    m = 0
    for r in range(n):
        obj = x[r, 8]
        if not obj > thr:
            continue
        if multi_label:
            for k in range(nc):
                v = x[r, 9 + k] * obj
                if v > thr and allow[k]:
                    rows[m] = r
                    cand_cls[m] = k
                    neg[m] = -v
                    m += 1
        else:
            best = x[r, 9] * obj
            bk = 0
            if best == best:
                for k in range(1, nc):
                    v = x[r, 9 + k] * obj
                    if v > best or v != v:
                        best = v
                        bk = k
                        if v != v:
                            break
            if best > thr and allow[bk]:
                rows[m] = r
                cand_cls[m] = bk
                neg[m] = -best
                m += 1
    order = _stable_argsort(neg, m)[:max_candidates]
    nq = order.shape[0]
    quads = np.empty((nq, 8), np.float64)
    cls = np.empty(nq, np.int64)
    for a in range(nq):
        r = rows[order[a]]
        for v in range(8):
            quads[a, v] = x[r, v]
        cls[a] = cand_cls[order[a]]
    if nq <= 1 or iou > 0:
        keep = greedy(quads, cls, iou, agnostic, max_det) if nq > 1 else np.arange(min(nq, max_det))
    elif agnostic:  # iou 0: every pair reaches it; only the best overall (of each class) survives
        keep = np.zeros(min(1, max_det), np.int64)
    else:
        seen = np.zeros(nc, np.bool_)
        keep = np.empty(min(nq, max_det), np.int64)
        nk = 0
        for a in range(nq):
            if nk == keep.shape[0]:
                break
            if not seen[cls[a]]:
                seen[cls[a]] = True
                keep[nk] = a
                nk += 1
        keep = keep[:nk]
    out = np.empty((keep.shape[0], 10), x.dtype)
    for b in range(keep.shape[0]):
        a = order[keep[b]]
        r = rows[a]
        for v in range(8):
            out[b, v] = x[r, v]
        out[b, 8] = -neg[a]
        out[b, 9] = cand_cls[a]
    return out
