"""polydet: polygon (4-corner) YOLOv5 detectors, from weights to a TorchServe endpoint."""

__version__ = "0.1.0"

# Light imports only: importing polydet must not import torch-heavy runtimes or change global state.
from .errors import (ConfigError, ImageTooLargeError, InvalidInputError, MissingDependencyError,  # noqa: F401
                     ModelLoadError, PolydetError)
from .meta import ModelInfo  # noqa: F401


def __getattr__(name):  # lazy: `from polydet import Detector` without importing torch at package import
    if name == "Detector":
        from .pipeline import Detector

        return Detector
    raise AttributeError(name)
