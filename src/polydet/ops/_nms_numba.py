"""Greedy polygon NMS as one compiled CPU loop (numba), bit for bit the arithmetic of ``polygon.py``.

``nms.py`` imports this module lazily and only on CPU: numba is optional at run time (a missing or
broken numba means the torch path). :func:`nms_image` does one image in one call:
the seeds' candidate filter (as ``nms.candidates``), a stable sort by score, then
:func:`~polydet.ops._nms_greedy.greedy`, which walks the candidates in order, compares each with the
kept boxes of its class (of any class when agnostic) and keeps it unless one of them reaches IoU >=
``iou``; it stops at ``max_det`` kept. A pair is evaluated exactly only when the bound of
``nms._candidate_pairs`` (box overlap vs union) lets it reach the threshold.

The kernel is three modules: this one (candidates, sort, the image's rows in and out),
``_nms_greedy`` (the greedy loop and its grid of kept boxes) and ``_nms_geometry`` (per-quad tables
and pair IoU, a transcription of ``polygon.py``; it says where the result could differ from torch's).
numba's on-disk cache does not see a change in another module (see ``_nms_geometry.jit``).
"""

from __future__ import annotations

import numpy as np

from ._nms_geometry import jit, pair_iou, pair_ious, quad_tables
from ._nms_greedy import greedy

__all__ = ["greedy", "nms_image", "pair_iou", "pair_ious", "quad_tables"]


@jit(inline="always")
def _candidates(x, thr, multi_label, allow):
    """``nms.candidates``' filter over one image's rows ``x (N, 9+nc)``, unsorted: ``(rows, cls, neg,
    m)``, the first ``m`` entries of each holding a candidate's row, class and minus its score."""
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
    return rows, cand_cls, neg, m


@jit
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


@jit
def _best_per_class(cls, nc, agnostic, max_det):
    """What greedy NMS keeps at ``iou`` 0 (every pair reaches it) among ``cls (n,)`` sorted by score:
    the best overall with ``agnostic``, else the best of each class; ascending, at most ``max_det``."""
    nq = cls.shape[0]
    if agnostic:
        return np.zeros(min(1, max_det), np.int64)
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
    return keep[:nk]


@jit
def nms_image(x, thr, iou, agnostic, multi_label, max_det, max_candidates, allow):
    """``nms.polygon_nms`` for one image's rows ``x (N, 9+nc)`` (float32 or float64) -> ``(K, 10)`` rows
    ``[x1..y4, score, cls]`` in ``x``'s dtype. ``thr``: conf in ``x``'s dtype (torch compares in the
    tensor's dtype); ``allow (nc,)`` bool: the classes kept by the ``classes`` option.

    Candidates as ``nms.candidates``: obj > conf, score = obj * cls in ``x``'s dtype; the first maximal
    class (a NaN score is the maximum, as in torch, and drops the row), or every (row, class) over
    conf with ``multi_label``; sorted by score descending, ties in row order; the first
    ``max_candidates``.
    """
    rows, cand_cls, neg, m = _candidates(x, thr, multi_label, allow)
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
    else:
        keep = _best_per_class(cls, x.shape[1] - 9, agnostic, max_det)
    out = np.empty((keep.shape[0], 10), x.dtype)
    for b in range(keep.shape[0]):
        a = order[keep[b]]
        r = rows[a]
        for v in range(8):
            out[b, v] = x[r, v]
        out[b, 8] = -neg[a]
        out[b, 9] = cand_cls[a]
    return out
