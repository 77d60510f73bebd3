"""polygon_nms against a plain shapely greedy loop with the seeds' semantics (ops/reference.py), on both
paths (the numba kernel and the vectorized torch code), and the two paths against each other."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from polydet.ops import nms as nms_module
from polydet.ops import polygon
from polydet.ops.nms import polygon_nms
from polydet.ops.reference import shapely_nms, synthetic_predictions

pytest.importorskip("shapely")

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (the torch path is tested alone)")
# Every reference comparison runs on both paths.
BACKENDS = [pytest.param("numba", marks=needs_numba), "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def scenes(seed: int, b: int = 1, n: int = 200, nc: int = 3, **kw) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([synthetic_predictions(rng, n, nc=nc, size=250, **kw) for _ in range(b)]))


def input_rows(det: torch.Tensor, img: torch.Tensor) -> list[int]:
    """The input row of each output row (random corners identify a row)."""
    rows = []
    for r in det.numpy():
        (hit,) = np.nonzero((img.numpy()[:, :8] == r[:8]).all(1))
        assert len(hit) == 1
        rows.append(int(hit[0]))
    return rows


def check(pred: torch.Tensor, backend: str = "auto", **kw) -> list[torch.Tensor]:
    """Same rows, same order, same kept input rows as the reference; returns ours."""
    ours = polygon_nms(pred, backend=backend, **kw)
    ref, ref_rows = shapely_nms(pred.numpy(), cache_polygons=True, **kw)
    assert isinstance(ours, list) and len(ours) == len(ref) == pred.shape[0]
    for o, r, rows, img in zip(ours, ref, ref_rows, pred):
        assert o.shape == (len(r), 10) and o.dtype == pred.dtype
        np.testing.assert_array_equal(o.numpy(), r)
        if len(np.unique(img.numpy()[:, :8], axis=0)) == len(img):  # corners identify rows
            assert input_rows(o, img) == rows
    return ours


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_clustered_scenes(seed, backend):
    pred = scenes(seed, b=2)
    out = check(pred, backend)
    for o, img in zip(out, pred):
        n_cand = int(((img[:, 9:] * img[:, 8:9]).amax(1) > 0.25).sum())
        assert 5 < len(o) < n_cand / 2  # suppression happened, and not everything went
        assert torch.all(o[1:, 8] <= o[:-1, 8])  # sorted by score


@pytest.mark.parametrize("iou", [0.0, 0.1, 0.3, 0.7, 0.95, 1.0])
def test_iou_thresholds(iou, backend):
    check(scenes(10, all_pass=True), backend, iou=iou)


@pytest.mark.parametrize("kw", [
    {"multi_label": True},
    {"multi_label": True, "conf": 0.1, "iou": 0.6},
    {"agnostic": True},
    {"agnostic": True, "multi_label": True},
    {"classes": [1]},
    {"classes": [0, 2], "agnostic": True},
    {"max_det": 7},
    {"max_candidates": 40},
    {"max_candidates": 40, "multi_label": True, "max_det": 10},
    {"conf": 0.6},
], ids=str)
def test_options(kw, backend):
    check(scenes(20, b=2), backend, **kw)


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_fixed_point_fallback(monkeypatch, rounds):
    """Few lazy rounds leave pairs to the one-shot evaluation and the fixed-point pass."""
    monkeypatch.setattr(nms_module, "_ROUNDS", rounds)
    check(scenes(30, b=2, n=300, all_pass=True), "torch")
    check(scenes(31, per_object=60), "torch", iou=0.3)


def square_rows(xs, scores, cls=None, nc=2, y=0.0, side=10.0):
    """Axis-aligned squares at x offsets ``xs``: rows (1, N, 9+nc) with obj = score, class prob 1."""
    n = len(xs)
    cls = [0] * n if cls is None else cls
    p = torch.zeros(1, n, 9 + nc, dtype=torch.float64)
    for k, (x, s, c) in enumerate(zip(xs, scores, cls)):
        p[0, k, :8] = torch.tensor([x, y, x + side, y, x + side, y + side, x, y + side])
        p[0, k, 8], p[0, k, 9 + c] = s, 1.0
    return p


def test_long_chain_needs_many_rounds(backend):
    # Squares 4 px apart: neighbours have IoU 6/14 = 0.43, next-but-one 2/18 = 0.11. Greedy keeps every
    # other square, each decision depending on the one before: a chain longer than the lazy rounds.
    n = 40
    pred = square_rows([4.0 * k for k in range(n)], [1.0 - k / 100 for k in range(n)])
    out = check(pred, backend, iou=0.4)[0]
    assert input_rows(out, pred[0]) == list(range(0, n, 2))


def test_exact_small_case(backend):
    # A [0,10], C [1,11] (IoU 9/11 with A), B [5,15] (IoU 1/3 with A), D far; all class 0.
    pred = square_rows([0.0, 5.0, 1.0, 100.0], [0.9, 0.7, 0.8, 0.6])
    out = polygon_nms(pred, iou=0.45, backend=backend)[0]
    assert input_rows(out, pred[0]) == [0, 1, 3]
    torch.testing.assert_close(out[:, 8:], torch.tensor([[0.9, 0.0], [0.7, 0.0], [0.6, 0.0]], dtype=torch.float64))
    # C as another class: never suppressed by A; agnostic suppresses it again
    pred = square_rows([0.0, 5.0, 1.0, 100.0], [0.9, 0.7, 0.8, 0.6], cls=[0, 0, 1, 0])
    assert input_rows(polygon_nms(pred, iou=0.45, backend=backend)[0], pred[0]) == [0, 2, 1, 3]
    assert input_rows(polygon_nms(pred, iou=0.45, agnostic=True, backend=backend)[0], pred[0]) == [0, 1, 3]
    # identical duplicates: IoU exactly 1 is >= 1
    pred = square_rows([0.0, 0.0], [0.9, 0.8])
    assert len(polygon_nms(pred, iou=1.0, backend=backend)[0]) == 1
    # B at IoU exactly 1/3 with A: suppressed at iou 1/3 (>=), kept just above
    pred = square_rows([0.0, 5.0], [0.9, 0.8])
    assert len(polygon_nms(pred, iou=1 / 3, backend=backend)[0]) == 1
    assert len(polygon_nms(pred, iou=1 / 3 + 1e-12, backend=backend)[0]) == 2


def test_conf_boundaries_are_exclusive(backend):
    pred = torch.zeros(1, 4, 11)
    pred[0, :, :8] = torch.tensor([0, 0, 10, 0, 10, 10, 0, 10.0]) + torch.arange(4)[:, None] * 20
    pred[0, :, 8:] = torch.tensor([[0.25, 1.0, 0.0],   # obj == conf: dropped
                                   [0.5, 0.5, 0.0],    # obj * cls == conf: dropped
                                   [0.5, 0.0, 0.52],   # 0.26: kept, class 1
                                   [0.3, 0.9, 0.0]])   # 0.27: kept, class 0
    out = check(pred, backend, conf=0.25)[0]
    assert input_rows(out, pred[0]) == [3, 2]
    torch.testing.assert_close(out[:, 8], torch.tensor([0.3 * 0.9, 0.5 * 0.52]))
    assert out[:, 9].tolist() == [0.0, 1.0]
    pred[0, 3, 8] = 0.3
    assert input_rows(polygon_nms(pred, conf=0.3, backend=backend)[0], pred[0]) == []  # obj == 0.3 == conf (float32)


def test_nothing_found_gives_empty_rows_never_none(backend):
    pred = scenes(40, b=3)
    pred[1, :, 8] = 0.1  # image 1: every obj below conf
    out = check(pred, backend)
    assert out[1].shape == (0, 10) and out[1].dtype == torch.float32
    assert len(out[0]) > 0 and len(out[2]) > 0
    empty = polygon_nms(torch.zeros(2, 0, 12), backend=backend)
    assert [o.shape for o in empty] == [(0, 10), (0, 10)]
    assert polygon_nms(torch.zeros(0, 5, 12), backend=backend) == []
    for kw in ({}, {"iou": 0.0}, {"iou": 0.0, "agnostic": True}):  # max_det 0: nothing, in the right shape
        assert [o.shape for o in polygon_nms(scenes(41), max_det=0, backend=backend, **kw)] == [(0, 10)]


def test_float64_in_float64_out(backend):
    pred = scenes(50).double()
    assert polygon_nms(pred, backend=backend)[0].dtype == torch.float64
    check(pred, backend)


@pytest.mark.parametrize("kw,match", [
    ({"conf": 1.5}, "conf"), ({"conf": -0.1}, "conf"), ({"iou": 1.1}, "iou"), ({"iou": float("nan")}, "iou"),
    ({"max_det": -1}, "max_det"), ({"max_det": 2.5}, "max_det"), ({"max_candidates": 0}, "max_candidates"),
])
def test_bad_options_raise(kw, match, backend):
    with pytest.raises(ValueError, match=match):
        polygon_nms(torch.zeros(1, 3, 11), backend=backend, **kw)


@pytest.mark.parametrize("shape", [(3, 11), (1, 3, 9), (1, 3, 5)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match="9\\+nc"):
        polygon_nms(torch.zeros(shape))


# --- numba path == torch path == shapely, on sets built to hit ties, touching and degenerate quads ---

def adversarial(kind: str, seed: int, n: int = 120, nc: int = 3) -> torch.Tensor:
    """One image ``(1, n, 9+nc)`` float32 of a given kind; scores from a few levels (many exact ties)."""
    rng = np.random.default_rng(seed)
    p = np.zeros((n, 9 + nc), np.float32)
    if kind == "integer":  # corners on a 8 x 8 integer grid: duplicates, touching, collinear, bowties
        p[:, :8] = rng.integers(0, 8, (n, 8))
    elif kind == "rectangles":  # integer axis-aligned boxes (some empty), corners in random order
        x0, y0 = rng.integers(0, 20, n), rng.integers(0, 20, n)
        x1, y1 = x0 + rng.integers(0, 6, n), y0 + rng.integers(0, 6, n)
        q = np.stack([x0, y0, x1, y0, x1, y1, x0, y1], 1).reshape(n, 4, 2)
        p[:, :8] = q[np.arange(n)[:, None], rng.random((n, 4)).argsort(1)].reshape(n, 8)
    elif kind == "halves":  # unit squares at half-unit offsets: IoU exactly 1/3, 1/2, 1
        xs, ys = rng.integers(0, 16, n) / 2, rng.integers(0, 3, n) / 2
        p[:, :8] = np.stack([xs, ys, xs + 1, ys, xs + 1, ys + 1, xs, ys + 1], 1)
    elif kind == "degenerate":  # points on a line, repeated corners, next to proper quads
        c, d = rng.uniform(0, 30, (n, 1, 2)), rng.normal(0, 5, (n, 1, 2))
        q = c + rng.uniform(-1, 1, (n, 4, 1)) * d
        proper = rng.random(n) < 0.5
        q[proper] = (c + rng.normal(0, 5, (n, 4, 2)))[proper]
        rep = rng.random(n) < 0.3
        q[rep, 1] = q[rep, 0]
        p[:, :8] = q.reshape(n, 8)
    elif kind == "duplicates":  # copies of 5 quads
        p[:, :8] = rng.uniform(0, 20, (5, 8))[rng.integers(0, 5, n)]
    elif kind == "jittered":
        p = synthetic_predictions(rng, n, nc=nc, size=200.0, per_object=15)
    else:
        raise ValueError(kind)
    if kind != "jittered":
        p[:, 8] = rng.choice([0.2, 0.5, 0.9, 1.0], n)
        p[:, 9:] = rng.choice([0.0, 0.3, 0.6, 1.0], (n, nc))
    return torch.from_numpy(p[None].copy())


KINDS = ["integer", "rectangles", "halves", "degenerate", "duplicates", "jittered"]
# Thresholds a hair off the small-denominator fractions that these sets' IoUs hit exactly (1/3, 1/2):
# polygon.py's IoU is exact to ~1e-15, not to the bit (an intersection of 4 made of cut edges may come
# out as 3.9999999999999996), so exactly at such a threshold it may decide otherwise than shapely.
OPTIONS = [
    {"iou": 0.45 + 1e-7},
    {"iou": 1 / 3 + 1e-7},
    {"iou": 0.5 + 1e-7, "multi_label": True},
    {"iou": 0.3 + 1e-7, "agnostic": True, "multi_label": True, "conf": 0.1},
    {"iou": 1.0},
    {"iou": 0.0},
    {"iou": 0.0, "agnostic": True},
    {"max_det": 3, "iou": 0.6 + 1e-7},
    {"max_candidates": 10, "classes": [0, 2], "iou": 0.2 + 1e-7},
]


@needs_numba
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kw", OPTIONS, ids=str)
def test_numba_equals_torch_equals_reference(kind, kw):
    for seed in range(2):
        pred = adversarial(kind, seed)
        ours = check(pred, "numba", **kw)[0]
        theirs = polygon_nms(pred, backend="torch", **kw)[0]
        assert torch.equal(ours, theirs)


@needs_numba
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("iou", [1 / 3, 0.5, 0.6])
def test_numba_equals_torch_at_exact_fractions(kind, iou):
    """Exactly at thresholds these sets' IoUs hit, the two paths still agree: same IoU arithmetic."""
    for seed in range(3):
        pred = adversarial(kind, seed)
        for kw in ({}, {"agnostic": True, "multi_label": True}):
            assert torch.equal(polygon_nms(pred, iou=iou, backend="numba", **kw)[0],
                               polygon_nms(pred, iou=iou, backend="torch", **kw)[0])


