"""Backends: one file per runtime, each declaring the suffixes it opens and importing its runtime only
when an artifact is opened. Adding a runtime is one new module here and its name in ``MODULES``."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelLoadError
from .base import Backend

# Asked in this order: the first backend that accepts a path opens it (".pt" is TorchScript when the
# zip holds code/, else a torch.save checkpoint for the eager backend).
MODULES = ("torchscript", "onnxruntime", "tensorrt", "openvino", "ncnn", "mnn", "aoti", "rknn", "eager")


def backend_classes() -> list[type[Backend]]:
    classes = []
    for name in MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        classes.append(mod.BACKEND)
    return classes


def suffixes() -> list[str]:
    return sorted({s for cls in backend_classes() for s in cls.suffixes})


def backend_class(path: str | Path) -> type[Backend]:
    path = Path(path)
    for cls in backend_classes():
        if cls.accepts(path):
            return cls
    raise ModelLoadError(f"unknown artifact type {path.suffix.lower()!r} for {path}: expected one of "
                         f"{', '.join(suffixes())}")


def load_backend(path: str | Path, device="cpu", precision=None, **kw) -> Backend:
    """Open an artifact with the backend that accepts it; ``kw`` are that backend's own options."""
    if not Path(path).is_file():
        raise ModelLoadError(f"model artifact not found: {path}")
    return backend_class(path)(path, device=device, precision=precision, **kw).check()


__all__ = ["Backend", "MODULES", "backend_class", "backend_classes", "load_backend", "suffixes"]
