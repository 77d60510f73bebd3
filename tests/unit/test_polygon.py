"""Exact polygon ops against shapely (``Polygon(q).convex_hull``), on random and adversarial quads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from polydet.ops.polygon import order_corners, polygon_area, polygon_iou
from polydet.ops.reference import shapely_iou

pytest.importorskip("shapely")

TOL = 1e-5  # the promised absolute IoU accuracy
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pixel coordinates on a 1/1024 px grid: hypothesis still finds repeated, collinear and shared corners,
# without drifting to features of 1e-79 px (the guarantee holds down to a thickness of ~1e-12 of the
# coordinates' magnitude; see test_thin_slivers). Continuous random floats: test_iou_random_sets.
coord = st.integers(-50 * 1024, 150 * 1024).map(lambda v: v / 1024)
quads = st.lists(st.tuples(coord, coord), min_size=4, max_size=4).map(lambda q: np.array(q, np.float64))
KINDS = ["identical", "reversed", "shuffled", "nested", "shrunk_corner", "shifted", "tiny", "huge",
         "collinear", "duplicate", "non_convex", "point"]


def iou1(a, b, dtype=torch.float64) -> float:
    return float(polygon_iou(torch.tensor(np.array(a)[None], dtype=dtype),
                             torch.tensor(np.array(b)[None], dtype=dtype))[0, 0])


def derive(kind: str, a: np.ndarray, data) -> tuple[np.ndarray, np.ndarray]:
    """An adversarial pair built from the quad ``a``."""
    c = a.mean(0)
    if kind == "identical":
        return a, a.copy()
    if kind == "reversed":
        return a, a[::-1].copy()
    if kind == "shuffled":
        return a, a[list(data.draw(st.permutations(range(4))))]
    if kind == "nested":  # scaled copy inside, about the centroid
        return a, c + data.draw(st.floats(0.05, 1.0)) * (a - c)
    if kind == "shrunk_corner":  # scaled about a corner: shares that corner and two edge directions
        k = data.draw(st.integers(0, 3))
        return a, a[k] + data.draw(st.floats(0.1, 1.0)) * (a - a[k])
    if kind == "shifted":
        return a, a + np.array(data.draw(st.tuples(st.floats(-30, 30), st.floats(-30, 30))))
    if kind == "tiny":
        return a * 1e-3, (a + data.draw(st.floats(-5, 5))) * 1e-3
    if kind == "huge":  # ~1e4 px, as float32 inputs would hold them
        off = np.float32(1e4)
        return (a + off).astype(np.float32).astype(np.float64), (a[::-1] + off + 7).astype(np.float32).astype(np.float64)
    if kind == "collinear":  # zero-area quad on a line through two corners of a
        t = np.array(data.draw(st.lists(st.floats(-1, 2), min_size=4, max_size=4)))
        return a, a[0] + t[:, None] * (a[2] - a[0])
    if kind == "duplicate":  # a triangle with a repeated corner
        return a, a[[0, 1, 2, 2]]
    if kind == "non_convex":  # one corner inside the triangle of the others
        w = np.array(data.draw(st.lists(st.floats(0.05, 1), min_size=3, max_size=3)))
        return a, np.vstack([a[:3], (w / w.sum()) @ a[:3]])[[0, 3, 1, 2]]
    assert kind == "point"
    return a, np.repeat(a[:1], 4, 0)


@SETTINGS
@given(quads, quads)
def test_iou_random_quads_match_shapely(a, b):
    ref = shapely_iou(a, b)
    assert abs(iou1(a, b) - ref) <= TOL
    assert abs(iou1(b, a) - ref) <= TOL


@SETTINGS
@given(st.sampled_from(KINDS), quads, st.data())
def test_iou_adversarial_quads_match_shapely(kind, a, data):
    a, b = derive(kind, a, data)
    ref = shapely_iou(a, b)
    got = iou1(a, b)
    assert np.isfinite(got) and abs(got - ref) <= TOL, (kind, got, ref)
    assert abs(iou1(b, a) - ref) <= TOL


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=8, max_size=8), st.booleans())
def test_iou_grid_rectangles_touching_and_sharing_edges(v, flip):
    """Integer rectangles: shared edges, shared corners, touching sides and containment all occur."""
    def rect(x, y, w, h):
        r = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        return r[::-1] if flip else r
    a, b = rect(v[0], v[1], v[2] + 1, v[3] + 1), rect(v[4], v[5], v[6] + 1, v[7] % 4 + 1)
    assert iou1(a, b) == pytest.approx(shapely_iou(a, b), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_iou_random_sets_match_shapely(seed):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 100, (60, 1, 2))
    a = centres + rng.normal(0, 12, (60, 4, 2))  # random corners, often non-convex or bowties
    got = polygon_iou(torch.tensor(a[:30]), torch.tensor(a[30:]))
    ref = np.array([[shapely_iou(p, q) for q in a[30:]] for p in a[:30]])
    assert (ref > 0).sum() > 50  # plenty of overlapping pairs
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("width", [1e-3, 1e-6, 1e-9, 1e-10])
def test_thin_slivers(width):
    a = np.array([[0, 0], [100, width], [100, 2 * width], [0, width]])
    b = [a[[2, 0, 3, 1]], a + [50, 0], a + [50, width / 2], a + [0, 3 * width]]
    got = polygon_iou(torch.tensor(a[None]), torch.tensor(np.stack(b)))[0].numpy()
    np.testing.assert_allclose(got, [1.0, 1 / 7, 1 / 3, 0.0], rtol=0, atol=1e-9)


def test_iou_known_values():
    sq = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], np.float64)
    half = np.array([[1, 0], [3, 0], [3, 2], [1, 2]], np.float64)
    touching = sq + [2, 0]
    corner = sq + [2, 2]
    diamond = np.array([[1, -1], [3, 1], [1, 3], [-1, 1]], np.float64)  # area 8; sq's corners on its edges
    got = polygon_iou(torch.tensor(np.stack([sq])), torch.tensor(np.stack([sq, half, touching, corner, diamond])))
    expected = torch.tensor([[1.0, 1 / 3, 0.0, 0.0, 4 / 8]], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_iou_of_a_quad_with_itself_is_exactly_one():
    q = torch.rand(64, 4, 2) * 100
    iou = polygon_iou(q, q)
    assert torch.equal(iou.diagonal(), torch.ones(64))
    assert iou.dtype == torch.float32
    q64 = q.double()[:, [3, 2, 1, 0]]  # other winding, float64
    assert torch.equal(polygon_iou(q64, q64).diagonal(), torch.ones(64, dtype=torch.float64))


def test_iou_matrix_matches_pairwise_oracle_and_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 60, (12, 4, 2))
    b = np.concatenate([rng.uniform(0, 60, (9, 4, 2)), a[:3], a[3:5, ::-1]])  # some identical, reversed
    got = polygon_iou(torch.tensor(a), torch.tensor(b))
    ref = np.array([[shapely_iou(p, q) for q in b] for p in a])
    assert got.shape == (12, 14)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL)
    torch.testing.assert_close(polygon_iou(torch.tensor(b), torch.tensor(a)), got.T, rtol=0, atol=1e-12)


def test_degenerate_quads_give_finite_values_and_zero_union_gives_zero():
    sq = [[0, 0], [4, 0], [4, 4], [0, 4]]
    degenerate = [
        [[1, 1]] * 4,  # one point
        [[0, 0], [4, 4], [0, 0], [4, 4]],  # a segment, corners repeated
        [[0, 0], [1, 0], [2, 0], [3, 0]],  # collinear, on the square's edge
        [[0, 2], [4, 2], [2, 2], [1, 2]],  # collinear, across the square
    ]
    a = torch.tensor(degenerate + [sq], dtype=torch.float32)
    iou = polygon_iou(a, a)
    assert torch.isfinite(iou).all()
    expected = torch.zeros(5, 5)
    expected[4, 4] = 1.0  # degenerate vs anything: 0; degenerate vs degenerate: union 0 -> 0
    assert torch.equal(iou, expected)


def test_non_convex_quad_is_its_convex_hull():
    dart = np.array([[0, 0], [4, 2], [0, 4], [1, 2]], np.float64)  # (1, 2) is inside the triangle
    triangle = np.array([[0, 0], [4, 2], [0, 4]], np.float64)
    assert float(polygon_area(order_corners(torch.tensor(dart)))) == 5.0  # the simple dart (0,0),(1,2),(4,2),(0,4)
    assert iou1(dart, np.vstack([triangle, triangle[:1]])) == 1.0  # == its hull (area 8)
    assert iou1(dart, [[0, 0], [4, 0], [4, 4], [0, 4]]) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("dtype,out", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                       (torch.int64, torch.float32)])
def test_iou_dtypes(dtype, out):
    a = torch.tensor([[[0, 0], [2, 0], [2, 2], [0, 2]]], dtype=dtype)
    got = polygon_iou(a, a + 1)
    assert got.dtype == out and got.shape == (1, 1)
    assert float(got) == pytest.approx(1 / 7)


def test_empty_in_empty_out():
    q = torch.rand(3, 4, 2)
    assert polygon_iou(torch.zeros(0, 4, 2), q).shape == (0, 3)
    assert polygon_iou(q, torch.zeros(0, 4, 2)).shape == (3, 0)
    assert polygon_iou(torch.zeros(0, 4, 2), torch.zeros(0, 4, 2)).shape == (0, 0)
    assert polygon_area(torch.zeros(0, 4, 2)).shape == (0,)
    assert order_corners(torch.zeros(0, 4, 2)).shape == (0, 4, 2)
    assert order_corners(torch.zeros(2, 0, 4, 2)).shape == (2, 0, 4, 2)


@pytest.mark.parametrize("shape", [(8,), (3, 4), (3, 5, 2), (3, 4, 3)])
def test_bad_shapes_raise(shape):
    good = torch.zeros(1, 4, 2)
    for f in (lambda x: polygon_iou(x, good), lambda x: polygon_iou(good, x), polygon_area, order_corners):
        with pytest.raises(ValueError, match=r"\(\.\.\., 4, 2\)"):
            f(torch.zeros(shape))


def test_iou_rejects_batched_input():
    with pytest.raises(ValueError, match=r"\(N,4,2\)"):
        polygon_iou(torch.zeros(2, 3, 4, 2), torch.zeros(1, 4, 2))


def test_polygon_area_exact_values_and_batch_shape():
    q = torch.tensor([[[0, 0], [3, 0], [3, 2], [0, 2]],  # 6
                      [[0, 2], [3, 2], [3, 0], [0, 0]],  # 6, other winding
                      [[0, 0], [4, 0], [0, 3], [0, 3]],  # triangle with a repeated corner: 6
                      [[0, 0], [2, 2], [2, 0], [0, 2]]],  # bowtie: shoelace 0
                     dtype=torch.float32)
    assert torch.equal(polygon_area(q), torch.tensor([6.0, 6.0, 6.0, 0.0]))
    assert polygon_area(q.view(2, 2, 4, 2)).shape == (2, 2)
    assert polygon_area(q.double()).dtype == torch.float64


@SETTINGS
@given(quads)
def test_polygon_area_of_ordered_quads_matches_shapely(a):
    from shapely.geometry import Polygon

    ordered = order_corners(torch.tensor(a)).numpy()
    assert float(polygon_area(torch.tensor(ordered))) == pytest.approx(Polygon(ordered).area, abs=1e-6)


# ---- order_corners ------------------------------------------------------------------------------

def seed_rule(q: np.ndarray) -> np.ndarray:
    """The seeds' rule: top two by (y, x) left to right, bottom two right to left."""
    o = np.lexsort((q[:, 0], q[:, 1]))
    top = o[:2][np.argsort(q[o[:2], 0], kind="stable")]
    bottom = o[2:][np.argsort(-q[o[2:], 0], kind="stable")]
    return q[np.concatenate([top, bottom])]


