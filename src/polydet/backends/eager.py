"""Eager PyTorch backend over a polydet checkpoint or a seed state_dict (BN fused)."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .base import Backend, Capabilities, first_output


class EagerBackend(Backend):
    name = "eager"
    suffixes = (".pth", ".ckpt", ".pt")  # .pt reaches here when it is not TorchScript (MODULES' order)
    capabilities = Capabilities(devices=("cpu", "cuda"), shapes="any", runtime=("torch",), fp16_cast=True)

    def __init__(self, path, device="cpu", precision=None, model=None, info=None):
        super().__init__(path, device, precision)
        if model is None:
            from ..model import load_model

            model, info = load_model(path, device=self.device)
        self.info = info
        if self.half and self.device.type != "cuda":
            raise ModelLoadError("fp16 needs a CUDA device")
        self.model = model.to(self.device).eval().fuse()
        self.model = self.model.half() if self.half else self.model.float()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(x.to(self.device, self.input_dtype))).float()


BACKEND = EagerBackend
