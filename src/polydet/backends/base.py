"""The backend interface: a loaded artifact that maps a float image batch to the head output."""

from __future__ import annotations


import zipfile
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..meta import ModelInfo

META_KEY = "polydet"  # TorchScript extra file name / ONNX metadata_props key holding ModelInfo JSON


class Backend:
    """Subclasses load one runtime lazily. ``__call__(x: (B,3,H,W) float in [0,1]) -> (B,N,9+nc) float32``."""

    name = "base"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", half: bool = False):
        self.path = Path(path)
        self.device = torch.device(device)
        self.half = half
        self.info: ModelInfo = ModelInfo()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    @property
    def output_device(self) -> torch.device:
        """Where ``__call__``'s predictions are (hence where NMS runs): the backend's device unless a
        runtime hands its outputs back on the CPU."""
        return self.device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, device={self.device}, half={self.half})"


def first_output(out):
    """Users' exports return the tensor or a tuple/list whose first element is it; accept both."""
    if isinstance(out, (tuple, list)):
        if not out:
            raise ModelLoadError("model returned an empty tuple")
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        raise ModelLoadError(f"model output must be a (B, N, 9+nc) tensor, got {getattr(out, 'shape', type(out))}")
    return out


def info_from_meta(text: str | bytes | None, no: int | None, imgsz: int | None, path: Path) -> ModelInfo:
    """ModelInfo from the artifact's own metadata, or a best guess (with a warning) for foreign exports."""
    if text:
        return ModelInfo.from_json(text)
    import warnings

    nc = (no - 9) if no else 2
    warnings.warn(f"{path} carries no polydet metadata: assuming class names class0..class{nc - 1}, "
                  f"imgsz {imgsz or 224}; re-export with `polydet export` to embed them", stacklevel=3)
    return ModelInfo(names=[f"class{i}" for i in range(nc)], imgsz=imgsz or 224)


def is_torchscript(path: Path) -> bool:
    """TorchScript archives and torch.save checkpoints are both zips; TorchScript has code/ inside."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError, IndexError):
        return False





