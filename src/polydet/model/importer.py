"""A polydet model from a pickled YOLOv5 training checkpoint (the polygon training repository's
``polygon_best.pt``, v5.0 layout; or a polygon model in the ultralytics v6.x layout).

The checkpoint arrives as inert stand-ins (``unpickle``). Nothing of the training code is kept: polydet
rebuilds the model from the checkpoint's own yaml, then checks it module by module against the pickled
tree (class, the hyperparameters that change the forward pass, every parameter and buffer by name and
shape) before copying the weights by module path. Any difference is an error naming the path, so a
checkpoint that polydet would run differently from its training code does not load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from ..meta import ModelInfo
from .modules import Bottleneck, Concat
from .unpickle import Stub
from .yolo import HEADS, PolygonDetect, PolygonYOLO, describe_layout

TRAINING_DEFAULT_IMGSZ = 640  # the training scripts' --img-size default; v5.0 checkpoints do not record it
# Attributes that change what a module computes but are not tensors, compared with the rebuilt module.
_HYPER = {nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                      "padding_mode"),
          nn.BatchNorm2d: ("num_features", "eps"),
          nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
          nn.Upsample: ("size", "scale_factor", "mode"),
          nn.LeakyReLU: ("negative_slope",),
          Bottleneck: ("add",), Concat: ("d",), PolygonDetect: ("nc", "no", "na", "nl")}
_MAX_LINES = 12


def is_training_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and any(isinstance(obj.get(k), Stub) for k in ("ema", "model"))


def _plain(value, where: str, depth: int = 0):
    """The yaml as plain data (it goes into polydet checkpoints and artifacts), or ModelLoadError."""
    if depth > 32:  # a yaml is a few levels deep; a pickle can build a cycle
        raise ModelLoadError(f"{where}: nested too deeply (a cycle?) for a model yaml")
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ModelLoadError(f"{where} holds a {type(value).__name__}, not yaml data")


def _named_stubs(root: Stub):
    """(module path, stand-in) of the module tree, like ``named_modules`` (a shared module under each of
    its paths); a pickle can build a cycle, which is an error."""
    stack, out = [("", root, ())], []
    while stack:
        path, stub, above = stack.pop()
        if any(stub is a for a in above):
            raise ModelLoadError(f"module {path} contains itself: not a model")
        out.append((path, stub))
        children = [(str(k), c) for k, c in (stub.__dict__.get("_modules") or {}).items() if isinstance(c, Stub)]
        stack.extend((f"{path}.{k}" if path else k, c, (*above, stub)) for k, c in reversed(children))
    return out


def _own_tensors(stub: Stub) -> dict:
    skip = stub.__dict__.get("_non_persistent_buffers_set") or set()
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (stub.__dict__.get(group) or {}).items():
            if t is not None and name not in skip:
                out[str(name)] = t
    return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    return repr(v)


def _ckpt_path(path: str, det_index: int) -> str:
    """polydet module path -> the training model's (``yolobody.3.cv1`` -> ``model.3.cv1``, ``det`` ->
    ``model.<last>``)."""
    head, _, rest = path.partition(".")
    if head == "yolobody":
        return "model" + (f".{rest}" if rest else "")
    if head == "det":
        return f"model.{det_index}" + (f".{rest}" if rest else "")
    return path


def _type_ok(ours: nn.Module, stub: Stub) -> bool:
    theirs = stub.pickle_global[1]
    if isinstance(ours, PolygonYOLO):
        return theirs.endswith("Model")  # Polygon_Model, Model, DetectionModel
    if isinstance(ours, PolygonDetect):
        return theirs in HEADS
    if isinstance(ours, nn.ModuleList) and not isinstance(ours, nn.Sequential) and theirs == "Sequential":
        return True  # yolobody: a ModuleList here, the layer Sequential there
    return type(ours).__name__ == theirs


def _compare_module(p: str, cp: str, ours: nn.Module, stub: Stub, state: dict, problems: list[str]) -> None:
    if not _type_ok(ours, stub):
        problems.append(f"{cp}: checkpoint has {'.'.join(stub.pickle_global)}, polydet builds {type(ours).__name__}")
        return
    for attr in next((names for cls, names in _HYPER.items() if isinstance(ours, cls)), ()):
        if attr in stub.__dict__ and _norm(stub.__dict__[attr]) != _norm(getattr(ours, attr)):
            problems.append(f"{cp}.{attr}: checkpoint {stub.__dict__[attr]!r}, polydet builds {getattr(ours, attr)!r}")
    theirs = _own_tensors(stub)
    if isinstance(ours, PolygonDetect) and "anchor_grid" not in theirs and "anchors" in theirs:
        # v6.x heads keep only `anchors` (stride units); the pixel anchor_grid buffer is derived from it
        strides = torch.tensor(ours.strides).view(-1, 1, 1)
        theirs["anchor_grid"] = (theirs["anchors"].float() * strides).view(ours.anchor_grid.shape)
    if isinstance(ours, nn.BatchNorm2d) and "num_batches_tracked" not in theirs:
        theirs["num_batches_tracked"] = ours.num_batches_tracked  # only counts training steps
    mine = dict(ours.named_parameters(recurse=False)) | dict(ours.named_buffers(recurse=False))
    for name in sorted(set(mine) - set(theirs)):
        problems.append(f"{cp}.{name}: missing from the checkpoint")
    for name in sorted(set(theirs) - set(mine)):
        problems.append(f"{cp}.{name}: in the checkpoint, not in polydet's {type(ours).__name__}")
    for name in sorted(set(mine) & set(theirs)):
        t = theirs[name]
        if not isinstance(t, torch.Tensor):
            problems.append(f"{cp}.{name}: a {type(t).__name__}, not a tensor")
        elif t.shape != mine[name].shape:
            problems.append(f"{cp}.{name}: checkpoint shape {tuple(t.shape)}, polydet {tuple(mine[name].shape)}")
        else:
            key = f"{p}.{name}" if p else name
            state[key] = t.detach().float() if t.is_floating_point() else t.detach()


def match_weights(model: PolygonYOLO, root: Stub) -> dict:
    """State dict for ``model`` from the stand-in tree ``root``; raises ModelLoadError listing every
    module, attribute or tensor that differs."""
    det_index = len(model.yolobody)
    stubs = dict(_named_stubs(root))
    state, problems, seen = {}, [], set()
    for p, ours in model.named_modules():
        cp = _ckpt_path(p, det_index)
        seen.add(cp)
        if cp not in stubs:
            problems.append(f"{cp}: missing from the checkpoint (polydet builds {type(ours).__name__})")
            continue
        _compare_module(p, cp, ours, stubs[cp], state, problems)
    for cp in sorted(set(stubs) - seen):
        problems.append(f"{cp}: {'.'.join(stubs[cp].pickle_global)} in the checkpoint, not in the model its yaml gives")
    det = stubs.get(f"model.{det_index}")
    stride = det.__dict__.get("stride") if det is not None else None
    if isinstance(stride, torch.Tensor) and stride.tolist() != list(model.det.strides):
        problems.append(f"model.{det_index}.stride: checkpoint {stride.tolist()}, polydet {list(model.det.strides)}")
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LINES} more" if len(problems) > _MAX_LINES else ""
        raise ModelLoadError("the checkpoint's model differs from the one polydet builds from its yaml:\n  "
                             + "\n  ".join(problems[:_MAX_LINES]) + more)
    return state


def _head(root: Stub) -> Stub:
    layers = (root.__dict__.get("_modules") or {}).get("model")
    children = list((layers.__dict__.get("_modules") or {}).values()) if isinstance(layers, Stub) else []
    if not children or not isinstance(children[-1], Stub):
        raise ModelLoadError(f"{'.'.join(root.pickle_global)} has no `model` layer list ending in a head")
    head = children[-1]
    name, nc, no = head.pickle_global[1], head.__dict__.get("nc"), head.__dict__.get("no")
    if name not in HEADS or not isinstance(nc, int):
        raise ModelLoadError(f"the last layer is {'.'.join(head.pickle_global)}, not a YOLOv5 detection head")
    if no != nc + 9:
        raise ModelLoadError(f"{name} head with {no} outputs per anchor for nc={nc}: an axis-aligned YOLOv5 "
                             "detector (5+nc); polydet serves 4-corner polygon heads (9+nc, Polygon_Detect)")
    return head


def _names(root: Stub, nc: int) -> tuple[list[str], str]:
    names = root.__dict__.get("names")
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        names = [names.get(i) for i in range(len(names))]
    if isinstance(names, (list, tuple)) and len(names) == nc and all(isinstance(n, str) for n in names):
        return list(names), "the checkpoint"
    return [f"class{i}" for i in range(nc)], "not recorded; placeholders: pass --names"


def _imgsz(ckpt: dict) -> tuple[int, str]:
    opt = ckpt.get("opt")
    opt = vars(opt) if isinstance(opt, Stub) else opt  # an argparse.Namespace stand-in keeps its fields
    for key in ("imgsz", "img_size"):
        v = opt.get(key) if isinstance(opt, dict) else None
        v = v[0] if isinstance(v, (list, tuple)) and v else v
        if isinstance(v, int) and v > 0:
            return v, f"the checkpoint's training options ({key})"
    return TRAINING_DEFAULT_IMGSZ, "not recorded; the training default: pass --imgsz for another"


def _scalar(v):
    if isinstance(v, (np.ndarray, np.generic, torch.Tensor)) and np.asarray(v).size == 1:
        return float(np.asarray(v).reshape(-1)[0])
    return v if v is None or isinstance(v, (int, float, str)) else repr(v)


def import_training_checkpoint(ckpt: dict, path: Path) -> tuple[PolygonYOLO, ModelInfo, dict]:
    """(model in fp32, ModelInfo, facts for ``polydet inspect``) from an unpickled training checkpoint."""
    key = "ema" if isinstance(ckpt.get("ema"), Stub) else "model"
    root = ckpt[key]
    if not root.pickle_global[1].endswith("Model"):
        raise ModelLoadError(f"{path}: ckpt[{key!r}] is {'.'.join(root.pickle_global)}, not a YOLOv5 model")
    head = _head(root)
    d = _plain(root.__dict__.get("yaml"), f"ckpt[{key!r}].yaml")
    if not isinstance(d, dict) or not {"backbone", "head", "depth_multiple", "width_multiple"} <= set(d):
        raise ModelLoadError(f"{path}: ckpt[{key!r}].yaml is not a YOLOv5 model yaml")
    try:
        model = PolygonYOLO(d, nc=head.__dict__["nc"])
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot build the model its yaml describes: {e}") from e
    state = match_weights(model, root)
    model.load_state_dict(state, strict=True)
    model.yaml["anchors"] = model.det.anchor_grid.view(model.det.nl, -1).tolist()  # the trained ones
    names, names_from = _names(root, model.nc)
    imgsz, imgsz_from = _imgsz(ckpt)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in _all_tensors(root) if t.is_floating_point()})
    info = ModelInfo(names=names, imgsz=imgsz, stride=int(max(model.det.strides)))
    facts = {"format": "YOLOv5 training checkpoint (pickled modules, read with inert stand-ins)",
             "class": ".".join(root.pickle_global), "head": head.pickle_global[1], "weights_from": key,
             "layout": describe_layout(d), "epoch": _scalar(ckpt.get("epoch")),
             "best_fitness": _scalar(ckpt.get("best_fitness")), "stored_dtype": ", ".join(dtypes),
             "names_from": names_from, "imgsz_from": imgsz_from}
    return model, info, facts


def _all_tensors(root: Stub):
    for _, stub in _named_stubs(root):
        yield from (t for t in _own_tensors(stub).values() if isinstance(t, torch.Tensor))
