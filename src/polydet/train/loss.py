"""The seeds' polygon YOLOv5 loss (PolygonObjectDetection ``Polygon_ComputeLoss``), on polydet's head.

Head contract: ``corner = (raw + [gx, gy]) * stride`` (no sigmoid, no anchors), so the regression target
of a cell ``(gi, gj)`` is ``corner_px / stride - [gi, gj]``: the 8 corner offsets from the cell's
top-left, in grid units. Anchors are used only to decide which level/anchor slot learns a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..ops import polygon as _poly
from ..ops.polygon import order_corners, polygon_iou

# The 2 nearest neighbour cells, YOLOv5 style: centre cell, then left/up/right/down by half a cell.
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


@dataclass
class LossHyp:
    box: float = 0.05  # Smooth-L1 corner loss gain (seeds' hyp.ucas.yaml)
    obj: float = 1.0  # objectness gain at 640 px; scaled by (imgsz/640)^2 like YOLOv5's train.py
    cls: float = 0.5  # class BCE gain (seeds'); YOLOv5 scales it by nc/80, which would mute 2 classes
    anchor_t: float = 4.0  # a target matches an anchor when both wh ratios are within 1/4..4
    order: float = 1.0  # weight of the seeds' corner-order penalty (1 = the seeds' /6 per term)
    beta: float = 0.11  # Smooth-L1 beta in grid units (seeds')
    gr: float = 1.0  # objectness target = (1-gr) + gr * IoU(pred, target)
    balance: tuple[float, float, float] = (4.0, 1.0, 0.4)  # P3, P4, P5 objectness weights


def paired_polygon_iou(a: torch.Tensor, b: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Exact IoU of ``a[i]`` with ``b[i]`` (convex hulls, as ``polygon_iou``): ``(N,4,2), (N,4,2) -> (N,)``.

    Uses the ops' pairwise kernel (``quad_tables`` + ``pair_iou``, what ``polygon_iou`` runs on) on the N
    pairs directly; without it, the diagonals of chunked ``polygon_iou`` blocks (N * chunk pairs)."""
    n = a.shape[0]
    if n == 0:
        return a.new_zeros(0)
    if hasattr(_poly, "quad_tables") and hasattr(_poly, "pair_iou"):
        tab = _poly.quad_tables(torch.cat((a, b)).double())
        i = torch.arange(n, device=a.device)
        return _poly.pair_iou(tab, i, i + n).to(a.dtype)
    return torch.cat([polygon_iou(a[k:k + chunk], b[k:k + chunk]).diagonal() for k in range(0, n, chunk)])


def order_penalty(ps: torch.Tensor) -> torch.Tensor:
    """The seeds' soft constraint on predicted corner order (TL, TR, BR, BL), ``ps: (n, >=8)``:
    top corners above bottom ones (y1, y2 <= y3, y4), x1 <= x2 and x4 <= x3. Squared hinge, each /6."""
    x1, y1, x2, y2, x3, y3, x4, y4 = ps[:, :8].unbind(1)
    terms = (y1 - y3, y2 - y3, y1 - y4, y2 - y4, x1 - x2, x4 - x3)
    return sum(F.relu(t).pow(2).mean() for t in terms) / 6


class PolygonLoss:
    """``loss(preds, targets) -> (total * bs, items[box, obj, cls, total])``.

    ``preds``: list of raw maps ``(B, na, ny, nx, 9+nc)`` (P3, P4, P5). ``targets``: ``(T, 10)``
    ``[batch_idx, cls, x1..y4]`` in input pixels (any corner order).
    """

    def __init__(self, model: nn.Module, hyp: LossHyp | None = None, imgsz: int = 640):
        det = model.det
        self.hyp = hyp or LossHyp()
        self.nc, self.nl, self.na = det.nc, det.nl, det.na
        self.strides = det.strides
        self.anchors_px = det.anchor_grid.detach().view(self.nl, self.na, 2).clone()  # pixels
        self.obj_gain = self.hyp.obj * (imgsz / 640) ** 2
        self.bce = nn.BCEWithLogitsLoss()

    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor):
        """Per level: ``(b, a, gj, gi)`` indices, ``tbox (n, 8)`` grid-unit offsets, ``tcls (n,)``."""
        dev = targets.device
        tcls, tbox, indices = [], [], []
        if targets.shape[0]:
            quads = order_corners(targets[:, 2:10].reshape(-1, 4, 2).float()).reshape(-1, 8)
            targets = torch.cat((targets[:, :2].float(), quads), 1)
        xs, ys = targets[:, 2:10:2], targets[:, 3:10:2]
        wh_px = torch.stack((xs.amax(1) - xs.amin(1), ys.amax(1) - ys.amin(1)), 1)  # (T, 2) AABB
        centre_px = torch.stack((xs.mean(1), ys.mean(1)), 1)  # the seeds' polygon centre
        off = _OFFSETS.to(dev)
        for i, p in enumerate(preds):
            ny, nx = p.shape[2], p.shape[3]
            s = self.strides[i]
            # (na, T): both wh ratios within 1/anchor_t..anchor_t
            r = wh_px[None] / self.anchors_px[i].to(dev)[:, None]
            match = torch.max(r, 1 / r.clamp(min=1e-9)).amax(2) < self.hyp.anchor_t
            a, t = match.nonzero(as_tuple=True)
            gxy = centre_px[t] / s
            gxi = torch.tensor([nx, ny], device=dev, dtype=gxy.dtype) - gxy
            lft, up = ((gxy % 1 < 0.5) & (gxy > 1)).T
            rgt, dn = ((gxi % 1 < 0.5) & (gxi > 1)).T
            sel = torch.stack((torch.ones_like(lft), lft, up, rgt, dn))  # (5, n)
            k, m = sel.nonzero(as_tuple=True)
            a, t = a[m], t[m]
            gij = (gxy[m] - off[k]).long()
            gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
            b = targets[t, 0].long()
            cell = torch.stack((gi, gj), 1).to(gxy.dtype).repeat(1, 4)
            indices.append((b, a, gj, gi))
            tbox.append(targets[t, 2:10] / s - cell)
            tcls.append(targets[t, 1].long())
        return tcls, tbox, indices

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor):
        dev = preds[0].device
        h = self.hyp
        lbox, lobj, lcls = (torch.zeros((), device=dev) for _ in range(3))
        tcls, tbox, indices = self.build_targets(preds, targets.to(dev))
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros_like(pi[..., 8])
            n = b.shape[0]
            if n:
                ps = pi[b, a, gj, gi].float()
                pbox = ps[:, :8]
                lbox = lbox + F.smooth_l1_loss(pbox, tbox[i], beta=h.beta) + h.order * order_penalty(ps)
                with torch.no_grad():
                    iou = paired_polygon_iou(pbox.detach().view(-1, 4, 2), tbox[i].view(-1, 4, 2))
                    iou = torch.nan_to_num(iou, nan=0.0).clamp(0, 1)
                # Several targets can claim one slot; the last write wins, as in YOLOv5.
                tobj[b, a, gj, gi] = ((1.0 - h.gr) + h.gr * iou).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(ps[:, 9:])
                    t[torch.arange(n, device=dev), tcls[i]] = 1.0
                    lcls = lcls + self.bce(ps[:, 9:], t)
            lobj = lobj + self.bce(pi[..., 8].float(), tobj.float()) * h.balance[i]
        lbox, lobj, lcls = lbox * h.box, lobj * self.obj_gain, lcls * h.cls
        loss = lbox + lobj + lcls
        bs = preds[0].shape[0]
        return loss * bs, torch.stack((lbox, lobj, lcls, loss)).detach()
