"""Export a polygon YOLOv5 to TorchScript or ONNX; the artifact carries its ModelInfo and is verified
against the eager model before export returns."""

from .exporter import TOLERANCES, export, load_or_build, verify_artifact  # noqa: F401
