"""MNN backend (the MNN wheel's runtime, CPU): ``<stem>.mnn`` and the ``<stem>.json`` polydet writes beside
it. The graph keeps the ONNX export's dynamic batch axis."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelLoadError, require
from ..meta import ModelInfo
from .base import Backend, Capabilities, first_output


class MnnBackend(Backend):
    name = "mnn"
    suffixes = (".mnn",)
    capabilities = Capabilities(runtime=("MNN",), extra="mnn")

    def __init__(self, path, device="cpu", precision=None, threads: int | None = None):
        super().__init__(path, device, precision)
        require("MNN", "MNN", extra="mnn")
        import MNN.expr as F
        import MNN.nn as nn

        if self.device.type != "cpu":
            raise ModelLoadError("the MNN backend here runs on the CPU")
        meta = self.path.with_suffix(".json")
        if not meta.is_file():
            raise ModelLoadError(f"{self.path} needs {meta.name} beside it (polydet export --format mnn writes both)")
        self.info = ModelInfo.from_json(meta.read_text())
        try:
            self.net = nn.load_module_from_file(str(self.path), ["images"], ["output"],
                                                thread_num=int(threads) if threads else torch.get_num_threads())
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"MNN could not load {self.path}: {e}") from e
        self._F = F

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.net.forward(self._F.const(arr, list(arr.shape), self._F.NCHW))
        return first_output(torch.from_numpy(np.array(out.read(), dtype=np.float32)))


BACKEND = MnnBackend
