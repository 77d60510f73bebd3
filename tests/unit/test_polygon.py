"""Exact polygon ops against shapely (``Polygon(q).convex_hull``) and an exact rational oracle, on random
and adversarial quads."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
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


# ---- the exact oracle: the seeds' IoU (convex hulls) in rational arithmetic ------------------------
# Every float64 is a rational number, so the hulls (orientation tests), the clipped intersection
# (Sutherland-Hodgman: both polygons are convex) and the areas (shoelace) are exact; only the final
# IoU is rounded, once. Independent of polygon.py's algorithm and of GEOS, and slow (~1 ms a pair).

def _cross(o, a, b):
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def exact_hull(points) -> list[tuple[Fraction, Fraction]]:
    """Convex hull, counter-clockwise (y up), without collinear points; fewer than 3 when degenerate."""
    pts = sorted({(Fraction(float(x)), Fraction(float(y))) for x, y in np.asarray(points, np.float64)})
    if len(pts) < 3:
        return pts
    lower, upper = [], []  # Andrew's monotone chain
    for chain, seq in ((lower, pts), (upper, pts[::-1])):
        for p in seq:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
    hull = lower[:-1] + upper[:-1]
    return hull if len(hull) >= 3 else hull[:2]  # all collinear: the two ends


def exact_area(poly) -> Fraction:
    n = len(poly)
    if n < 3:
        return Fraction(0)
    return abs(sum(poly[i][0] * poly[i - 1][1] - poly[i - 1][0] * poly[i][1] for i in range(n))) / 2


def exact_clip(subject, clip) -> list:
    """``subject`` cut by each edge's half-plane of the convex counter-clockwise ``clip``."""
    out = list(subject)
    for i in range(len(clip)):
        a, b = clip[i], clip[(i + 1) % len(clip)]
        pts, out = out, []
        for j in range(len(pts)):
            p, q = pts[j], pts[(j + 1) % len(pts)]
            sp, sq = _cross(a, b, p), _cross(a, b, q)
            if sp >= 0:
                out.append(p)
            if (sp > 0 > sq) or (sp < 0 < sq):
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not out:
            break
    return out


def exact_iou(p, q) -> float:
    """IoU of the convex hulls of ``p`` and ``q`` (4, 2), exact up to the last rounding; 0 when the
    union has no area (as ``shapely_iou``)."""
    a, b = exact_hull(p), exact_hull(q)
    inter = exact_area(exact_clip(a, b)) if len(a) >= 3 and len(b) >= 3 else Fraction(0)
    union = exact_area(a) + exact_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def shapely_overlay_consistent(p, q) -> bool:
    """Whether GEOS's overlay of the two hulls obeys inclusion-exclusion, area(A & B) + area(A | B) =
    area(A) + area(B), to 1e-9 of area(A) + area(B) (float64 overlays hold it to ~1e-15). Where it
    does not, GEOS has failed on the pair (seen: a 1/1024 px wide sliver inside another, whose
    intersection GEOS 3.14 returns empty) and shapely's IoU is no oracle for it."""
    from shapely.geometry import Polygon

    a = Polygon(np.asarray(p, np.float64)).convex_hull
    b = Polygon(np.asarray(q, np.float64)).convex_hull
    total = a.area + b.area
    return abs(a.intersection(b).area + a.union(b).area - total) <= 1e-9 * total


def check_iou(a, b) -> bool:
    """polygon_iou of (a, b) and (b, a) within TOL of the exact IoU; and, as before, within TOL of
    shapely's (the seeds' oracle), which must itself agree with the exact IoU, wherever GEOS's overlay
    is consistent (see shapely_overlay_consistent). Returns whether shapely was checked."""
    exact = exact_iou(a, b)
    got = (iou1(a, b), iou1(b, a))
    assert all(np.isfinite(g) and abs(g - exact) <= TOL for g in got), (got, exact)
    if shapely_overlay_consistent(a, b):
        ref = shapely_iou(a, b)
        assert abs(ref - exact) <= TOL, (ref, exact)
        assert all(abs(g - ref) <= TOL for g in got), (got, ref)
        return True
    return False


class Draws:
    """Stands in for ``st.data()`` in an ``@example``: ``draw`` returns the given values in order."""

    def __init__(self, *values):
        self.values = list(values)

    def draw(self, strategy, label=None):
        return self.values.pop(0)

    def __repr__(self):
        return f"Draws{tuple(self.values)}"


# Found by hypothesis: a 1/1024 px wide triangle 47.6 px long, and its copy scaled by 0.69 about its
# far corner (inside it, up to the rounding of the scaled corners). IoU 0.69^2 = 0.4757; shapely: 0.
SLIVER = np.array([(0.0, 0.0), (0.0009765625, -47.5947265625), (0.0, 0.0), (0.0, 0.0009765625)], np.float64)
SLIVER_SCALE = 0.6896947811967924


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
    if not check_iou(a, b):
        event("GEOS overlay inconsistent: exact oracle only")


@SETTINGS
@given(st.sampled_from(KINDS), quads, st.data())
@example("shrunk_corner", SLIVER, Draws(1, SLIVER_SCALE))
def test_iou_adversarial_quads_match_shapely(kind, a, data):
    a, b = derive(kind, a, data)
    if not check_iou(a, b):
        event("GEOS overlay inconsistent: exact oracle only")


