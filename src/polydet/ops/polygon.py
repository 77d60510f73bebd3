"""Exact geometry of 4-corner polygons (quads), vectorized in torch: the same code runs on CPU and CUDA.

A quad is a ``(4, 2)`` tensor of ``(x, y)`` corners in image pixels (y points down). IoU treats every
quad as the convex hull of its 4 corners, like the seeds' shapely oracle ``Polygon(q).convex_hull``,
so corner order, winding and a non-convex input do not matter.

How the intersection area is exact without clipping polygons: by Green's theorem the area of a convex
region is ``1/2 * sum(cross(p, q))`` over its boundary segments ``p -> q``. The boundary of ``A & B``
is made of the pieces of A's edges that lie inside B and the pieces of B's edges that lie inside A.
A piece ``a + t*e, t in [t0, t1]`` contributes ``(t1 - t0) * cross(a, e)``, and ``[t0, t1]`` is one
interval per edge (the edge clipped by the other quad's 4 half-planes). So each pair costs a fixed
grid of 8 edges x 4 half-planes of elementwise operations: no sorting, no variable-length polygons,
no loop over pairs. Per-quad quantities are computed once (quad_tables) and gathered per pair.
An edge that lies on an edge of the other quad is counted once (A's copy when both run the same way;
both, cancelling, when they run opposite ways, as for two quads that only touch); "lies on" is one
verdict for both copies. The sides and the terms are computed relative to the pair (differences of
nearby coordinates), so accuracy does not depend on where in the image a pair is.
"""

from __future__ import annotations

import torch

# "On the line" tolerance, as a fraction of the quad's thickness: a point this close to an edge counts
# as on it. Far above float64 rounding (1e-16), far below the 1e-5 IoU accuracy promised.
_REL_TOL = 1e-9
# Pairs evaluated per block in polygon_iou, to bound memory (~2.5 kB of float64 temporaries a pair).
_CHUNK = 16384


def _as_quads(x, name: str) -> torch.Tensor:
    """``x`` as a tensor of shape ``(..., 4, 2)``, else ValueError naming ``name``."""
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if x.ndim < 2 or tuple(x.shape[-2:]) != (4, 2):
        raise ValueError(f"{name} must have shape (..., 4, 2) (4 corners of x, y), got {tuple(x.shape)}")
    return x


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps 1e-5 IoU accuracy for coordinates up to ~1e4 px; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype.is_floating_point else torch.float32


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """z of the 2-D cross product, ``(..., 2), (..., 2) -> (...)``."""
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def polygon_area(q: torch.Tensor) -> torch.Tensor:
    """Absolute shoelace area of quads in their given corner order, ``(..., 4, 2) -> (...)``.

    A self-intersecting corner order (a "bowtie") gives the shoelace value, not the hull's area:
    pass ``order_corners(q)`` for quads of unknown order. Empty in, empty out.
    """
    q = _as_quads(q, "q")
    out = _out_dtype(q.dtype)
    d = (q[..., 1:, :] - q[..., :1, :]).to(_work_dtype(q.device))  # relative to corner 0: no cancellation
    area = 0.5 * (_cross(d[..., 0, :], d[..., 1, :]) + _cross(d[..., 1, :], d[..., 2, :])).abs()
    return area.to(out)


_NEXT = [1, 2, 3, 0]
_PREV = [3, 0, 1, 2]
_LOWER = torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)[..., None]  # [u, v]: u < v, breaks angle ties


