"""Loading and saving weights: polydet's own checkpoint, the seeds' plain state_dict (``best.pth``), and
pickled YOLOv5 training checkpoints (``polygon_best.pt``), read without running them (``unpickle``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..meta import ModelInfo
from .importer import import_training_checkpoint, is_training_checkpoint
from .unpickle import UnreadableCheckpointError, is_torchscript_zip, restricted_load
from .yolo import CFG_DIR, PolygonYOLO, describe_layout, load_cfg

FORMAT = "polydet-checkpoint/v1"
SEED_FORMAT = "seed state_dict (yolobody.*, det.*)"


@dataclass
class Checkpoint:
    """What a weights file holds: the model (fp32, train mode as built), its ModelInfo, and facts about
    where it came from (``polydet inspect`` prints them)."""

    model: PolygonYOLO
    info: ModelInfo
    facts: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: PolygonYOLO, info: ModelInfo, **extra) -> None:
    """Save state_dict + model yaml + ModelInfo (+ anything in ``extra``, e.g. optimizer state)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "state_dict": state, "yaml": model.yaml, "info": info.to_json(), **extra}, path)


def _mismatch(own: dict, state: dict) -> list[str]:
    """Lines describing how ``state`` differs from a model's ``own`` {key: shape}; empty when it fits."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k]) != tuple(state[k].shape))
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            lines.append(f"  {label} keys ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}")
    for k in shape[:12]:
        lines.append(f"  shape mismatch {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k])}")
    return lines


def _strict_load(model: PolygonYOLO, state: dict, source: str) -> None:
    lines = _mismatch({k: v.shape for k, v in model.state_dict().items()}, state)
    if lines:
        raise ModelLoadError("\n".join([f"cannot load {source}: state_dict does not match the model", *lines]))
    model.load_state_dict(state, strict=True)


def _seed_nc(state: dict) -> int:
    w = state.get("det.m.0.weight")
    if w is None:
        raise ModelLoadError("not a polygon YOLOv5 state_dict: no 'det.m.0.weight' key")
    na = state["det.anchors"].shape[1] if "det.anchors" in state else 3
    nc = w.shape[0] // na - 9
    if nc < 1 or w.shape[0] != na * (nc + 9):
        raise ModelLoadError(f"det.m.0.weight has {w.shape[0]} outputs: not na*(9+nc) for na={na}")
    return nc


def _seed_model(state: dict, path: Path, cfg: str | None) -> tuple[PolygonYOLO, str]:
    """The model for a plain state_dict: ``cfg``, else the first shipped cfg whose keys and shapes match
    (screened on the meta device, so no candidate allocates weights)."""
    nc = _seed_nc(state)
    candidates = [cfg] if cfg else [p.stem for p in sorted(CFG_DIR.glob("*.yaml"))]
    tried = {}
    for c in candidates:
        with torch.device("meta"):
            own = {k: v.shape for k, v in PolygonYOLO(load_cfg(c), nc=nc).state_dict().items()}
        tried[c] = _mismatch(own, state)
        if not tried[c]:
            model = PolygonYOLO(load_cfg(c), nc=nc)
            model.load_state_dict(state, strict=True)
            return model, c
    best = min(tried, key=lambda c: len(tried[c]))
    head = f"cannot load {path} with cfg {best}" + ("" if cfg else f" (closest of the shipped {', '.join(tried)})")
    raise ModelLoadError("\n".join([f"{head}: state_dict does not match the model", *tried[best],
                                    "(pass cfg= to name the model yaml)"]))


def _read(path: Path):
    """The unpickled file. torch's weights_only loader first (plain data: polydet and seed files); a
    file it refuses for naming classes is read again with stand-ins for them (``restricted_load``)."""
    if is_torchscript_zip(path):  # torch.load would hand it to torch.jit.load
        raise ModelLoadError(f"{path} is a TorchScript archive, not a checkpoint: pass it as a model artifact")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - torch raises many kinds; all mean "not plain data"
        try:
            return restricted_load(path)
        except UnreadableCheckpointError:  # not a pickle either: torch's first message is the clearer one
            raise ModelLoadError(f"cannot read {path} as a torch checkpoint: {first}") from first


def read_checkpoint(path: str | Path, cfg: str | None = None) -> Checkpoint:
    """Model, ModelInfo and facts from any weights file polydet reads (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    ckpt = _read(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        model = PolygonYOLO(ckpt["yaml"])
        _strict_load(model, ckpt["state_dict"], str(path))
        facts = {"format": FORMAT, "layout": describe_layout(model.yaml),
                 **{k: ckpt[k] for k in ("epoch", "best_fitness") if isinstance(ckpt.get(k), (int, float))}}
        return Checkpoint(model, ModelInfo.from_json(ckpt["info"]), facts)
    if is_training_checkpoint(ckpt):
        return Checkpoint(*import_training_checkpoint(ckpt, path))
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        model, c = _seed_model(ckpt, path, cfg)
        names = [f"class{i}" for i in range(model.nc)] if model.nc != 2 else ["page", "photo"]
        return Checkpoint(model, ModelInfo(names=names, imgsz=224),
                          {"format": SEED_FORMAT, "cfg": c, "layout": describe_layout(model.yaml)})
    raise ModelLoadError(f"{path} is neither a polydet checkpoint, a polygon YOLOv5 training checkpoint, "
                         "nor a polygon YOLOv5 state_dict")


def load_model(path: str | Path, cfg: str | None = None, names: list[str] | None = None,
               imgsz: int | None = None, device: str | torch.device = "cpu") -> tuple[PolygonYOLO, ModelInfo]:
    """Load an eager model (eval mode, fp32) and its ModelInfo from a polydet checkpoint, a seed state_dict
    or a training checkpoint. ``names``/``imgsz`` override what the file says; ``cfg`` names the yaml of
    a plain state_dict (default: the first shipped cfg that matches)."""
    ck = read_checkpoint(path, cfg=cfg)
    model, info = ck.model, ck.info
    if names is not None:
        if len(names) != model.nc:
            raise ModelLoadError(f"{len(names)} class names given for a model with nc={model.nc}")
        info = dataclasses.replace(info, names=list(names))
    if imgsz is not None:
        info = dataclasses.replace(info, imgsz=imgsz)
    return model.to(device).eval(), info
