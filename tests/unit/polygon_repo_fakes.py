"""Test double of the polygon YOLOv5 training repository (XinzeLee/PolygonObjectDetection, v5.0 era).

Written for these tests from that repository's architecture facts (module names, attribute names, yaml
rows, what its training script saves), not from its code. The classes live under the module names the
repository uses (``models.common``, ``models.yolo``) while ``installed()`` is active, so that a
``torch.save`` of them writes the same globals into the pickle as a real ``polygon_best.pt``. Their own
forward pass (YOLOv5's eval output ``(decoded, raw maps)``) is the oracle polydet is compared with.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import types

import numpy as np
import torch
from torch import nn

from polydet.model import load_cfg

CALLS: list[str] = []  # anything here means polydet ran the training code while loading


def _where(module: str):
    def mark(cls):
        cls.__module__ = module

        def __setstate__(self, state, _name=cls.__name__):  # noqa: N807 - records a forbidden call
            CALLS.append(f"{_name}.__setstate__")
            nn.Module.__setstate__(self, state)

        cls.__setstate__ = __setstate__
        return cls

    return mark


@_where("models.common")
class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


@_where("models.common")
class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1, self.cv2 = Conv(c1, hidden, 1, 1), Conv(hidden, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        out = self.cv2(self.cv1(x))
        return out + x if self.add else out


@_where("models.common")
class C3(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = Conv(c1, hidden), Conv(c1, hidden), Conv(2 * hidden, c2)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, g, 1.0) for _ in range(n)])

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


@_where("models.common")
class BottleneckCSP(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden)
        self.cv2 = nn.Conv2d(c1, hidden, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(hidden, hidden, 1, 1, bias=False)
        self.cv4 = Conv(2 * hidden, c2)
        self.bn = nn.BatchNorm2d(2 * hidden)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, g, 1.0) for _ in range(n)])

    def forward(self, x):
        both = torch.cat([self.cv3(self.m(self.cv1(x))), self.cv2(x)], dim=1)
        return self.cv4(self.act(self.bn(both)))


@_where("models.common")
class SPP(nn.Module):
    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c1 // 2), Conv(c1 // 2 * (len(k) + 1), c2)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=size, stride=1, padding=size // 2) for size in k])

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *[pool(x) for pool in self.m]], 1))


@_where("models.common")
class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c1 // 2), Conv(c1 // 2 * 4, c2)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        outs = [self.cv1(x)]
        for _ in range(3):
            outs.append(self.m(outs[-1]))
        return self.cv2(torch.cat(outs, 1))


@_where("models.common")
class Focus(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act)

    def forward(self, x):
        tl, bl, tr, br = x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]
        return self.conv(torch.cat([tl, bl, tr, br], 1))


@_where("models.common")
class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, xs):
        return torch.cat(xs, self.d)


@_where("models.yolo")
class Polygon_Detect(nn.Module):  # noqa: N801 - the repository's name
    stride = None

    def __init__(self, nc, anchors, ch, corners=True, anchor_grid_buffer=True):
        super().__init__()
        self.nc, self.no = nc, nc + (9 if corners else 5)
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.grid = [torch.zeros(1)] * self.nl
        a = torch.tensor(anchors).float().view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        if anchor_grid_buffer:  # v5.0 keeps the pixel anchors as a buffer; v6.x heads do not
            self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList([nn.Conv2d(c, self.no * self.na, 1) for c in ch])
        self.inplace = True

    def forward(self, xs):
        xs, decoded = list(xs), []
        for i in range(self.nl):
            p = self.m[i](xs[i])
            bs, _, ny, nx = p.shape
            xs[i] = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
                self.grid[i] = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float()
                y = xs[i].clone()
                y[..., 8:] = y[..., 8:].sigmoid()
                y[..., :8] = (y[..., :8] + self.grid[i].repeat(1, 1, 1, 1, 4)) * self.stride[i]
                decoded.append(y.view(bs, -1, self.no))
        return xs if self.training else (torch.cat(decoded, 1), xs)


MODULES = {"Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "BottleneckCSP": BottleneckCSP, "SPP": SPP,
           "SPPF": SPPF, "Focus": Focus, "Concat": Concat, "nn.Upsample": nn.Upsample,
           "Polygon_Detect": Polygon_Detect, "Detect": Polygon_Detect}


def _build(d, corners, anchor_grid_buffer):
    """The repository's yaml-to-layers rule: width rounds up to multiples of 8, depth n>1 scales."""
    layers, ch = [], []
    for i, (f, n, name, args) in enumerate(d["backbone"] + d["head"]):
        cls, args = MODULES[name], [None if a == "None" else a for a in args]
        n = max(round(n * d["depth_multiple"]), 1) if n > 1 else n
        c_in = ch[f] if ch and isinstance(f, int) else 3
        if cls is Polygon_Detect:
            m = cls(d["nc"], d["anchors"], [ch[x] for x in f], corners, anchor_grid_buffer)
        else:
            c_out = c_in if cls is nn.Upsample else sum(ch[x] for x in f) if cls is Concat else \
                math.ceil(args[0] * d["width_multiple"] / 8) * 8
            if cls not in (nn.Upsample, Concat):
                args = [c_in, c_out, *args[1:]]
                if cls in (C3, BottleneckCSP):
                    args, n = [*args[:2], n, *args[2:]], 1
            m = nn.Sequential(*[cls(*args) for _ in range(n)]) if n > 1 else cls(*args)
            ch.append(c_out)
        m.i, m.f, m.type, m.np = i, f, name, sum(p.numel() for p in m.parameters())
        layers.append(m)
    return nn.Sequential(*layers)


