"""Export a polygon YOLOv5 to any format of the table ``FORMATS`` (TorchScript, ONNX); the artifact
carries its ModelInfo and is verified against the eager model before export returns.

``FORMATS`` and ``ExportFormat`` import without torch (the CLI builds its choices from them); the rest
is imported when first used.
"""

import importlib

from .formats import FORMATS, PASSES, ExportFormat  # noqa: F401

_LAZY = {"export": ".exporter", "load_or_build": ".common", "TOLERANCES": ".verify", "verify_artifact": ".verify"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "PASSES", "ExportFormat", "TOLERANCES", "export", "load_or_build", "verify_artifact"]