@needs_numba
@pytest.mark.parametrize("seed", range(3))
def test_numba_equals_torch_many_random_sets(seed):
    """Many small random sets of every kind and option, numba vs torch only (no shapely: fast)."""
    rng = np.random.default_rng(100 + seed)
    for trial in range(150):
        pred = adversarial(KINDS[trial % len(KINDS)], 1000 * seed + trial, n=int(rng.integers(0, 80)),
                           nc=int(rng.integers(1, 4)))
        if trial % 5 == 0:
            pred = pred.double()
        kw = {"conf": float(rng.choice([0.0, 0.25, 0.5])),
              "iou": float(rng.choice([0.0, 1 / 3, 0.5, rng.random(), 1.0])),
              "agnostic": bool(rng.random() < 0.3), "multi_label": bool(rng.random() < 0.3),
              "max_det": int(rng.choice([0, 1, 4, 300])), "max_candidates": int(rng.choice([1, 9, 30000]))}
        a, b = polygon_nms(pred, backend="numba", **kw)[0], polygon_nms(pred, backend="torch", **kw)[0]
        assert a.dtype == b.dtype and torch.equal(a, b), (trial, kw)


def random_quads(rng, n: int) -> np.ndarray:
    """``(n, 8)`` float64: random, jittered, integer, axis-aligned, collinear and repeated-corner quads."""
    c = rng.uniform(0, 640, (n, 1, 2))
    parts = [rng.uniform(0, 100, (n, 8)), (c + rng.normal(0, 20, (n, 4, 2))).reshape(n, 8),
             rng.integers(0, 6, (n, 8)).astype(float), rng.uniform(0, 1e4, (n, 8))]
    x0, y0 = rng.integers(0, 50, (2, n))
    w, h = rng.integers(0, 9, (2, n))
    parts.append(np.stack([x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h], 1).astype(float))
    line = c + rng.uniform(-1, 1, (n, 4, 1)) * rng.normal(0, 9, (n, 1, 2))
    parts.append(line.reshape(n, 8))
    rep = (c + rng.normal(0, 20, (n, 4, 2)))
    rep[:, 2] = rep[:, 1]
    parts.append(rep.reshape(n, 8))
    return np.concatenate(parts)


