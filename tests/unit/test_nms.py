"""polygon_nms against a plain shapely greedy loop with the seeds' semantics (ops/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polydet.ops import nms as nms_module
from polydet.ops.nms import polygon_nms
from polydet.ops.reference import shapely_nms, synthetic_predictions

pytest.importorskip("shapely")


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


def check(pred: torch.Tensor, **kw) -> list[torch.Tensor]:
    """Same rows, same order, same kept input rows as the reference; returns ours."""
    ours = polygon_nms(pred, **kw)
    ref, ref_rows = shapely_nms(pred.numpy(), cache_polygons=True, **kw)
    assert isinstance(ours, list) and len(ours) == len(ref) == pred.shape[0]
    for o, r, rows, img in zip(ours, ref, ref_rows, pred):
        assert o.shape == (len(r), 10) and o.dtype == pred.dtype
        np.testing.assert_array_equal(o.numpy(), r)
        assert input_rows(o, img) == rows
    return ours


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_clustered_scenes(seed):
    pred = scenes(seed, b=2)
    out = check(pred)
    for o, img in zip(out, pred):
        n_cand = int(((img[:, 9:] * img[:, 8:9]).amax(1) > 0.25).sum())
        assert 5 < len(o) < n_cand / 2  # suppression happened, and not everything went
        assert torch.all(o[1:, 8] <= o[:-1, 8])  # sorted by score


@pytest.mark.parametrize("iou", [0.0, 0.1, 0.3, 0.7, 0.95, 1.0])
def test_iou_thresholds(iou):
    check(scenes(10, all_pass=True), iou=iou)


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
def test_options(kw):
    check(scenes(20, b=2), **kw)


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_fixed_point_fallback(monkeypatch, rounds):
    """Few lazy rounds leave pairs to the one-shot evaluation and the fixed-point pass."""
    monkeypatch.setattr(nms_module, "_ROUNDS", rounds)
    check(scenes(30, b=2, n=300, all_pass=True))
    check(scenes(31, per_object=60), iou=0.3)


def square_rows(xs, scores, cls=None, nc=2, y=0.0, side=10.0):
    """Axis-aligned squares at x offsets ``xs``: rows (1, N, 9+nc) with obj = score, class prob 1."""
    n = len(xs)
    cls = [0] * n if cls is None else cls
    p = torch.zeros(1, n, 9 + nc, dtype=torch.float64)
    for k, (x, s, c) in enumerate(zip(xs, scores, cls)):
        p[0, k, :8] = torch.tensor([x, y, x + side, y, x + side, y + side, x, y + side])
        p[0, k, 8], p[0, k, 9 + c] = s, 1.0
    return p


def test_long_chain_needs_many_rounds():
    # Squares 4 px apart: neighbours have IoU 6/14 = 0.43, next-but-one 2/18 = 0.11. Greedy keeps every
    # other square, each decision depending on the one before: a chain longer than the lazy rounds.
    n = 40
    pred = square_rows([4.0 * k for k in range(n)], [1.0 - k / 100 for k in range(n)])
    out = check(pred, iou=0.4)[0]
    assert input_rows(out, pred[0]) == list(range(0, n, 2))


def test_exact_small_case():
    # A [0,10], C [1,11] (IoU 9/11 with A), B [5,15] (IoU 1/3 with A), D far; all class 0.
    pred = square_rows([0.0, 5.0, 1.0, 100.0], [0.9, 0.7, 0.8, 0.6])
    out = polygon_nms(pred, iou=0.45)[0]
    assert input_rows(out, pred[0]) == [0, 1, 3]
    torch.testing.assert_close(out[:, 8:], torch.tensor([[0.9, 0.0], [0.7, 0.0], [0.6, 0.0]], dtype=torch.float64))
    # C as another class: never suppressed by A; agnostic suppresses it again
    pred = square_rows([0.0, 5.0, 1.0, 100.0], [0.9, 0.7, 0.8, 0.6], cls=[0, 0, 1, 0])
    assert input_rows(polygon_nms(pred, iou=0.45)[0], pred[0]) == [0, 2, 1, 3]
    assert input_rows(polygon_nms(pred, iou=0.45, agnostic=True)[0], pred[0]) == [0, 1, 3]
    # identical duplicates: IoU exactly 1 is >= 1
    pred = square_rows([0.0, 0.0], [0.9, 0.8])
    assert len(polygon_nms(pred, iou=1.0)[0]) == 1


def test_conf_boundaries_are_exclusive():
    pred = torch.zeros(1, 4, 11)
    pred[0, :, :8] = torch.tensor([0, 0, 10, 0, 10, 10, 0, 10.0]) + torch.arange(4)[:, None] * 20
    pred[0, :, 8:] = torch.tensor([[0.25, 1.0, 0.0],   # obj == conf: dropped
                                   [0.5, 0.5, 0.0],    # obj * cls == conf: dropped
                                   [0.5, 0.0, 0.52],   # 0.26: kept, class 1
                                   [0.3, 0.9, 0.0]])   # 0.27: kept, class 0
    out = check(pred, conf=0.25)[0]
    assert input_rows(out, pred[0]) == [3, 2]
    torch.testing.assert_close(out[:, 8], torch.tensor([0.3 * 0.9, 0.5 * 0.52]))
    assert out[:, 9].tolist() == [0.0, 1.0]
    pred[0, 3, 8] = 0.3
    assert input_rows(polygon_nms(pred, conf=0.3)[0], pred[0]) == []  # obj == 0.3 == conf (float32)


def test_nothing_found_gives_empty_rows_never_none():
    pred = scenes(40, b=3)
    pred[1, :, 8] = 0.1  # image 1: every obj below conf
    out = check(pred)
    assert out[1].shape == (0, 10) and out[1].dtype == torch.float32
    assert len(out[0]) > 0 and len(out[2]) > 0
    empty = polygon_nms(torch.zeros(2, 0, 12))
    assert [o.shape for o in empty] == [(0, 10), (0, 10)]
    assert polygon_nms(torch.zeros(0, 5, 12)) == []


def test_float64_in_float64_out():
    pred = scenes(50).double()
    assert polygon_nms(pred)[0].dtype == torch.float64


@pytest.mark.parametrize("kw,match", [
    ({"conf": 1.5}, "conf"), ({"conf": -0.1}, "conf"), ({"iou": 1.1}, "iou"), ({"iou": float("nan")}, "iou"),
    ({"max_det": -1}, "max_det"), ({"max_det": 2.5}, "max_det"), ({"max_candidates": 0}, "max_candidates"),
])
def test_bad_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        polygon_nms(torch.zeros(1, 3, 11), **kw)


@pytest.mark.parametrize("shape", [(3, 11), (1, 3, 9), (1, 3, 5)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match="9\\+nc"):
        polygon_nms(torch.zeros(shape))
