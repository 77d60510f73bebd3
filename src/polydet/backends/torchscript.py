"""TorchScript backend (CPU, CUDA; fp16 on CUDA).

On CUDA the module and its input are put in channels_last memory format by default (cuDNN's NHWC
convolutions are faster there: BENCHMARKS.md, GPU); outputs are the same tensors (tested in
tests/gpu). On the CPU it stays off.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError
from .base import META_KEY, Backend, Capabilities, first_output, info_from_meta, is_torchscript


class TorchScriptBackend(Backend):
    name = "torchscript"
    suffixes = (".torchscript", ".pt")
    capabilities = Capabilities(devices=("cpu", "cuda"), runtime=("torch",), fp16_cast=True)

    @classmethod
    def accepts(cls, path: Path) -> bool:
        suffix = path.suffix.lower()
        return suffix == ".torchscript" or (suffix == ".pt" and is_torchscript(path))

    def __init__(self, path, device="cpu", precision=None, channels_last: bool | None = None):
        super().__init__(path, device, precision)
        extra = {META_KEY: ""}
        try:
            self.model = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot load TorchScript {self.path}: {e}") from e
        self.model.eval()
        self.info = info_from_meta(extra[META_KEY], None, None, self.path)
        if self.half and self.device.type != "cuda":
            raise ModelLoadError("fp16 needs a CUDA device")
        self.model = self.model.half() if self.half else self.model.float()
        # None = auto: on for CUDA only
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.input_dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return first_output(self.model(x)).float()


BACKEND = TorchScriptBackend