@needs_numba
def test_kernel_geometry_matches_polygon_py_bit_for_bit():
    """The kernel's per-quad tables and pair IoUs are polygon.py's, bit for bit: hulls, areas, boxes and
    IoUs exactly. Two known exceptions that cannot change an IoU: the on-line tolerances (1e-9 of a
    quad's thickness) may differ in the last bit (torch takes square roots from MKL, the kernel from the
    C library), and for collinear corners (area 0, IoU 0 with anything) the angular order of corners at
    equal angles may differ (atan2 from Sleef vs the C library)."""
    from polydet.ops import _nms_numba as K

    rng = np.random.default_rng(7)
    q = random_quads(rng, 3000)
    ours = K.quad_tables(q)
    theirs = polygon.quad_tables(torch.from_numpy(q).reshape(-1, 4, 2)).T.numpy()
    flat = theirs[:, 32] == 0
    assert 2000 < flat.sum() < 6000  # the collinear set, the empty rectangles, some integer quads
    np.testing.assert_array_equal(ours[:, 32], theirs[:, 32])  # areas, all
    tol = np.zeros(ours.shape[1], bool)
    tol[28:32] = True
    np.testing.assert_array_equal(ours[~flat][:, ~tol], theirs[~flat][:, ~tol])
    np.testing.assert_allclose(ours[~flat][:, tol], theirs[~flat][:, tol], rtol=1e-15, atol=0)
    # IoUs, each side from its own tables: random pairs, every quad with itself, pairs among degenerates
    i, j = rng.integers(0, len(q), (2, 200000))
    same = np.arange(len(q))
    deg = np.nonzero(flat)[0]
    di, dj = rng.choice(deg, (2, 20000))
    i, j = np.concatenate((i, same, di, dj)), np.concatenate((j, same, dj, rng.integers(0, len(q), 20000)))
    a = K.pair_ious(ours, i, j)
    b = polygon.pair_iou(torch.from_numpy(theirs.T.copy()), torch.from_numpy(i), torch.from_numpy(j)).numpy()
    np.testing.assert_array_equal(a, b)
    assert (b > 0).sum() > 1000 and (b == 1).sum() > 100


