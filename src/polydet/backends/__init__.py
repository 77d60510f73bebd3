"""Backends: one file per runtime, chosen by file suffix, each importing its runtime only when used."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelLoadError
from .base import Backend, is_torchscript

# suffix -> (module, class). ".pt" is sniffed: TorchScript archive or a torch.save checkpoint.
REGISTRY = {
    ".torchscript": ("torchscript", "TorchScriptBackend"),
    ".onnx": ("onnxruntime", "OnnxRuntimeBackend"),
    ".engine": ("tensorrt", "TensorRTBackend"),
    ".trt": ("tensorrt", "TensorRTBackend"),
    ".pth": ("eager", "EagerBackend"),
    ".ckpt": ("eager", "EagerBackend"),
}


def backend_class(path: str | Path) -> type[Backend]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        key = ("torchscript", "TorchScriptBackend") if is_torchscript(path) else ("eager", "EagerBackend")
    elif suffix in REGISTRY:
        key = REGISTRY[suffix]
    else:
        raise ModelLoadError(f"unknown artifact type {suffix!r} for {path}: expected one of "
                             f"{', '.join(sorted([*REGISTRY, '.pt']))}")
    return getattr(importlib.import_module(f"{__name__}.{key[0]}"), key[1])


def load_backend(path: str | Path, device="cpu", half: bool = False, **kw) -> Backend:
    """Open an artifact with the backend its suffix names."""
    if not Path(path).is_file():
        raise ModelLoadError(f"model artifact not found: {path}")
    return backend_class(path)(path, device=device, half=half, **kw)


__all__ = ["Backend", "REGISTRY", "backend_class", "load_backend"]
