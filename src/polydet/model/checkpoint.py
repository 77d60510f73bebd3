"""Loading and saving weights: polydet's own checkpoint and the seeds' plain state_dict (``best.pth``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..meta import ModelInfo
from .yolo import CFG_DIR, PolygonYOLO, load_cfg

FORMAT = "polydet-checkpoint/v1"


def save_checkpoint(path: str | Path, model: PolygonYOLO, info: ModelInfo, **extra) -> None:
    """Save state_dict + model yaml + ModelInfo (+ anything in ``extra``, e.g. optimizer state)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "state_dict": state, "yaml": model.yaml, "info": info.to_json(), **extra}, path)


def _strict_load(model: PolygonYOLO, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        lines = [f"cannot load {source}: state_dict does not match the model"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {label} keys ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}")
        for k in shape[:12]:
            lines.append(f"  shape mismatch {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise ModelLoadError("\n".join(lines))
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


def load_model(path: str | Path, cfg: str | None = None, names: list[str] | None = None,
               imgsz: int | None = None, device: str | torch.device = "cpu") -> tuple[PolygonYOLO, ModelInfo]:
    """Load an eager model (eval mode) and its ModelInfo from a polydet checkpoint or a seed state_dict.

    For a seed state_dict, the cfg is the one given or the first shipped cfg whose shapes match.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds; all mean "not loadable"
        raise ModelLoadError(f"cannot read {path} as a torch checkpoint: {e}") from e
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        info = ModelInfo.from_json(ckpt["info"])
        model = PolygonYOLO(ckpt["yaml"])
        _strict_load(model, ckpt["state_dict"], str(path))
    elif isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        nc = _seed_nc(ckpt)
        candidates = [cfg] if cfg else [p.stem for p in sorted(CFG_DIR.glob("*.yaml"))]
        model, errors = None, []
        for c in candidates:
            m = PolygonYOLO(load_cfg(c), nc=nc)
            try:
                _strict_load(m, ckpt, f"{path} with cfg {c}")
                model = m
                break
            except ModelLoadError as e:
                errors.append(str(e))
        if model is None:
            raise ModelLoadError("\n".join(errors) + "\n(pass cfg= to name the model yaml)")
        info = ModelInfo(names=names or ([f"class{i}" for i in range(nc)] if nc != 2 else ["page", "photo"]),
                         imgsz=imgsz or 224)
    else:
        raise ModelLoadError(f"{path} is neither a polydet checkpoint nor a polygon YOLOv5 state_dict")
    if names is not None:
        if len(names) != model.nc:
            raise ModelLoadError(f"{len(names)} class names given for a model with nc={model.nc}")
        info.names = list(names)
    if imgsz is not None:
        info.imgsz = imgsz
    return model.to(device).eval(), info