@needs_numba
def test_ties_keep_row_order_on_both_paths():
    rng = np.random.default_rng(3)
    pred = adversarial("jittered", 3, n=150)
    pred[0, :, 8] = 1.0
    pred[0, :, 9:] = torch.from_numpy(rng.choice([0.5, 0.7], (150, 3)).astype(np.float32))  # few score levels
    for kw in ({}, {"multi_label": True}, {"agnostic": True}):
        a = check(pred, "numba", **kw)[0]
        assert torch.equal(a, polygon_nms(pred, backend="torch", **kw)[0])


@needs_numba
@pytest.mark.parametrize("agnostic", [False, True])
def test_large_max_det_and_big_boxes(agnostic):
    """Thousands of kept boxes (the kernel's grid, not n x kept comparisons), big boxes over many cells
    among small ones, two classes: the same rows as the torch path."""
    rng = np.random.default_rng(11)
    n = 6000
    c = rng.uniform(0, 640, (n, 1, 2))
    size = np.where(rng.random((n, 1, 1)) < 0.02, rng.uniform(100, 600, (n, 1, 1)), rng.uniform(1, 8, (n, 1, 1)))
    q = c + np.array([[0, 0], [1, 0], [1, 1], [0, 1]]) * size + rng.normal(0, 0.3, (n, 4, 2))
    p = np.zeros((1, n, 11), np.float32)
    p[0, :, :8] = q.reshape(n, 8)
    p[0, :, 8] = rng.uniform(0.3, 1, n)
    p[0, np.arange(n), 9 + rng.integers(0, 2, n)] = 1.0
    pred = torch.from_numpy(p)
    a = polygon_nms(pred, max_det=n, agnostic=agnostic, backend="numba")[0]
    b = polygon_nms(pred, max_det=n, agnostic=agnostic, backend="torch")[0]
    assert len(a) > 3000 and torch.equal(a, b)


