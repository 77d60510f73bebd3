"""OpenVINO backend: an IR (``NAME.xml`` with ``NAME.bin`` beside it) on the CPU plugin.

The IR's input shape gives ``max_batch`` when its batch is static. The CPU plugin is held to f32
inference: on CPUs with AMX/AVX512-FP16 its default would be bf16/fp16 and the artifact's parity would
depend on the host. An IR with fp16 weights (export ``--precision fp16``) still takes fp32 input.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelLoadError, require
from ..meta import Precision
from .base import META_KEY, Backend, Capabilities, first_output, info_from_meta


class OpenVinoBackend(Backend):
    name = "openvino"
    suffixes = (".xml",)
    capabilities = Capabilities(runtime=("openvino",), extra="openvino")

    def __init__(self, path, device="cpu", precision=None, threads: int | None = None):
        """``threads``: the CPU plugin's inference threads; None = torch's (``torch.get_num_threads()``), so
        one setting sizes every runtime in a worker, as for ONNX Runtime."""
        super().__init__(path, device, precision)
        ov = require("openvino", "openvino", extra="openvino")
        if self.device.type != "cpu":
            raise ModelLoadError(f"the OpenVINO backend runs on the CPU, not {self.device}")
        self.threads = int(threads) if threads else torch.get_num_threads()
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                              "INFERENCE_PRECISION_HINT": "f32"})
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot load OpenVINO IR {self.path} (and its .bin): {e}") from e
        meta = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else None
        inp, out = model.inputs[0].get_partial_shape(), model.outputs[0].get_partial_shape()
        self.info = info_from_meta(meta, _static(out[out.rank.get_length() - 1]), _static(inp[3]), self.path)
        self.max_batch = _static(inp[0])
        if self.requested is Precision.FP16 and self.info.precision is not Precision.FP16:
            raise ModelLoadError(f"{self.path}: OpenVINO runs on the CPU in fp32; export an IR with fp16 weights "
                                 "(`polydet export --format openvino --precision fp16`) instead")
        self.request = self.compiled.create_infer_request()

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.float32  # fp16 IRs hold fp16 weights; their input stays fp32

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.request.infer({0: arr})
        return first_output([torch.from_numpy(np.array(out[o])) for o in self.compiled.outputs]).float()


def _static(dim) -> int | None:
    """An OpenVINO Dimension's length, None when dynamic."""
    return dim.get_length() if dim.is_static else None


BACKEND = OpenVinoBackend
