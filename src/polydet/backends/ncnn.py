"""NCNN backend (the ncnn wheel's Python binding, CPU): ``<stem>.ncnn.param`` with its ``.bin`` and the
``.json`` polydet writes beside them.

ncnn runs one image at a time (its Mat has no batch axis): the backend reports ``max_batch`` 1 and
``Backend.__call__`` feeds a batch image by image. ``ncnn.Mat(array)`` wraps the array's memory without
copying (an array that goes away leaves garbage, with no error), so each input is cloned into memory
ncnn owns before it is handed over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError, require
from ..meta import ModelInfo
from .base import Backend, Capabilities, first_output


class NcnnBackend(Backend):
    name = "ncnn"
    suffixes = (".param",)
    capabilities = Capabilities(batch="one", runtime=("ncnn",), extra="ncnn")

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.name.endswith(".ncnn.param")

    def __init__(self, path, device="cpu", precision=None, threads: int | None = None):
        super().__init__(path, device, precision)
        ncnn = require("ncnn", "ncnn", extra="ncnn")
        if self.device.type != "cpu":
            raise ModelLoadError("the ncnn backend here runs on the CPU (its Vulkan path is not wired up)")
        stem = self.path.name.removesuffix(".param")
        binary, meta = self.path.with_name(stem + ".bin"), self.path.with_name(stem + ".json")
        for f in (binary, meta):
            if not f.is_file():
                raise ModelLoadError(f"{self.path} needs {f.name} beside it (polydet export --format ncnn writes both)")
        self.info = ModelInfo.from_json(meta.read_text())
        self.net = ncnn.Net()
        self.net.opt.num_threads = int(threads) if threads else torch.get_num_threads()
        if self.net.load_param(str(self.path)) != 0 or self.net.load_model(str(binary)) != 0:
            raise ModelLoadError(f"ncnn could not load {self.path} / {binary.name}")
        self.input_name, self.output_name = _io_names(self.path)
        self.max_batch = 1
        self._ncnn = ncnn

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(x[0].detach().to("cpu", torch.float32).numpy())
        ex = self.net.create_extractor()
        ex.input(self.input_name, self._ncnn.Mat(image).clone())  # ncnn-owned memory: see the module doc
        ret, out = ex.extract(self.output_name)
        if ret != 0:
            raise RuntimeError(f"ncnn extract failed ({ret})")
        return first_output(torch.from_numpy(np.array(out, dtype=np.float32))[None])


def _io_names(param: Path) -> tuple[str, str]:
    """The Input layer's blob and the last layer's output blob of an ncnn .param file."""
    lines = [ln.split() for ln in param.read_text().splitlines()[2:] if ln.strip()]
    inputs = [ln[4 + int(ln[2])] for ln in lines if ln[0] == "Input"]
    if len(inputs) != 1:
        raise ModelLoadError(f"{param}: expected one Input layer, found {len(inputs)}")
    last = lines[-1]
    return inputs[0], last[4 + int(last[2])]


BACKEND = NcnnBackend