def _hull_rows(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Convex hull of K quads given as corner rows ``x, y (4, K)``, as rows ``(4, K)`` of 4 corners
    with a positive shoelace (clockwise on screen). A corner inside the other three's triangle is
    replaced by a copy of its predecessor (a zero-length edge), so every hull keeps 4 corners."""
    ang = torch.atan2(y - y.mean(0), x - x.mean(0))  # (4, K): star-shaped order around the centroid
    before = (ang[:, None] < ang[None]) | ((ang[:, None] == ang[None]) & _LOWER.to(ang.device))
    rank = before.sum(0)  # (4, K): position of each corner in angular order, ties by index
    hx, hy = torch.empty_like(x).scatter_(0, rank, x), torch.empty_like(y).scatter_(0, rank, y)
    prev, nxt = torch.tensor(_PREV, device=x.device), torch.tensor(_NEXT, device=x.device)
    px, py = hx.index_select(0, prev), hy.index_select(0, prev)
    nx, ny = hx.index_select(0, nxt), hy.index_select(0, nxt)
    # In a star-shaped quad only a corner inside the others' triangle turns the wrong way.
    reflex = (hx - px) * (ny - hy) - (hy - py) * (nx - hx) < 0
    return torch.where(reflex, px, hx), torch.where(reflex, py, hy)


# Row layout of the per-quad table ``(37, K)`` built by quad_tables: one column per quad, so that the
# per-pair work below runs along long contiguous rows. Corners are the hull's.
_PX = slice(0, 8)  # x of corners 0, 1, 2, 3, then of corners 1, 2, 3, 0 (each edge's start, end)
_PY = slice(8, 16)  # y of the same
_EDGE = slice(16, 32)  # edge x (16:20), edge y (20:24), cross(edge, start) (24:28), tolerance (28:32)
# (cross(edge, start) is in image coordinates and not used by pair_iou, which works relative to the pair)
_AREA = 32  # hull area, exactly 0 for (near-)collinear quads
_BOX = slice(33, 37)  # axis-aligned box x0, y0, x1, y1


def quad_tables(q: torch.Tensor) -> torch.Tensor:
    """Per-quad table ``(37, K)`` of ``q (K, 4, 2)`` for :func:`pair_iou` (rows: see ``_PX`` etc.;
    pass a float64 ``q`` for 1e-5 IoU accuracy).

    The side of a point p w.r.t. hull edge k (start h_k, direction e_k) is ``s = cross(e_k, p - h_k)``
    (pair_iou takes it from the differences ``p - h_k``); ``s >= 0`` is inside.
    """
    rows = q.reshape(-1, 8).T  # (8, K): x0, y0, x1, y1, ...
    hx, hy = _hull_rows(rows[0::2], rows[1::2])
    nxt = torch.tensor(_NEXT, device=q.device)
    nx, ny = hx.index_select(0, nxt), hy.index_select(0, nxt)
    ex, ey = nx - hx, ny - hy
    c = ex * hy - ey * hx
    lo = torch.stack((hx.amin(0), hy.amin(0)))
    hi = torch.stack((hx.amax(0), hy.amax(0)))
    dx, dy = hx - hx[:1], hy - hy[:1]  # relative to corner 0: exact for small quads far out
    t1, t2 = dx * dy.index_select(0, nxt), dy * dx.index_select(0, nxt)
    area2 = (t1 - t2).sum(0)
    # Collinear corners (shapely's hull is then a line, of area 0): the shoelace sum is within rounding
    # of 0, i.e. tiny next to the magnitude of its terms (not next to the size: thin quads keep area).
    area = torch.where(area2 > 1e-10 * (t1.abs() + t2.abs()).sum(0), 0.5 * area2, 0.0)
    # On-line tolerance, shape part: 1e-9 of the quad's thickness (area / size, so that slivers keep
    # their shape) as a distance, times the edge's length (s is a distance times |e|). The rounding part
    # depends on both quads of a pair and is added in pair_iou.
    thick = area / (hi - lo).amax(0).clamp(min=torch.finfo(area.dtype).tiny)
    tol = _REL_TOL * thick * (ex * ex + ey * ey).sqrt()
    return torch.cat((hx, nx, hy, ny, ex, ey, c, tol, area[None], lo[:1], lo[1:], hi[:1], hi[1:]))


def _cols(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Columns ``idx`` of the table ``t (F, K)`` -> ``(F, len(idx))`` (gather: several times faster on
    CPU than index_select along dim 1)."""
    return torch.gather(t, 1, idx.expand(t.shape[0], -1))


def pair_iou(t: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """IoU of quad ``i[p]`` with quad ``j[p]`` of one :func:`quad_tables` table: ``(P,), (P,) -> (P,)``.

    Columns 0..P-1 clip i's edges by j's half-planes, columns P..2P-1 the other way round; each edge
    keeps the parameter interval inside all 4 half-planes and contributes that fraction of its term.
    """
    n = i.numel()
    own = _cols(t, torch.cat((i, j)))  # (37, 2P): the quads whose edges are clipped
    clip = _cols(t[:_AREA], torch.cat((j, i)))  # (32, 2P): the clipping quads' corners and edges
    ex, ey, tol = clip[16:20, None], clip[20:24, None], clip[28:32, None]  # each (4 half-planes, 1, 2P)
    hx, hy = clip[0:4, None], clip[8:12, None]
    # Everything relative to the pair, not to the image's origin: s = cross(e, p - h) from the
    # differences p - h (exact for nearby points, by Sterbenz), and the shoelace terms about a corner
    # of i (below). In absolute coordinates the products ey * px carry rounding of the coordinates'
    # magnitude, which swamps slivers thinner than ~1e-8 of it (1e-8 px wide at 100 px).
    s0 = ex * (own[8:12] - hy) - ey * (own[0:4] - hx)  # (4 half-planes, 4 corners = edge starts, 2P)
    s1 = s0[:, _NEXT]  # the edge ends: the next edges' starts
    # Tolerance: the table's shape part plus a rounding part, ~1000 ulps of s's products' size
    # |ex| * |dy| + |ey| * |dx| (|dx|, |dy| within the pair's box). Per axis: a sliver along an axis
    # has small products across it, and its nearly collinear edges must not pass for collinear.
    box = own[_BOX]
    b0, b1 = torch.minimum(box[:2], box[:2].roll(n, 1)), torch.maximum(box[2:], box[2:].roll(n, 1))
    wx, wy = (b1 - b0).unbind(0)  # the pair's box
    tol = tol + 1e-13 * (ex.abs() * wy + ey.abs() * wx)
    ntol = -tol
    # Nearly collinear edges: an edge of one quad lying on (within the tolerance of) the line of an edge
    # of the other. The verdict must be the same for both copies, whichever quad's tolerance said so:
    # judged one copy at a time, a thin quad's edge can be "on" the other's line while the other's edge
    # (longer, or its tolerance smaller) is "outside" it, and a long boundary edge is counted twice or
    # not at all. So the pair (i's edge k, j's edge h) is coincident when either copy is on the other's
    # line; then neither copy is cut by the other's half-plane, and j's copy is dropped when they run
    # the same way (the same boundary; i's copy counts), kept when they run opposite ways (quads that
    # only touch there: both count and cancel).
    on = s0.abs() <= tol  # [clipping half-plane, own corner, column]
    near = on & on[:, _NEXT]  # [clipping half-plane, own edge, column]
    b = slice(n, None)
    coincident = near[..., b] | near[..., :n].transpose(0, 1)  # [i's edge k, j's edge h, pair]
    force = torch.cat((coincident.transpose(0, 1), coincident), 2)
    in0, in1 = (s0 >= ntol) | force, (s1 >= ntol) | force
    # The tolerance only classifies end points; a true crossing's parameter is exact.
    cut = s0 / (s0 - s1)  # only read where exactly one end is inside, so never 0/0
    lo = torch.where(in1 & ~in0, cut, 0.0).amax(0)  # (4 edges, 2P)
    hi = torch.where(in1, 1.0, torch.where(in0, cut, 0.0))
    same_way = own[None, 16:20, b] * ex[..., b] + own[None, 20:24, b] * ey[..., b] > 0
    hi[..., b].masked_fill_(coincident & same_way, 0.0)
    frac = (hi.amin(0) - lo).clamp(min=0)
    # edge k's shoelace term about i's corner 0 (o): cross(h_k - o, e_k)
    ox, oy = own[0, :n].repeat(2), own[8, :n].repeat(2)
    term = (own[0:4] - ox) * own[20:24] - (own[8:12] - oy) * own[16:20]
    part = (frac * term).sum(0)
    inter = (0.5 * (part[:n] + part[n:])).clamp(min=0)
    ai, aj = own[_AREA, :n], own[_AREA, n:]
    small = torch.minimum(ai, aj)
    # Equal to the smaller area up to rounding: one contains the other; makes IoU(a, a) exactly 1.
    inter = torch.where(inter >= small * (1 - 1e-10), small, inter)
    union = ai + aj - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def polygon_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact IoU of every quad in ``a`` with every quad in ``b``: ``(N,4,2), (M,4,2) -> (N,M)``.

    Each quad is its corners' convex hull (any order or winding; a non-convex quad becomes its hull).
    Degenerate quads (collinear, repeated corners) give finite values; IoU is 0 when the union has no
    area. Computed in float64 (float32 on MPS) and returned in the inputs' floating dtype (float32 for
    integer inputs). Only pairs whose axis-aligned boxes touch are evaluated, in blocks of ``_CHUNK``.
    """
    a, b = _as_quads(a, "a"), _as_quads(b, "b")
    if a.ndim != 3 or b.ndim != 3:
        raise ValueError(f"polygon_iou takes (N,4,2) and (M,4,2), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"a and b are on different devices ({a.device}, {b.device})")
    out_dtype = _out_dtype(torch.promote_types(a.dtype, b.dtype))
    n, m = a.shape[0], b.shape[0]
    iou = torch.zeros(n, m, dtype=out_dtype, device=a.device)
    if n == 0 or m == 0:
        return iou
    tab = quad_tables(torch.cat((a, b)).to(_work_dtype(a.device)))
    ba, bb = tab[_BOX, :n, None], tab[_BOX, None, n:]  # (4, N, 1), (4, 1, M): x0, y0, x1, y1
    touch = (ba[0] <= bb[2]) & (bb[0] <= ba[2]) & (ba[1] <= bb[3]) & (bb[1] <= ba[3])
    ia, ib = touch.nonzero(as_tuple=True)
    for s in range(0, ia.numel(), _CHUNK):
        i, j = ia[s:s + _CHUNK], ib[s:s + _CHUNK]
        iou[i, j] = pair_iou(tab, i, j + n).to(out_dtype)
    return iou


def order_corners(q: torch.Tensor) -> torch.Tensor:
    """Canonical corner order TL, TR, BR, BL (image coordinates, y down): ``(..., 4, 2) -> (..., 4, 2)``.

    The seeds' rule (PolygonObjectDetection ``order_corners``): the two top corners (smallest y, ties
    by smaller x) left to right, then the two bottom corners right to left. That rule can produce a
    self-intersecting "bowtie" for sheared quads (about 1 % of jittered rectangles, 12 % of random
    convex quads) or, for non-convex corner sets, a counter-clockwise quad. In those cases the result is
    the corners in clockwise angular order around their centroid, starting at the same top-left corner.
    So the result is always the same 4 points, never self-intersecting, clockwise on screen (positive
    shoelace in x-right/y-down pixels) unless all corners are collinear, and equals the seeds' result
    whenever that one is a proper clockwise quad. Empty in, empty out; the dtype is kept.
    """
    q = _as_quads(q, "q")
    shape = q.shape
    if q.numel() == 0:
        return q.clone()
    p = q.reshape(-1, 4, 2)
    w = p.to(_work_dtype(p.device))
    x, y = w[..., 0], w[..., 1]
    by_x = x.argsort(dim=1, stable=True)
    by_yx = by_x.gather(1, y.gather(1, by_x).argsort(dim=1, stable=True))  # lexicographic (y, x)
    xs = x.gather(1, by_yx)
    top = by_yx[:, :2].gather(1, xs[:, :2].argsort(dim=1, stable=True))
    bottom = by_yx[:, 2:].gather(1, xs[:, 2:].argsort(dim=1, descending=True, stable=True))
    seed = torch.cat((top, bottom), 1)
    s = w.gather(1, seed[..., None].expand(-1, -1, 2))

    def crosses(p0, p1, p2, p3):  # segments p0p1 and p2p3 cross at a point inside both
        d1, d2 = _cross(p1 - p0, p2 - p0), _cross(p1 - p0, p3 - p0)
        d3, d4 = _cross(p3 - p2, p0 - p2), _cross(p3 - p2, p1 - p2)
        return (d1 * d2 < 0) & (d3 * d4 < 0)

    c0, c1, c2, c3 = s.unbind(1)
    d = s[:, 1:] - s[:, :1]
    signed = _cross(d[:, 0], d[:, 1]) + _cross(d[:, 1], d[:, 2])
    bad = crosses(c0, c1, c2, c3) | crosses(c1, c2, c3, c0) | (signed < 0)
    rel = w - w.mean(1, keepdim=True)
    ring = torch.atan2(rel[..., 1], rel[..., 0]).argsort(dim=1, stable=True)  # clockwise on screen
    start = (ring == seed[:, :1]).int().argmax(1, keepdim=True)
    ring = ring.gather(1, (start + torch.arange(4, device=p.device)) % 4)
    idx = torch.where(bad[:, None], ring, seed)
    return p.gather(1, idx[..., None].expand(-1, -1, 2)).reshape(shape)
