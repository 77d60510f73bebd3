"""RKNN backend (Rockchip NPU): ``NAME.rknn`` with the ``NAME.json`` (ModelInfo) polydet writes beside it.

Two runtimes, chosen when the artifact is opened (``runtime=`` forces one):
- ``"board"``: rknn-toolkit-lite2's ``RKNNLite`` on an RK3588 (aarch64) board, when ``rknnlite`` imports.
  UNTESTED: no RK3588 board is reachable from this project's machines, and rknn-toolkit-lite2 has no x86
  wheel (PyPI has 2.5.0 for aarch64 only). Written against the signatures in that wheel's rknnlite/api/
  rknn_lite.py (load_rknn, init_runtime(core_mask=NPU_CORE_AUTO), inference(inputs, data_format), release).
- ``"simulator"``: rknn-toolkit2's PC simulator in its own venv (export/rknn_sim.py), which rebuilds the
  model from ``NAME.split.onnx`` and its recipe (at the first inference, not when opened): what tests,
  ``polydet eval`` and the export check run here.

The artifact takes one image (batch 1, fixed size) in float32; its two outputs (coords, scores) are put
back together into the pipeline's (B, N, 9+nc) layout.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from ..errors import ModelLoadError, require
from ..meta import ModelInfo
from .base import Backend, Capabilities

RUNTIMES = ("board", "simulator")


class RknnBackend(Backend):
    name = "rknn"
    suffixes = (".rknn",)
    capabilities = Capabilities(batch="one", env="rknn")  # the PC simulator; a board: rknn-toolkit-lite2

    def __init__(self, path, device="cpu", precision=None, runtime: str | None = None):
        super().__init__(path, device, precision)
        if self.device.type != "cpu":
            raise ModelLoadError(f"an RKNN model runs on the NPU (or its simulator), not on {self.device}")
        meta = self.path.with_suffix(".json")
        if not meta.is_file():
            raise ModelLoadError(f"{self.path} needs {meta.name} beside it (polydet export --format rknn writes it)")
        self.info = ModelInfo.from_json(meta.read_text())
        if self.requested is not None and self.requested is not self.info.precision:
            raise ModelLoadError(f"{self.path} is a {self.info.precision.value} RKNN model: its precision is chosen "
                                 "when exporting (`polydet export --format rknn --precision fp16|int8`)")
        self.max_batch = 1
        self.runtime = runtime or ("board" if importlib.util.find_spec("rknnlite") else "simulator")
        if self.runtime not in RUNTIMES:
            raise ModelLoadError(f"unknown RKNN runtime {self.runtime!r}: {', '.join(RUNTIMES)}")
        self._run = self._board() if self.runtime == "board" else self._simulator()

    def _board(self):
        api = require("rknnlite.api", "rknn-toolkit-lite2 (on the RK3588 board)")
        lite = api.RKNNLite()
        if lite.load_rknn(str(self.path)) != 0 or lite.init_runtime(core_mask=api.RKNNLite.NPU_CORE_AUTO) != 0:
            raise ModelLoadError(f"RKNNLite could not load {self.path} on this board")
        self._close = lite.release
        return lambda x: lite.inference(inputs=[x], data_format=["nchw"])

    def _simulator(self):
        from ..export.rknn_sim import Simulator

        sim = Simulator(self.path, self.info)
        self._close = sim.close
        return sim

    def close(self) -> None:
        """Stop the simulator's child process (or release the board's runtime)."""
        self._close()

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.float32  # fp16 and int8 models take float32 input; the NPU converts it

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        coords, scores = self._run(arr)
        return torch.from_numpy(np.concatenate([coords, scores], -1).astype(np.float32))


BACKEND = RknnBackend
