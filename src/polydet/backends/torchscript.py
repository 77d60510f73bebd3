"""TorchScript backend (CPU, CUDA; fp16 on CUDA).

On CUDA the module and its input are put in channels_last memory format by default: cuDNN's NHWC
convolutions ran the fp16 model at 68,760 img/s vs 49,720 img/s contiguous on the H100 at 224
(BENCHMARKS.md, GPU). Outputs are the same tensors (tested in tests/gpu). On the CPU it stays off.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .base import META_KEY, Backend, first_output, info_from_meta


class TorchScriptBackend(Backend):
    name = "torchscript"

    def __init__(self, path, device="cpu", half=False, channels_last: bool | None = None):
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
        # None = auto: on for CUDA only
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.input_dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return first_output(self.model(x)).float()
