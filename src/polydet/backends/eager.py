"""Eager PyTorch backend over a polydet checkpoint or a seed state_dict (BN fused)."""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .base import Backend, first_output


class EagerBackend(Backend):
    name = "eager"

    def __init__(self, path, device="cpu", half=False, model=None, info=None):
        super().__init__(path, device, half)
        if model is None:
            from ..model import load_model

            model, info = load_model(path, device=self.device)
        if half and self.device.type != "cuda":
            raise ModelLoadError("fp16 (half=True) needs a CUDA device")
        self.model = model.to(self.device).eval().fuse()
        self.model = self.model.half() if half else self.model.float()
        self.info = info

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.model(x.to(self.device, self.input_dtype))).float()
