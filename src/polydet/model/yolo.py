"""Polygon YOLOv5 (v6.0 or v5.0 layout) from a yaml: ``yolobody`` (the layers) and ``det`` (the polygon head).

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
from .modules import C3, SPP, SPPF, Bottleneck, BottleneckCSP, Concat, Conv, DWConv, Focus

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
    def init_biases(self) -> None:
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


# yaml module name -> class. "Detect" (polydet's yamls) and "Polygon_Detect" (the polygon training
# repository's) both name the polygon head; DWConv is a function that returns a Conv, as in YOLOv5.
_MODULES = {"Conv": Conv, "DWConv": DWConv, "Focus": Focus, "SPP": SPP, "SPPF": SPPF, "Bottleneck": Bottleneck,
            "BottleneckCSP": BottleneckCSP, "C3": C3, "Concat": Concat, "nn.Upsample": nn.Upsample}
HEADS = ("Detect", "Polygon_Detect")
_SCALED = (Conv, DWConv, Focus, SPP, SPPF, Bottleneck, BottleneckCSP, C3)  # args[0] = out channels x width
_REPEATS_INSIDE = (C3, BottleneckCSP)  # the yaml's n is their number of bottlenecks, not of copies


def _at(values: list, f: int):
    """Output of layer ``f`` (absolute, or relative when negative); ``values[0]`` is the input image's."""
    return values[f] if f < 0 else values[f + 1]


def _downsampling(m: nn.Module) -> float:
    """How much a built layer divides the spatial size by (Upsample multiplies: < 1)."""
    if isinstance(m, nn.Sequential):
        return math.prod(_downsampling(x) for x in m)
    if isinstance(m, Focus):
        return 2.0 * m.conv.conv.stride[0]
    if isinstance(m, Conv):
        return float(m.conv.stride[0])
    if isinstance(m, nn.Upsample):
        if m.scale_factor is None:
            raise ConfigError("nn.Upsample needs a scale_factor (a fixed output size has no stride)")
        return 1.0 / float(m.scale_factor)
    return 1.0


def _anchors(d: dict, nl: int) -> list[list[float]]:
    """The yaml's anchors; an int (anchors per level, YOLOv5's 'autoanchor will fill them') gives
    placeholders that a checkpoint's anchor buffers replace."""
    a = d["anchors"]
    if isinstance(a, int):
        return [list(range(2 * a)) for _ in range(nl)]
    if len(a) != nl or any(len(x) != len(a[0]) or len(x) % 2 for x in a):
        raise ConfigError(f"anchors: {nl} levels of w,h pairs (the same count per level) expected, got {a}")
    return [[float(v) for v in x] for x in a]


def _layer(i: int, f, n: int, name: str, args: list, ch: list[int], gd: float, gw: float):
    """Build yaml row ``i``; returns (module, its output channels)."""
    if name not in _MODULES:
        raise ConfigError(f"layer {i}: unknown module {name!r} (polydet builds {', '.join([*_MODULES, *HEADS])})")
    mod = _MODULES[name]
    n = max(round(n * gd), 1) if n > 1 else n
    args = [None if a == "None" else a for a in args]
    if mod in _SCALED:
        c2 = make_divisible(args[0] * gw)
        args = [_at(ch, f), c2, *args[1:]]
        if mod in _REPEATS_INSIDE:
            args.insert(2, n)
            n = 1
    elif mod is Concat:
        c2 = sum(_at(ch, x) for x in f)
    else:
        c2 = _at(ch, f)
    try:
        layer = nn.Sequential(*(mod(*args) for _ in range(n))) if n > 1 else mod(*args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"layer {i} ({name} {args}): {e}") from e
    return layer, c2


class PolygonYOLO(nn.Module):
    """The whole detector. ``yolobody`` holds the layers before the head, ``det`` the head (seed key layout)."""

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
        if d.get("ch", 3) != 3:
            raise ConfigError(f"model cfg has ch={d['ch']}: polydet feeds 3-channel images")
        gd, gw = d["depth_multiple"], d["width_multiple"]
        ch, strides, layers, froms = [3], [1.0], [], []
        for i, (f, n, m, args) in enumerate(d["backbone"] + d["head"]):
            if m in HEADS:
                f = [f] if isinstance(f, int) else list(f)
                det = PolygonDetect(d["nc"], _anchors(d, len(f)), [_at(ch, x) for x in f],
                                    strides=[_at(strides, x) for x in f])
                return nn.ModuleList(layers), froms, det, f
            layer, c2 = _layer(i, f, n, m, list(args), ch, gd, gw)
            layers.append(layer)
            froms.append(f)
            ch.append(c2)
            strides.append(_at(strides, f if isinstance(f, int) else f[0]) * _downsampling(layer))
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


def describe_layout(d: dict) -> str:
    """Which YOLOv5 generation a model yaml follows, from its stem and pyramid-pooling layers."""
    rows = d["backbone"] + d["head"]
    names = {r[2] for r in rows}
    stem = rows[0]
    if stem[2] == "Focus" and "SPP" in names:
        return "v5.0 (Focus stem, SPP)"
    if stem[2] == "Conv" and list(stem[3][1:2]) == [6] and "SPPF" in names:
        return "v6.0 (6x6 stem Conv, SPPF)"
    return "custom (" + ", ".join(sorted(n for n in names if n not in HEADS)) + ")"