@needs_numba
def test_non_finite_corners_do_not_break_the_kernel():
    pred = square_rows([0.0, 0.0, 30.0, 60.0, 90.0, 120.0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]).float()
    pred[0, 1, 0] = float("nan")
    pred[0, 3, :8] = float("inf")
    pred[0, 4, 2] = -float("inf")
    for kw in ({}, {"max_det": 100, "agnostic": True}):
        out = polygon_nms(pred, backend="numba", **kw)[0]
        finite = out[torch.isfinite(out[:, :8]).all(1)]
        assert out.shape[1] == 10 and input_rows(finite, pred[0]) == [0, 2, 5]  # the finite squares, all kept


@needs_numba
def test_strided_input_and_class_filters():
    base = scenes(60, b=2, n=150)
    wide = torch.cat((base, torch.zeros_like(base)), 1)[:, ::2]  # every other row of a bigger tensor
    pred = base[:, :75]
    assert not wide.is_contiguous()
    for kw in ({"classes": torch.tensor([0, 2])}, {"classes": np.array([1])}, {"classes": 2}, {}):
        for x in (wide, pred):
            a, b = polygon_nms(x, backend="numba", **kw), polygon_nms(x, backend="torch", **kw)
            assert all(torch.equal(u, v) for u, v in zip(a, b))