def test_sliver_inside_a_sliver_against_the_exact_iou():
    """The sliver case on its own: GEOS's overlay fails on it, the exact oracle and polygon_iou agree."""
    a, b = derive("shrunk_corner", SLIVER, Draws(1, SLIVER_SCALE))
    exact = exact_iou(a, b)
    assert exact == pytest.approx(SLIVER_SCALE ** 2, abs=1e-9)  # b is a inside itself, scaled by 0.69
    assert shapely_iou(a, b) == 0.0 or shapely_overlay_consistent(a, b)  # GEOS 3.14: 0 (a newer GEOS may fix it)
    for got in (iou1(a, b), iou1(b, a)):
        assert got == pytest.approx(exact, abs=1e-9)
    check_iou(a, b)


def test_sliver_with_a_corner_just_outside_the_other():
    """Found with the exact oracle (shapely agrees with it here): the sliver scaled by 0.894 about its
    far corner, then rounded to float32 (as detections are), sticks out of the sliver by ~4e-12 px.
    polygon_iou gave 0.0 one way and 0.7993 the other (the exact IoU is 0.7990): the two long edges
    were judged with different quads' tolerances, so one was dropped as a copy of the other while
    the other was cut away as outside; and the tolerance of the coordinates' magnitude was larger than
    the corner's 4e-12 px. See test_random_float32_slivers_against_the_exact_iou for many more."""
    b = (SLIVER[1] + 0.8940653925659252 * (SLIVER - SLIVER[1])).astype(np.float32).astype(np.float64)
    exact = exact_iou(SLIVER, b)
    assert exact == pytest.approx(0.7989877281, abs=1e-9) and shapely_iou(SLIVER, b) == pytest.approx(exact)
    assert abs(iou1(SLIVER, b) - exact) <= TOL and abs(iou1(b, SLIVER) - exact) <= TOL


def random_slivers(rng, n):
    """``n`` pairs (a, b) of float32 slivers: a 1/1024 ... 1/8 px wide needle (SLIVER's shape, at the
    origin or anywhere in a 100 px image), thin triangle or thin quad (any direction), and b a copy of
    a scaled about one of its corners, with or without one corner then nudged by a few float32 ulps,
    or a itself with one corner nudged (just inside or just outside a)."""
    pairs = []
    for _ in range(n):
        w, length = 2.0 ** -rng.integers(3, 11), rng.uniform(5, 60)
        o = rng.integers(0, 100 * 1024, 2) / 1024 * (rng.random() < 0.75)
        ang = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(ang), np.sin(ang)])
        side = np.array([-d[1], d[0]])
        shape = rng.integers(3)
        if shape == 0:  # SLIVER's needle
            a = o + np.array([(0, 0), (w, -length), (0, 0), (0, w)])
        elif shape == 1:
            a = o + np.array([0 * d, length * d, length * d, w * side])
        else:
            a = o + np.array([0 * d, length * d, length * d + w * side, w * side])
        a = a.astype(np.float32)
        how = rng.integers(3)  # 0: scaled, 1: scaled and nudged, 2: nudged
        k = rng.integers(4)
        b = a.copy() if how == 2 else (a[k] + rng.uniform(0.05, 1.0) * (a - a[k])).astype(np.float32)
        if how:
            c = rng.integers(4)
            b[c] += rng.integers(-3, 4, 2).astype(np.float32) * np.spacing(b[c])
        pairs.append((a.astype(np.float64), b.astype(np.float64)))
    return pairs


def test_random_float32_slivers_against_the_exact_iou():
    """Many slivers as test_sliver_with_a_corner_just_outside_the_other: nearly collinear edges whose
    corners lie just inside or outside the other quad's, in both argument orders."""
    rng = np.random.default_rng(0)
    pairs = random_slivers(rng, 1500)
    a = torch.tensor(np.stack([p for p, _ in pairs]))
    b = torch.tensor(np.stack([q for _, q in pairs]))
    ab, ba = polygon_iou(a, b).diagonal().numpy(), polygon_iou(b, a).diagonal().numpy()
    exact = np.array([exact_iou(p, q) for p, q in pairs])
    assert (exact > 0.1).sum() > 500  # mostly overlapping pairs
    for got in (ab, ba):
        bad = np.flatnonzero(~(np.abs(got - exact) <= TOL))
        assert bad.size == 0, [(pairs[m], got[m], exact[m]) for m in bad[:3]]


def test_exact_oracle_known_values():
    sq = [[0, 0], [2, 0], [2, 2], [0, 2]]
    assert exact_iou(sq, np.array(sq) + [1, 0]) == 1 / 3
    assert exact_iou(sq, [[1, -1], [3, 1], [1, 3], [-1, 1]]) == 0.5  # sq's corners on the diamond's edges
    assert exact_iou(sq, np.array(sq) + 2) == 0.0  # touching at a corner
    assert exact_iou(sq, [[0, 0], [2, 2], [2, 0], [0, 2]]) == 1.0  # a bowtie is its hull
    assert exact_iou(sq, [[1, 1]] * 4) == 0.0 and exact_iou([[1, 1]] * 4, [[1, 1]] * 4) == 0.0
    assert exact_iou([[0, 0], [1, 0], [2, 0], [3, 0]], [[0, 0], [3, 0], [1, 0], [2, 0]]) == 0.0  # no area
    dart = [[0, 0], [4, 2], [0, 4], [1, 2]]
    assert exact_iou(dart, [[0, 0], [4, 2], [0, 4], [0, 0]]) == 1.0


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