@_where("models.yolo")
class Polygon_Model(nn.Module):  # noqa: N801 - the repository's name
    def __init__(self, cfg: dict, corners=True, anchor_grid_buffer=True):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        self.model = _build(copy.deepcopy(self.yaml), corners, anchor_grid_buffer)
        self.names = [str(i) for i in range(self.yaml["nc"])]
        head = self.model[-1]
        self.train()
        head.stride = torch.tensor([256 / x.shape[-2] for x in self.forward(torch.zeros(1, 3, 256, 256))])
        head.anchors /= head.stride.view(-1, 1, 1)
        self.stride = head.stride
        for m in self.modules():  # what the repository's initialize_weights() sets
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03

    def forward(self, x):
        outputs = []
        for m in self.model:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            outputs.append(x)
        return x


@_where("models.yolo")
class Model(Polygon_Model):  # ultralytics' class name: a polygon head on a v6.x-style model
    pass


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights and BatchNorm statistics, so that a wrong copy or order shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.6 - 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model


@contextlib.contextmanager
def installed():
    """``models``, ``models.common``, ``models.yolo`` importable while active (pickling needs them)."""
    pkg = types.ModuleType("models")
    common, yolo = types.ModuleType("models.common"), types.ModuleType("models.yolo")
    for cls in (Conv, Bottleneck, C3, BottleneckCSP, SPP, SPPF, Focus, Concat):
        setattr(common, cls.__name__, cls)
    for cls in (Polygon_Detect, Polygon_Model, Model):
        setattr(yolo, cls.__name__, cls)
    pkg.common, pkg.yolo = common, yolo
    saved = {k: sys.modules.get(k) for k in ("models", "models.common", "models.yolo")}
    sys.modules.update({"models": pkg, "models.common": common, "models.yolo": yolo})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def training_checkpoint(model: nn.Module, ema: nn.Module | None, names: list[str], epoch: int = 41,
                        best_fitness: float = 0.625, **extra) -> dict:
    """The dict the training script saves each epoch (``ema=None``: as after strip_optimizer, where the
    ema has become ``model``). Attributes attached as in training."""
    for m in (model, ema):
        if m is not None:
            m.nc, m.names, m.gr = len(names), list(names), 1.0
            m.hyp = {"lr0": 0.01, "anchor_t": 4.0, "fliplr": 0.5}
            m.class_weights = torch.ones(len(names))
    params = list(model.parameters())
    # what an SGD optimizer's state_dict() holds after some steps (built by hand: torch.optim imports slowly)
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params[:4])},
                 "param_groups": [{"lr": 0.01, "momentum": 0.937, "nesterov": True, "weight_decay": 0.0005,
                                   "params": list(range(len(params)))}]}
    return {"epoch": epoch, "best_fitness": np.array([best_fitness]), "training_results": "0/299 ...\n",
            "model": copy.deepcopy(model).half(), "ema": None if ema is None else copy.deepcopy(ema).half(),
            "updates": 1234, "optimizer": optimizer, "wandb_id": None, **extra}


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The training code's own eval output for the weights as saved (fp16), computed in fp32."""
    ref = copy.deepcopy(model).half().float().eval()
    with torch.no_grad():
        return ref(x)[0]


UCAS_ANCHORS = [[31, 30, 28, 49, 50, 31], [46, 45, 58, 58, 74, 74], [94, 94, 115, 115, 151, 151]]  # 1024 px


def repo_yaml(cfg: str, width: float | None = None, anchors=None, nc: int = 2) -> dict:
    """A shipped yaml written the repository's way (its head row says Polygon_Detect)."""
    d = load_cfg(cfg)
    d["head"][-1][2] = "Polygon_Detect"
    d["nc"] = nc
    if width is not None:
        d["width_multiple"] = width
    if anchors is not None:
        d["anchors"] = anchors
    return d


def save_training_run(path, d, seed=0, ema=True, cls=None, legacy=False, **kw):
    """(path, model, ema) of a checkpoint saved like the training script's (model and ema differ)."""
    cls, extra = cls or Polygon_Model, kw.pop("extra", {})
    with installed():
        torch.manual_seed(seed)
        model = randomize(cls(d, **kw), seed + 1)
        avg = randomize(cls(d, **kw), seed + 2) if ema else None
        ckpt = training_checkpoint(model, avg, ["plane", "car"], **({"epoch": -1} if not ema else {}))
        ckpt.update(extra)
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path, model, avg
