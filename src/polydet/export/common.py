"""What every exporter shares: the model to export (built or loaded), the job an exporter is handed,
and the fixed inputs the parity check runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..meta import ModelInfo, Precision
from ..model import PolygonYOLO, load_model


@dataclass(frozen=True)
class ExportJob:
    """What a format's exporter gets: write ``model`` to ``out`` with ``info`` embedded as the artifact's
    metadata (backends.base.META_KEY). ``model`` is fused, in eval mode, on the export device and already
    in ``info.precision`` where that is a dtype (fp16); ``example`` is a (1,3,imgsz,imgsz) input of that
    dtype. Options a format does not use (``opset`` for TorchScript) are ignored by it."""

    model: torch.nn.Module
    example: torch.Tensor
    out: Path
    info: ModelInfo
    opset: int = 17  # ONNX opset
    quant: object = None  # int8 only: an export.int8.QuantConfig (None: its defaults)
    target: str | None = None  # the hardware target, one of the row's ExportFormat.targets (None: it has none)


def load_or_build(weights: str, cfg: str | None = None, names=None, imgsz=None, seed: int = 0):
    """A checkpoint/state_dict path, or ``random[:cfg]`` for a random-weight demo model (tests, demos)."""
    if weights.startswith("random"):
        torch.manual_seed(seed)
        cfg = weights.partition(":")[2] or cfg or "polygon_yolov5n"
        model = PolygonYOLO(cfg, nc=len(names) if names else 2).eval()
        return model, ModelInfo(names=list(names or ["page", "photo"]), imgsz=imgsz or 224)
    return load_model(weights, cfg=cfg, names=names, imgsz=imgsz)


def fused_copy(model: PolygonYOLO, precision: Precision, device) -> PolygonYOLO:
    """A BN-fused copy of ``model`` on ``device`` in ``precision`` (the eager model stays the unfused
    fp32 reference of the parity check)."""
    fused = PolygonYOLO(model.yaml).to(device)
    fused.load_state_dict(model.state_dict())
    fused = fused.eval().fuse()
    return fused.half() if precision.input_half else fused


def example_input(imgsz: int, precision: Precision, device) -> torch.Tensor:
    dtype = torch.float16 if precision.input_half else torch.float32
    return torch.zeros(1, 3, imgsz, imgsz, device=device, dtype=dtype)


def fixed_inputs(imgsz: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """Deterministic test batch: noise plus a bright quad on grey, in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *imgsz, generator=g) * 0.5 + 0.25
    h, w = imgsz
    x[:, :, h // 4 : 3 * h // 4, w // 5 : 3 * w // 5] = 0.95
    return x