# --- choosing the path ---

@pytest.fixture
def calls(monkeypatch):
    """Counts of the calls into each path: {"numba": n, "torch": n}."""
    seen = {"numba": 0, "torch": 0}
    torch_one = nms_module._nms_one

    def spy_torch(*a, **k):
        seen["torch"] += 1
        return torch_one(*a, **k)

    monkeypatch.setattr(nms_module, "_nms_one", spy_torch)
    kernel = nms_module.numba_kernel()
    if kernel is not None:
        numba_image = kernel.nms_image

        def spy_numba(*a, **k):
            seen["numba"] += 1
            return numba_image(*a, **k)

        monkeypatch.setattr(kernel, "nms_image", spy_numba)
    return seen


@needs_numba
def test_backend_argument_and_environment(monkeypatch, calls):
    pred = scenes(70)
    monkeypatch.delenv("POLYDET_NMS", raising=False)
    polygon_nms(pred)  # auto on CPU: numba
    assert calls == {"numba": 1, "torch": 0}
    polygon_nms(pred, backend="torch")
    assert calls == {"numba": 1, "torch": 1}
    monkeypatch.setenv("POLYDET_NMS", "torch")
    polygon_nms(pred)
    assert calls == {"numba": 1, "torch": 2}
    polygon_nms(pred, backend="numba")  # the argument wins over the environment
    assert calls == {"numba": 2, "torch": 2}
    monkeypatch.setenv("POLYDET_NMS", " Numba ")
    polygon_nms(pred)
    assert calls == {"numba": 3, "torch": 2}
    monkeypatch.setenv("POLYDET_NMS", "")  # empty: auto
    polygon_nms(pred)
    assert calls == {"numba": 4, "torch": 2}
    monkeypatch.setenv("POLYDET_NMS", "cuda")
    with pytest.raises(ValueError, match="POLYDET_NMS"):
        polygon_nms(pred)
    with pytest.raises(ValueError, match="backend"):
        polygon_nms(pred, backend="fast")


