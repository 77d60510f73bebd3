"""AOTInductor backend: a ``.pt2`` package from ``polydet export --format aoti`` (CPU or CUDA, as compiled).

The package's precision, device type, layout and largest batch are its own (its metadata): an fp16 package
takes fp16 input, and a package compiled for one device type is refused on another with the reason.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from ..meta import Precision
from .base import META_KEY, Backend, Capabilities, first_output, info_from_meta

_DEVICE_KEY = "AOTI_DEVICE_KEY"  # written by Inductor itself: "cpu" or "cuda"


class AotiBackend(Backend):
    name = "aoti"
    suffixes = (".pt2",)
    capabilities = Capabilities(devices=("cpu", "cuda"), runtime=("torch",))  # the device compiled for

    def __init__(self, path, device="cpu", precision=None):
        super().__init__(path, device, precision)
        from torch._inductor import aoti_load_package

        try:
            index = self.device.index if self.device.index is not None else -1
            self.model = aoti_load_package(str(self.path), device_index=index)
            meta = self.model.get_metadata()
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot load AOTInductor package {self.path}: {e}") from e
        built_for = meta.get(_DEVICE_KEY, "?")
        if built_for != self.device.type:
            raise ModelLoadError(f"{self.path} was compiled for {built_for}, not {self.device.type}: export it "
                                 f"again with --device {self.device.type}")
        self.info = info_from_meta(meta.get(META_KEY), None, None, self.path)
        if self.requested is not None and self.requested is not self.info.precision:
            raise ModelLoadError(f"{self.path} is a compiled {self.info.precision.value} package: its precision "
                                 f"is fixed at export, not {self.requested.value}")
        self.channels_last = meta.get("polydet_channels_last") == "true"
        self.chunk = int(meta.get("polydet_max_batch", 1))

    @property
    def precision(self) -> Precision:
        return self.info.precision

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device, self.input_dtype).contiguous(memory_format=fmt)
        outs = [first_output(self.model(x[i : i + self.chunk])) for i in range(0, len(x), self.chunk)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).float()


BACKEND = AotiBackend
