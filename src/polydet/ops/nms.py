"""Polygon non-maximum suppression with the seeds' semantics: a compiled CPU loop, or vectorized torch.

Two implementations of the same greedy NMS (keep the best remaining box, drop the later boxes of its
class with IoU >= iou), with the same candidates and the same IoU arithmetic, so the same kept boxes:

- ``numba`` (float32/float64 CPU tensors, the default there when numba imports): one compiled call per
  image (``_nms_numba.nms_image``) filters and sorts the candidates, then walks them in score order and
  compares each with the kept boxes of its class; a pair is evaluated exactly only when a cheap box
  bound lets it reach the threshold. Greedy NMS is a sequential loop, and compiled it costs ~0.6 ms at
  1000 candidates, where the torch path below spends ~10 ms in ~250 small tensor calls. Its IoU
  arithmetic is ``polygon.py``'s, operation for operation (see ``_nms_numba`` for the two library
  functions that are not torch's).
- ``torch`` (CUDA/MPS tensors, or numba missing; ``backend="torch"`` or ``POLYDET_NMS=torch`` forces it),
  vectorized:

1. Candidate pairs: a sweep over x finds the pairs whose axis-aligned boxes can overlap enough
   (classes are shifted apart on the x axis so that they never pair), and a cheap upper bound on IoU
   drops the pairs that cannot reach the threshold. No n x n matrix is built.
2. Lazy rounds: a box that no undecided higher-ranked box may still suppress is kept; the exact IoU
   (``polygon.pair_iou``) of its pairs then suppresses what it hits. Each round settles at least the
   best undecided box; clustered scenes need a few rounds, and only about a quarter of the candidate
   pairs are ever evaluated.
3. Long dependency chains (more than ``_ROUNDS`` rounds): the remaining pairs are evaluated at once
   and settled by a fixed-point pass on the suppression edges (:func:`_greedy`).

Python loops run over images and rounds, never over boxes or pairs.
"""

from __future__ import annotations

import logging
import math
import os
import threading

import numpy as np
import torch

from .polygon import _AREA, _BOX, _cols, _work_dtype, pair_iou, quad_tables

log = logging.getLogger(__name__)

# Lazy rounds before the rest of the pairs is evaluated at once (see _nms_one).
_ROUNDS = 8

BACKENDS = ("auto", "numba", "torch")
# The backend when polygon_nms gets none: "auto" (numba on CPU when it imports, else torch), "numba"
# (insist: an error where it cannot run) or "torch".
ENV_BACKEND = "POLYDET_NMS"
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}

_kernel = None  # the _nms_numba module once loaded and compiled; False: unavailable (see numba_kernel)
_kernel_error = ""
_kernel_lock = threading.Lock()


MAX_CANDIDATES = 30000  # YOLOv5's max_nms: the candidates per image NMS considers, highest scores first


def _check(pred, conf: float, iou: float, max_det: int, max_candidates: int) -> None:
    if not isinstance(pred, torch.Tensor) or pred.ndim != 3 or pred.shape[2] < 10:
        shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"pred must be a tensor (B, N, 9+nc) with nc >= 1, got {shape}")
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf must be in [0, 1], got {conf}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou must be in [0, 1], got {iou}")
    if int(max_det) != max_det or max_det < 0:
        raise ValueError(f"max_det must be a non-negative integer, got {max_det}")
    if int(max_candidates) != max_candidates or max_candidates < 1:
        raise ValueError(f"max_candidates must be a positive integer, got {max_candidates}")