@needs_numba
def test_auto_takes_torch_where_numba_cannot_run(calls):
    half = scenes(71).half()
    assert polygon_nms(half)[0].dtype == torch.float16  # auto: torch for float16
    assert calls == {"numba": 0, "torch": 1}
    with pytest.raises(ValueError, match="float32/float64 CPU"):
        polygon_nms(half, backend="numba")
    meta = torch.zeros(1, 4, 11, device="meta")  # stands in for a CUDA tensor here
    assert nms_module.resolve_backend("auto", meta) == "torch"
    with pytest.raises(ValueError, match="CPU"):
        nms_module.resolve_backend("numba", meta)


def test_falls_back_to_torch_when_numba_does_not_import(monkeypatch, caplog):
    import polydet.ops

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "polydet.ops._nms_numba", raising=False)
    monkeypatch.delattr(polydet.ops, "_nms_numba", raising=False)
    monkeypatch.setattr(nms_module, "_kernel", None)
    monkeypatch.delenv("POLYDET_NMS", raising=False)
    with caplog.at_level(logging.INFO, logger="polydet.ops.nms"):
        assert nms_module.numba_kernel() is None
        assert nms_module.numba_kernel() is None  # tried once, logged once
    assert [r.levelno for r in caplog.records if "numba kernel unavailable" in r.getMessage()] == [logging.INFO]
    pred = scenes(72, b=2)
    assert nms_module.resolve_backend(None, pred) == "torch"
    check(pred)  # auto: the torch path, right
    with pytest.raises(RuntimeError, match="unavailable.*import of numba"):
        polygon_nms(pred, backend="numba")


_CACHE_PROBE = """
import json, time, torch
from polydet.ops import nms
from polydet.ops.reference import synthetic_predictions
import numpy as np
t = time.perf_counter()
kernel = nms.numba_kernel()
load_s = time.perf_counter() - t
pred = torch.from_numpy(synthetic_predictions(np.random.default_rng(0), 300, all_pass=True))[None]
same = torch.equal(nms.polygon_nms(pred, backend="numba")[0], nms.polygon_nms(pred, backend="torch")[0])
st = kernel.nms_image.stats
try:  # what numba itself says about caching this module's functions here
    from numba import njit
    njit(cache=True)(kernel.quad_tables.py_func)
    locator = "ok"
except RuntimeError as e:
    locator = str(e)
print(json.dumps({"same": same, "cache": type(kernel.nms_image._cache).__name__, "hits": sum(st.cache_hits.values()),
                  "misses": sum(st.cache_misses.values()), "load_s": load_s, "locator": locator}))
"""


def _probe(env: dict) -> dict:
    """Runs _CACHE_PROBE in a fresh process whose only numba cache place is $NUMBA_CACHE_DIR."""
    from numba.core import caching

    only = next(n for n in ("UserProvidedCacheLocator", "_UserProvidedCacheLocator") if hasattr(caching, n))
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": only, **env}
    env.pop("POLYDET_NMS", None)
    r = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_numba
def test_numba_cache_written_then_reused(tmp_path):
    """Fresh processes (as TorchServe workers): the first compiles and writes numba's cache, the next
    loads it instead of compiling."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first = _probe(env)
    assert first["locator"] == "ok"
    assert first["same"] and first["cache"] == "FunctionCache" and first["misses"] >= 1
    assert any(Path(tmp_path / "cache").rglob("*.nbi"))
    second = _probe(env)
    assert second["same"] and second["hits"] >= 1 and second["misses"] == 0


@needs_numba
def test_numba_without_a_writable_cache_dir_still_works(tmp_path):
    """No place to write a cache (e.g. read-only site-packages, no writable home): numba would refuse
    cache=True at import; the kernel then compiles without a cache instead of failing."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _probe({"NUMBA_CACHE_DIR": str(blocker / "cache")})  # cannot be created, even as root
    assert "no locator available" in out["locator"]
    assert out["same"] and out["cache"] == "NullCache"
