"""AOTInductor backend: a ``.pt2`` package from ``polydet export --format aoti`` (CPU or CUDA, as compiled).

The package's precision, device type, layout and largest batch are its own (its metadata): an fp16 package
takes fp16 input, and a package compiled for one device type is refused on another with the reason, read
from the archive before its library is loaded. A package compiled for a fixed batch (``polydet_batch_fixed``)
gets its last chunk padded to that batch.
"""

from __future__ import annotations

import json
import zipfile

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
        meta = read_metadata(self.path)  # before any runner exists: a refusal constructs nothing
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
        self.fixed = meta.get("polydet_batch_fixed") == "true"  # compiled for exactly `chunk` images a call
        self.model = _load(self.path, self.device)

    @property
    def precision(self) -> Precision:
        return self.info.precision

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.device, self.input_dtype).contiguous(memory_format=fmt)
        outs = []
        for i in range(0, len(x), self.chunk):
            part = x[i : i + self.chunk]
            n = len(part)
            if self.fixed and n < self.chunk:  # padded with zeros to the compiled batch, the padding's rows dropped
                part = torch.cat([part, part.new_zeros((self.chunk - n, *part.shape[1:]))]).contiguous(memory_format=fmt)
            outs.append(first_output(self.model(part))[:n])
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).float()


def read_metadata(path) -> dict[str, str]:
    """The package's metadata (Inductor's keys and the exporter's) read from the archive itself, without
    loading the compiled library: ``<name>/data/aotinductor/model/*.wrapper_metadata.json``."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("_metadata.json") and "/data/aotinductor/model/" in n]
            text = z.read(sorted(names, key=lambda n: "wrapper" not in n)[0]) if names else None
    except (OSError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"cannot read AOTInductor package {path}: {e}") from e
    if text is None:
        raise ModelLoadError(f"{path} holds no AOTInductor model (no data/aotinductor/model/*_metadata.json)")
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ModelLoadError(f"{path}: its AOTInductor metadata is not JSON: {e}") from e
    return {str(k): str(v) for k, v in meta.items()}


def _load(path, device: torch.device):
    """The compiled model on ``device``; on CUDA the context exists and the index is explicit first."""
    from torch._inductor import aoti_load_package

    index = -1
    if device.type == "cuda":
        torch.cuda.init()
        index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return aoti_load_package(str(path), device_index=index)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load AOTInductor package {path}: {e}") from e


BACKEND = AotiBackend