def candidates(x: torch.Tensor, conf: float, classes=None, multi_label: bool = False,
               max_candidates: int = MAX_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's rows ``(N, 9+nc)`` -> ``(quads (n,8), scores (n,), classes (n,) long)`` sorted by
    score descending (stable: ties keep row order), at most ``max_candidates``.

    The seeds' filter: obj > conf, score = obj * cls; best class with score > conf, or with
    ``multi_label`` one candidate per (row, class) with score > conf, rows then classes in order.
    """
    x = x[x[:, 8] > conf]
    scores = x[:, 9:] * x[:, 8:9]
    if multi_label:
        i, j = (scores > conf).nonzero(as_tuple=True)
        quads, s, c = x[i, :8], scores[i, j], j
    else:
        s, c = scores.max(1)  # first maximal class on ties
        keep = s > conf
        quads, s, c = x[keep, :8], s[keep], c[keep]
    if classes is not None:
        keep = torch.isin(c, torch.as_tensor(classes, device=c.device).long().reshape(-1))
        quads, s, c = quads[keep], s[keep], c[keep]
    order = s.argsort(descending=True, stable=True)[:max_candidates]
    return quads[order], s[order], c[order]


def _candidate_pairs(tab: torch.Tensor, cls: torch.Tensor, iou: float,
                     agnostic: bool) -> list[torch.Tensor]:
    """Pairs ``i, j (P,)`` of candidate indices, ``i < j`` (same class unless ``agnostic``) that may have
    IoU >= ``iou`` > 0, from per-quad tables ``tab``. A sweep over x, O(n log n + pairs), no n x n matrix.

    Necessary conditions used: IoU >= t needs inter >= t * max(area_i, area_j), and inter is at most
    the boxes' overlap ``ox * oy`` with ``oy <= h_i``, so ``ox >= t * area_i / h_i`` for both boxes: each
    box's x interval, shrunk by half that at both ends, still overlaps the other's (same for y). Then
    the bound ``min(ox * oy, area_i, area_j) / union`` must reach t.
    """
    n = tab.shape[1]
    area = tab[_AREA]
    x0, y0, x1, y1 = tab[_BOX]
    half = 0.5 * iou * (1 - 1e-9)  # slack: the exact IoU rounds differently
    sx = half * area / (y1 - y0).clamp(min=torch.finfo(area.dtype).tiny)  # area 0 when height 0
    sy = half * area / (x1 - x0).clamp(min=torch.finfo(area.dtype).tiny)
    x0, x1, y0, y1 = x0 + sx, x1 - sx, y0 + sy, y1 - sy
    if not agnostic:  # shift each class by more than the data's x extent: classes never overlap in x
        off = (x1.max() - x0.min() + 1) * cls.to(x0.dtype)
        x0, x1 = x0 + off, x1 + off  # same shift on both ends, and rounding is monotonic: no pair is lost
    xs0, order = x0.sort()
    srt = _cols(torch.stack((x1, y0, y1)), order)  # the shrunk boxes in x0 order
    ar = torch.arange(n, device=x0.device)
    cnt = torch.searchsorted(xs0, srt[0], right=True) - ar - 1  # later boxes starting before this ends
    total = int(cnt.sum())
    p = torch.repeat_interleave(ar, cnt, output_size=total)  # pairs (p, q), p < q, in x0 order
    q = torch.arange(total, device=x0.device) + (p + 1 - (cnt.cumsum(0) - cnt).index_select(0, p))
    yp, yq = _cols(srt[1:], p), _cols(srt[1:], q)
    p, q = _compact((yp[0] <= yq[1]) & (yq[0] <= yp[1]), p, q)
    i, j = order.index_select(0, p), order.index_select(0, q)
    i, j = torch.minimum(i, j), torch.maximum(i, j)
    bi, bj = _cols(tab[_AREA:], i), _cols(tab[_AREA:], j)  # area, x0, y0, x1, y1
    wh = (torch.minimum(bi[3:], bj[3:]) - torch.maximum(bi[1:3], bj[1:3])).clamp(min=0)
    u = torch.minimum(wh[0] * wh[1], torch.minimum(bi[0], bj[0]))
    return _compact(u >= iou * (1 - 1e-9) * (bi[0] + bj[0] - u), i, j)


def _compact(mask: torch.Tensor, *arrays: torch.Tensor) -> list[torch.Tensor]:
    """``[a[mask] for a in arrays]`` with one nonzero for all (boolean indexing repeats it)."""
    keep = mask.nonzero().squeeze(1)
    return [a.index_select(0, keep) for a in arrays]


def _greedy(n: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Greedy NMS on suppression edges ``src -> dst`` (src ranks higher): ``(n,)`` bool kept."""
    keep = torch.ones(n, dtype=torch.bool, device=src.device)
    while True:
        new = torch.ones_like(keep)
        new[dst[keep[src]]] = False
        if torch.equal(new, keep):
            return keep
        keep = new


def _nms_one(quads: torch.Tensor, cls: torch.Tensor, iou: float, agnostic: bool) -> torch.Tensor:
    """Indices kept by greedy NMS among candidates already sorted by score: ``(n, 8) -> (k,)``.

    Lazy rounds: a box that no undecided higher-ranked box may suppress is kept; its pairs are then
    evaluated exactly and suppress what they hit. Only pairs that start at a kept box are evaluated
    (about a quarter of the candidate pairs in clustered scenes). After ``_ROUNDS`` rounds the rest is
    evaluated at once and settled by the fixed-point pass :func:`_greedy`.
    """
    n = quads.shape[0]
    dev = quads.device
    if n <= 1:
        return torch.arange(n, device=dev)
    if iou <= 0:  # every pair has IoU >= 0: only the best of each class (or overall) survives
        if agnostic:
            return torch.zeros(1, dtype=torch.long, device=dev)
        sorted_cls, order = cls.sort(stable=True)
        first = torch.ones(n, dtype=torch.bool, device=dev)
        first[1:] = sorted_cls[1:] != sorted_cls[:-1]
        return order[first].sort().values
    tab = quad_tables(quads.reshape(n, 4, 2).to(_work_dtype(dev)))
    i, j = _candidate_pairs(tab, cls, iou, agnostic)
    state = torch.zeros(n, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 suppressed
    src, dst = [], []
    for _ in range(_ROUNDS):
        if i.numel() == 0:
            return (state != 2).nonzero().squeeze(1)
        # Live pairs only start at undecided boxes; a box no live pair points at is kept.
        new = state == 0
        new[j] = False
        state.masked_fill_(new, 1)
        ei, ej = _compact(new.index_select(0, i), i, j)
        ei, ej = _compact(pair_iou(tab, ei, ej) >= iou, ei, ej)
        state[ej] = 2
        src.append(ei)
        dst.append(ej)
        i, j = _compact((state.index_select(0, i) == 0) & (state.index_select(0, j) == 0), i, j)
    hit = pair_iou(tab, i, j) >= iou  # long chains: the rest at once
    src.append(i[hit])
    dst.append(j[hit])
    return _greedy(n, torch.cat(src), torch.cat(dst)).nonzero().squeeze(1)


def numba_kernel():
    """The compiled kernel module (``_nms_numba``), or None when numba is missing or fails.

    First call (polygon_nms calls it on its first CPU call; :func:`warmup`, which ``Detector`` calls when
    it is built, moves that cost out of the first request): imports numba and loads the float32 kernel
    from numba's on-disk cache (~1 s on a small CPU), or compiles it where there is no cache yet (~8 s;
    float64 inputs compile their own on first use). The cache goes to ``$NUMBA_CACHE_DIR``, else
    ``__pycache__`` beside the module, else numba's user cache dir; where none is writable the kernel
    compiles without one in every process. A failure is logged once at INFO and the torch path is used
    from then on.
    """
    global _kernel, _kernel_error
    if _kernel is None:
        with _kernel_lock:
            if _kernel is None:
                try:
                    from . import _nms_numba as mod

                    x = np.zeros((2, 11), np.float32)  # compile (or load) float32 now, float64 when needed
                    mod.nms_image(x, np.float32(0.25), 0.5, False, False, 2, 30000, np.ones(2, np.bool_))
                    _kernel = mod
                except Exception as e:  # ImportError, numba/numpy mismatch, LLVM errors: torch it is
                    _kernel, _kernel_error = False, f"{type(e).__name__}: {e}"
                    log.info("polygon_nms: numba kernel unavailable (%s); using the torch path", _kernel_error)
    return _kernel or None


def resolve_backend(backend: str | None, pred: torch.Tensor) -> str:
    """``"numba"`` or ``"torch"`` for ``pred``: ``backend`` (None: ``$POLYDET_NMS``, default "auto").

    "auto" picks numba for float32/float64 CPU tensors when the kernel loads, else torch; "numba" raises
    where it cannot run (another device or dtype, numba missing) instead of falling back.
    """
    name = backend if backend is not None else (os.environ.get(ENV_BACKEND) or "auto")
    name = str(name).strip().lower()
    if name not in BACKENDS:
        src = "backend" if backend is not None else f"${ENV_BACKEND}"
        raise ValueError(f"{src} must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "torch":
        return "torch"
    fits = pred.device.type == "cpu" and pred.dtype in _NUMPY_DTYPES
    if not fits:
        if name == "numba":
            raise ValueError(f"the numba NMS runs on float32/float64 CPU tensors, got {pred.dtype} on {pred.device}")
        return "torch"
    if numba_kernel() is None:
        if name == "numba":
            raise RuntimeError(f"the numba NMS kernel is unavailable ({_kernel_error})")
        return "torch"
    return "numba"


def warmup(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
           backend: str | None = None) -> str:
    """Load now what polygon_nms will need for predictions on ``device`` in ``dtype``; returns the path
    it will take, "numba" or "torch" (``backend`` and ``$POLYDET_NMS`` as in :func:`resolve_backend`).

    Servers call it at start-up so that the first request does not pay for loading the numba kernel
    (~1 s from numba's cache, ~8 s compiling). Where numba cannot load, "auto" gives "torch" (logged once,
    see :func:`numba_kernel`); a setting that would make every call fail (an unknown name, or "numba"
    where it cannot run) raises here as polygon_nms would. float64 compiles its own kernel here.
    """
    name = resolve_backend(backend, torch.empty((0, 0, 10), dtype=dtype, device=device))
    if name == "numba" and dtype == torch.float64:
        _kernel.nms_image(np.zeros((2, 11), np.float64), np.float64(0.25), 0.5, False, False, 2, 30000,
                          np.ones(2, np.bool_))
    return name


def _allowed(classes, nc: int) -> np.ndarray:
    """``(nc,)`` bool: the class ids kept by ``classes`` (None: all), as torch.isin after ``.long()``."""
    if classes is None:
        return np.ones(nc, np.bool_)
    if isinstance(classes, torch.Tensor):
        classes = classes.detach().cpu().numpy()
    return np.isin(np.arange(nc), np.asarray(classes).astype(np.int64).reshape(-1))


def polygon_nms(pred: torch.Tensor, conf: float = 0.25, iou: float = 0.45, classes=None,
                agnostic: bool = False, multi_label: bool = False, max_det: int = 300,
                max_candidates: int = MAX_CANDIDATES, backend: str | None = None) -> list[torch.Tensor]:
    """Greedy polygon NMS per image: ``pred (B, N, 9+nc) -> list of B tensors (K, 10)``.

    ``pred`` rows are ``[x1, y1, ..., x4, y4, obj, cls_0..cls_{nc-1}]`` (probabilities). Candidates
    as in :func:`candidates` (``multi_label`` needs nc > 1, as in the seeds; ``classes`` keeps only
    those class ids). Within a class (across classes with ``agnostic``) a box is dropped when its exact
    convex-hull IoU with a higher-scoring kept box is >= ``iou``. Returns rows
    ``[x1..y4, score, cls]`` in the input's corner order and dtype, sorted by score descending, at most
    ``max_det``; an image with nothing gives a ``(0, 10)`` tensor, never None.

    Unlike the seeds, ``max_det`` keeps the best scores overall (the seeds cut a list grouped by class,
    which favours low class ids), and ``agnostic`` is supported.

    ``backend``: "auto" (numba for float32/float64 CPU tensors when numba loads, else torch), "numba"
    or "torch" (see :func:`resolve_backend`); None reads ``$POLYDET_NMS`` (default "auto"). Both give
    the same rows; the numba path returns tensors that do not track gradients.
    """
    _check(pred, conf, iou, max_det, max_candidates)
    multi_label = bool(multi_label) and pred.shape[2] > 10
    if resolve_backend(backend, pred) == "numba":
        a = pred.detach().numpy()
        thr, allow = a.dtype.type(conf), _allowed(classes, a.shape[2] - 9)
        big = 2 ** 62  # the kernel's ints are int64
        args = (float(iou), bool(agnostic), multi_label, min(int(max_det), big), min(int(max_candidates), big), allow)
        return [torch.from_numpy(_kernel.nms_image(np.ascontiguousarray(x), thr, *args)) for x in a]
    out = []
    for x in pred:
        quads, s, c = candidates(x, conf, classes, multi_label, int(max_candidates))
        keep = _nms_one(quads, c, iou, agnostic)[:int(max_det)]
        out.append(torch.cat((quads[keep], s[keep, None], c[keep, None].to(pred.dtype)), 1))
    return out


# The probability margin under ``conf`` below which polygon_nms_logits leaves a row out unseen: more than a
# float32 probability's rounding (at most 6e-8 in [0, 1]), so no row that could pass ``obj > conf`` is left out.
_LOGIT_MARGIN = 1e-6


def sigmoid_scores(pred: torch.Tensor) -> torch.Tensor:
    """Rows ``(..., 9+nc)`` with obj/cls logits -> the same rows with probabilities. The sigmoid is taken in
    float64 and rounded once to ``pred``'s dtype, so a row's value does not depend on where it sits."""
    return torch.cat((pred[..., :8], torch.sigmoid(pred[..., 8:].double()).to(pred.dtype)), -1)


def polygon_nms_logits(pred: torch.Tensor, conf: float = 0.25, iou: float = 0.45, **kw) -> list[torch.Tensor]:
    """:func:`polygon_nms` for rows whose obj/cls are logits (an artifact without its final sigmoids):
    ``pred (B, N, 9+nc) -> list of B (K, 10)``, the same rows as ``polygon_nms(sigmoid_scores(pred))``,
    scores as probabilities.

    The threshold is applied in logit space first: a row whose obj logit is at most
    ``logit(conf - _LOGIT_MARGIN)`` has a probability under ``conf`` and cannot be a candidate, so only
    the others get the sigmoid. They keep their order, and each image is padded with all-zero rows
    (obj 0 never passes ``obj > conf``), so the candidates, their order and the kept rows are those of
    the full sigmoid. ``kw``: as polygon_nms's.
    """
    _check(pred, conf, iou, kw.get("max_det", 300), kw.get("max_candidates", MAX_CANDIDATES))
    low = float(np.float32(conf)) - _LOGIT_MARGIN  # polygon_nms compares with conf in pred's float32
    threshold = -math.inf if low <= 0 else math.log(low / (1 - low))
    keep = pred[..., 8].double() > threshold
    counts = keep.sum(1).tolist()
    rows = pred.new_zeros((pred.shape[0], max(counts, default=0), pred.shape[2]))
    for i, n in enumerate(counts):
        rows[i, :n] = sigmoid_scores(pred[i][keep[i]])
    return polygon_nms(rows, conf, iou, **kw)
