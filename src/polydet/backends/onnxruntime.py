"""ONNX Runtime backend (CPU provider; CUDA provider when installed and the device is CUDA).

A graph exported with a fixed batch (the seed's own export.py, or any export without dynamic axes)
reports it as ``max_batch``; ``Backend.__call__`` then runs larger batches in chunks of it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelLoadError, require
from ..meta import Precision
from ..preprocess import to_uint8_nhwc
from .base import META_KEY, Backend, Capabilities, first_output, info_from_meta


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    suffixes = (".onnx",)
    capabilities = Capabilities(devices=("cpu", "cuda"), runtime=("onnxruntime",), extra="onnx",  # cuda: -gpu build
                                passes=("fuse-preprocess", "drop-sigmoid"))  # uint8 NHWC input, logit scores

    def __init__(self, path, device="cpu", precision=None, threads: int | None = None):
        """``threads``: ONNX Runtime's intra-op threads; None = torch's (``torch.get_num_threads()``), so one
        setting (``torch.set_num_threads``, the handler's ``torch_threads``) sizes both runtimes. Left to
        ONNX Runtime's own default, every TorchServe worker would run one thread per core."""
        super().__init__(path, device, precision)
        ort = require("onnxruntime", "onnxruntime", extra="onnx")
        opts = ort.SessionOptions()
        self.threads = int(threads) if threads else torch.get_num_threads()
        opts.intra_op_num_threads = self.threads
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelLoadError("device is CUDA but onnxruntime has no CUDAExecutionProvider: "
                                     "pip install onnxruntime-gpu, or use the TorchScript artifact")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"cannot load ONNX model {self.path}: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        no = out.shape[-1] if isinstance(out.shape[-1], int) else None
        uint8 = inp.type == "tensor(uint8)"
        side = inp.shape[2 if uint8 else -1] if len(inp.shape) == 4 else None
        self.info = info_from_meta(meta.get(META_KEY), no, side if isinstance(side, int) else None, self.path)
        if uint8 != self.info.uint8_input:  # the graph and its metadata disagree: neither can be trusted
            raise ModelLoadError(f"{self.path}: the graph takes {inp.type} but its metadata records passes "
                                 f"{self.info.passes}; re-export it")
        self.input_name = inp.name
        self.max_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if inp.type == "tensor(float16)":  # the graph's own input type wins over its metadata
            self.requested = Precision.FP16
        elif self.requested is Precision.FP16:
            raise ModelLoadError(f"{self.path} takes float32 input: ONNX Runtime cannot run it in fp16; "
                                 "export an fp16 artifact instead")

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")  # session.run returns numpy arrays, on any provider

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.info.uint8_input:
            arr = to_uint8_nhwc(x.detach()).cpu().numpy()
        else:
            arr = x.detach().to("cpu", self.input_dtype).numpy()
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(arr)})
        return first_output([torch.from_numpy(o) for o in out]).float()


BACKEND = OnnxRuntimeBackend