def crosses(p0, p1, p2, p3) -> bool:
    def cr(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    return cr(p0, p1, p2) * cr(p0, p1, p3) < 0 and cr(p2, p3, p0) * cr(p2, p3, p1) < 0


def simple_clockwise(q) -> bool:
    x, y = q[:, 0], q[:, 1]
    shoelace = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
    return not crosses(*q) and not crosses(q[1], q[2], q[3], q[0]) and shoelace >= 0


RECT = [[0, 0], [4, 0], [4, 2], [0, 2]]


@pytest.mark.parametrize("perm", list(itertools.permutations(range(4))))
def test_order_corners_rectangle_any_input_order(perm):
    q = torch.tensor(RECT, dtype=torch.float32)[list(perm)]
    assert torch.equal(order_corners(q), torch.tensor(RECT, dtype=torch.float32))


@pytest.mark.parametrize("quad,expected", [
    # tilted rectangle: the seeds' rule
    ([[10, 0], [12, 8], [2, 10], [0, 2]], [[0, 2], [10, 0], [12, 8], [2, 10]]),
    ([[0, 2], [2, 10], [12, 8], [10, 0]], [[0, 2], [10, 0], [12, 8], [2, 10]]),
    # diamond: the middle corners tie in y; the left one is on top (ties by x)
    ([[5, 0], [10, 5], [5, 10], [0, 5]], [[0, 5], [5, 0], [10, 5], [5, 10]]),
    # sheared sliver: the seeds' rule gives the bowtie (0,0),(1,1),(100,17),(50,20); clockwise instead
    ([[50, 20], [1, 1], [100, 17], [0, 0]], [[0, 0], [100, 17], [50, 20], [1, 1]]),
    # dart (non-convex): the seeds' rule gives a simple clockwise quad, kept
    ([[0, 0], [4, 2], [0, 4], [1, 2]], [[0, 0], [1, 2], [4, 2], [0, 4]]),
    # non-convex, where the seeds' rule gives the counter-clockwise (2,0),(2,3),(5,5),(4,4)
    ([[4, 4], [2, 0], [5, 5], [2, 3]], [[2, 0], [5, 5], [4, 4], [2, 3]]),
])
def test_order_corners_exact(quad, expected):
    got = order_corners(torch.tensor(quad, dtype=torch.float64))
    assert got.tolist() == expected


def test_order_corners_keeps_batch_shape_and_dtype():
    q = torch.tensor(RECT, dtype=torch.float16)[[2, 0, 3, 1]].expand(2, 3, 4, 2)
    got = order_corners(q)
    assert got.shape == (2, 3, 4, 2) and got.dtype == torch.float16
    assert torch.equal(got, torch.tensor(RECT, dtype=torch.float16).expand(2, 3, 4, 2))


@SETTINGS
@given(quads, st.permutations(range(4)))
def test_order_corners_properties(a, perm):
    got = order_corners(torch.tensor(a)).numpy()
    # the same 4 points, simple and clockwise on screen
    assert sorted(map(tuple, got)) == sorted(map(tuple, a))
    assert simple_clockwise(got)
    seed = seed_rule(a)
    if simple_clockwise(seed):
        np.testing.assert_array_equal(got, seed)
    assume(len({tuple(p) for p in a}) == 4)
    np.testing.assert_array_equal(order_corners(torch.tensor(a[list(perm)])).numpy(), got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.uniform(0, 50, (300, 4, 2)), dtype=torch.float32)
    b = torch.cat((a[:100], torch.tensor(rng.uniform(0, 50, (200, 4, 2)), dtype=torch.float32)))
    cpu = polygon_iou(a, b)
    gpu = polygon_iou(a.cuda(), b.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
    assert torch.equal(order_corners(a.cuda()).cpu(), order_corners(a))
