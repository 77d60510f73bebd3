"""Polygon YOLOv5 (v6.0 layout): ``yolobody`` (layers 0..23) and ``det`` (the polygon head).

Head contract (what every exported artifact produces and the whole package relies on):
per anchor ``no = 9 + nc`` channels ``[x1, y1, ..., x4, y4, obj, cls...]``. At inference
``corner = (raw + [gx, gy]) * stride`` for all 8 coordinates (no sigmoid, no anchors), sigmoid on obj
and classes; levels P3, P4, P5 concatenated; rows anchor-major (``a*ny*nx + gy*nx + gx``).
Eval output: ``(B, N, 9 + nc)`` in letterboxed-input pixels.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import yaml
from torch import nn

from ..errors import ConfigError
from .modules import C3, SPPF, Bottleneck, Concat, Conv

CFG_DIR = Path(__file__).parent / "cfg"
STRIDES = (8.0, 16.0, 32.0)


class PolygonDetect(nn.Module):
    """Polygon head. Training: list of raw ``(B, na, ny, nx, no)`` maps. Eval: ``(B, N, no)`` decoded."""

    def __init__(self, nc: int, anchors: list[list[float]], ch: list[int], strides=STRIDES):
        super().__init__()
        self.nc = nc
        self.no = nc + 9
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.strides = tuple(float(s) for s in strides)
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        # Buffers kept for state_dict compatibility with the seeds (anchors in stride units, anchor_grid
        # in pixels, YOLOv5 v5 layout); inference never uses them, training uses them for assignment.
        self.register_buffer("anchors", a / torch.tensor(self.strides).view(-1, 1, 1))
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def forward(self, xs: list[torch.Tensor]):
        raw = []
        for i in range(self.nl):
            b, _, ny, nx = xs[i].shape
            raw.append(self.m[i](xs[i]).view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self._decode(p, s) for p, s in zip(raw, self.strides)], 1)

    def _decode(self, p: torch.Tensor, stride: float) -> torch.Tensor:
        # The grid is derived from p itself (cumsum of ones) instead of torch.arange(device=...): a trace
        # would bake arange's device into the artifact, and a CPU export would then fail on CUDA.
        # split/cat instead of slice assignment keeps ScatterND out of the ONNX graph.
        xy, conf = p.split((8, self.nc + 1), -1)
        ones = torch.ones_like(xy[..., :1])
        grid = torch.cat((ones.cumsum(3) - 1, ones.cumsum(2) - 1), -1).repeat(1, 1, 1, 1, 4)
        out = torch.cat(((xy + grid) * stride, conf.sigmoid()), -1)
        return out.view(p.shape[0], -1, self.no)

    @torch.no_grad()
    def init_biases(self, image_area_per_object: float = 640.0**2 / 8) -> None:
        """YOLOv5's prior: objectness bias for ~8 objects per 640 image, class bias for balanced classes."""
        for mi, s in zip(self.m, self.strides):
            b = mi.bias.view(self.na, -1)
            b[:, 8] += math.log(8 / (640 / s) ** 2)
            b[:, 9:] += math.log(0.6 / (self.nc - 0.99999))


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def load_cfg(cfg: str | Path | dict) -> dict:
    """A model yaml: a dict, a path, or the name of a shipped cfg (``polygon_yolov5n``)."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    path = Path(cfg)
    if not path.exists():
        path = CFG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in CFG_DIR.glob("*.yaml")))
        raise ConfigError(f"model cfg {str(cfg)!r} not found (shipped cfgs: {shipped})")
    with open(path) as f:
        return yaml.safe_load(f)


_MODULES = {"Conv": Conv, "C3": C3, "SPPF": SPPF, "Bottleneck": Bottleneck, "Concat": Concat,
            "nn.Upsample": nn.Upsample}


class PolygonYOLO(nn.Module):
    """The whole detector. ``yolobody`` holds layers 0..23, ``det`` the head (seed key layout)."""

    def __init__(self, cfg: str | Path | dict = "polygon_yolov5n", nc: int | None = None):
        super().__init__()
        self.yaml = load_cfg(cfg)
        if nc is not None:
            self.yaml["nc"] = nc
        self.yolobody, self.froms, self.det, self.det_from = self._parse(self.yaml)
        self.nc = self.det.nc
        self.stride = torch.tensor(self.det.strides)
        self.det.init_biases()

    @staticmethod
    def _parse(d: dict):
        nc, gd, gw = d["nc"], d["depth_multiple"], d["width_multiple"]
        ch, layers, froms = [3], [], []
        for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
            if m == "Detect":
                det = PolygonDetect(nc, d["anchors"], [ch[x + 1] for x in f])  # f: absolute layer indices
                return nn.ModuleList(layers), froms, det, list(f)
            if m not in _MODULES:
                raise ConfigError(f"layer {i}: unknown module {m!r}")
            mod = _MODULES[m]
            n = max(round(n * gd), 1) if n > 1 else n
            args = [None if a == "None" else a for a in args]
            if mod in (Conv, C3, SPPF, Bottleneck):
                c1, c2 = (ch[f] if f < 0 else ch[f + 1]), make_divisible(args[0] * gw)
                args = [c1, c2, *args[1:]]
                if mod is C3:
                    args.insert(2, n)
                    n = 1
            elif mod is Concat:
                c2 = sum(ch[x + 1] if x >= 0 else ch[x] for x in f)  # ch[0] is the input image
            else:
                c2 = ch[-1]
            layer = nn.Sequential(*(mod(*args) for _ in range(n))) if n > 1 else mod(*args)
            layers.append(layer)
            froms.append(f)
            ch.append(c2)
        raise ConfigError("model cfg has no Detect layer")

    def forward(self, x: torch.Tensor):
        outs: list[torch.Tensor] = []
        for layer, f in zip(self.yolobody, self.froms):
            if f != -1:
                x = [x if j == -1 else outs[j] for j in f] if isinstance(f, list) else outs[f]
            x = layer(x)
            outs.append(x)
        return self.det([outs[j] for j in self.det_from])

    def fuse(self) -> "PolygonYOLO":
        """Fold every BatchNorm into its conv (export/inference only)."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
