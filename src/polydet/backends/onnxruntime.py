"""ONNX Runtime backend (CPU provider; CUDA provider when installed and the device is CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ModelLoadError, require
from .base import META_KEY, Backend, first_output, info_from_meta


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path, device="cpu", half=False, threads: int | None = None):
        """``threads``: ONNX Runtime's intra-op threads; None = torch's (``torch.get_num_threads()``), so one
        setting (``torch.set_num_threads``, the handler's ``torch_threads``) sizes both runtimes. Left to
        ONNX Runtime's own default, every TorchServe worker would run one thread per core."""
        super().__init__(path, device, half)
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
        side = inp.shape[-1] if isinstance(inp.shape[-1], int) else None
        self.info = info_from_meta(meta.get(META_KEY), no, side, self.path)
        self.input_name = inp.name
        self.half = half or self.info.half or inp.type == "tensor(float16)"

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")  # session.run returns numpy arrays, on any provider

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", self.input_dtype).numpy()
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(arr)})
        return first_output([torch.from_numpy(o) for o in out]).float()
