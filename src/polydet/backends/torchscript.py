"""TorchScript backend (CPU, CUDA; fp16 on CUDA)."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .base import META_KEY, Backend, first_output, info_from_meta


class TorchScriptBackend(Backend):
    name = "torchscript"

    def __init__(self, path, device="cpu", half=False):
        super().__init__(path, device, half)
        extra = {META_KEY: ""}
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot load TorchScript {self.path}: {e}") from e
        self.model.eval()
        self.info = info_from_meta(extra[META_KEY], None, None, self.path)
        if half and self.device.type != "cuda":
            raise ModelLoadError("fp16 (half=True) needs a CUDA device")
        self.half = half or self.info.half
        self.model = self.model.half() if self.half else self.model.float()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(x.to(self.device, self.input_dtype))).float()
