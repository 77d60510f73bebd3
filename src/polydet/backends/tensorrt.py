"""TensorRT backend seam (via torch2trt). Neither package can be installed from PyPI; install both on a
GPU host by hand. Loading fails with a clear message when they are absent."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError, require
from ..meta import ModelInfo
from .base import Backend, first_output


class TensorRTBackend(Backend):
    name = "tensorrt"
    suffixes = (".engine", ".trt")

    def __init__(self, path, device="cuda", precision=None):
        super().__init__(path, device, precision)
        require("tensorrt", "tensorrt (NVIDIA's index; not installable from PyPI)")
        torch2trt = require("torch2trt", "torch2trt (github.com/NVIDIA-AI-IOT/torch2trt)")
        if self.device.type != "cuda":
            raise ModelLoadError("TensorRT engines run on CUDA devices only")
        meta = self.path.with_suffix(".json")  # engines cannot hold metadata: a JSON beside the engine
        self.info = ModelInfo.from_json(meta.read_text()) if meta.exists() else ModelInfo()
        self.model = torch2trt.TRTModule()
        self.model.load_state_dict(torch.load(self.path, map_location=self.device))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(x.to(self.device, self.input_dtype))).float()


BACKEND = TensorRTBackend
