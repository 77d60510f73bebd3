"""Plain, slow reference implementations (test oracles, benchmark baselines) and synthetic inputs.

Written independently of ``polygon.py`` / ``nms.py`` (numpy and shapely, one pair at a time) so that
agreement means something. shapely is a test/bench dependency only: it is imported inside functions.
"""

from __future__ import annotations

import numpy as np


def _iou(a, b) -> float:
    """IoU of two shapely polygons; 0 when they do not meet or the union has no area."""
    if not a.intersects(b):
        return 0.0
    union = a.union(b).area
    return a.intersection(b).area / union if union > 0 else 0.0


def shapely_iou(p, q) -> float:
    """IoU of two quads ``(4, 2)`` as the seeds compute it: ``Polygon(q).convex_hull`` intersection
    area over union area; 0 when the union has no area."""
    from shapely.geometry import Polygon

    return _iou(Polygon(np.asarray(p, np.float64)).convex_hull, Polygon(np.asarray(q, np.float64)).convex_hull)


def shapely_nms(pred, conf: float = 0.25, iou: float = 0.45, classes=None, agnostic: bool = False,
                multi_label: bool = False, max_det: int = 300, max_candidates: int = 30000,
                cache_polygons: bool = False):
    """The seeds' polygon NMS written plainly: ``pred (B, N, 9+nc)`` -> ``(dets, rows)``: per image a
    ``(K, 10)`` array ``[x1..y4, score, cls]`` sorted by score, and the kept candidates' input rows.

    Candidates: obj > conf; score = obj * cls (in the input's float precision); best class (first on
    ties) with score > conf, or every (row, class) with score > conf when ``multi_label`` and nc > 1;
    optional class filter; the ``max_candidates`` best by score (stable). Greedy, like the seeds'
    ``polygon_nms_kernel``: take the best remaining box, drop the remaining boxes of its class (of any
    class if ``agnostic``) whose IoU with it is >= ``iou``, repeat; ``max_det`` keeps the best scores.
    Like the seeds, each comparison builds both hull polygons again, unless ``cache_polygons``.
    """
    from shapely.geometry import Polygon

    pred = np.asarray(pred)
    nc = pred.shape[2] - 9
    wanted = None if classes is None else {int(k) for k in np.atleast_1d(classes)}
    dets, rows = [], []
    for x in pred:
        obj = x[:, 8]
        scores = x[:, 9:] * obj[:, None]  # same dtype as the input, as in torch
        cand = []  # (row, class, score)
        for r in range(x.shape[0]):
            if not obj[r] > conf:
                continue
            if multi_label and nc > 1:
                cand += [(r, k, scores[r, k]) for k in range(nc) if scores[r, k] > conf]
            else:
                k = int(np.argmax(scores[r]))
                if scores[r, k] > conf:
                    cand.append((r, k, scores[r, k]))
        if wanted is not None:
            cand = [c for c in cand if c[1] in wanted]
        order = sorted(range(len(cand)), key=lambda i: -float(cand[i][2]))[:max_candidates]  # stable
        cand = [cand[i] for i in order]
        quads = [x[r, :8].astype(np.float64).reshape(4, 2) for r, _, _ in cand]
        if cache_polygons:
            polys = [Polygon(q).convex_hull for q in quads]
            hull = polys.__getitem__
        else:
            def hull(i):
                return Polygon(quads[i]).convex_hull
        remaining, kept = list(range(len(cand))), []
        while remaining:
            i, rest = remaining[0], []
            kept.append(i)
            pi = hull(i)
            for j in remaining[1:]:
                if (not agnostic and cand[j][1] != cand[i][1]) or _iou(pi, hull(j)) < iou:
                    rest.append(j)
            remaining = rest
        kept = kept[:max_det]
        out = np.zeros((len(kept), 10), dtype=pred.dtype)
        for n, i in enumerate(kept):
            r, k, s = cand[i]
            out[n, :8], out[n, 8], out[n, 9] = x[r, :8], s, k
        dets.append(out)
        rows.append([cand[i][0] for i in kept])
    return dets, rows


def synthetic_predictions(rng: np.random.Generator, n: int, nc: int = 2, size: float = 640.0,
                          per_object: int = 20, jitter: float = 0.08, all_pass: bool = False) -> np.ndarray:
    """Head-like output ``(n, 9+nc)`` float32 for one image: clusters of overlapping quads.

    ``n // per_object`` objects (rotated rectangles of 3-20 % of ``size`` a side, anywhere in the
    image, overlapping each other at times), each seen by about ``per_object`` rows whose corners are
    jittered independently by ``jitter`` of the object's short side. The object's class scores high.
    With ``all_pass`` every row is a candidate at conf 0.25 (obj >= 0.3, best class >= 0.85);
    otherwise obj and class scores spread over [0, 1].
    """
    k = max(1, n // per_object)
    centre = rng.uniform(0, size, (k, 1, 2))
    wh = rng.uniform(0.03, 0.2, (k, 1, 2)) * size
    th = rng.uniform(0, np.pi, k)
    rot = np.stack([np.cos(th), np.sin(th), -np.sin(th), np.cos(th)], 1).reshape(k, 2, 2)
    unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    obj_quads = (unit * wh) @ rot + centre  # (k, 4, 2)
    who = rng.integers(0, k, n)
    quads = obj_quads[who] + rng.normal(0, 1, (n, 4, 2)) * jitter * wh[who].min(2, keepdims=True)
    cls_of = rng.integers(0, nc, k)[who]
    out = np.zeros((n, 9 + nc), np.float32)
    out[:, :8] = quads.reshape(n, 8)
    if all_pass:
        out[:, 8] = rng.uniform(0.3, 1.0, n)
        out[:, 9:] = rng.uniform(0.0, 0.5, (n, nc))
        out[np.arange(n), 9 + cls_of] = rng.uniform(0.85, 1.0, n)
    else:
        out[:, 8] = rng.uniform(0.0, 1.0, n)
        out[:, 9:] = rng.uniform(0.0, 1.0, (n, nc))
        out[np.arange(n), 9 + cls_of] = np.sqrt(rng.uniform(0.0, 1.0, n))
    return out
