"""ONNX exporter: the TorchScript-based torch.onnx exporter, ModelInfo in the graph's metadata_props."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from ..backends.base import META_KEY
from ..errors import ExportError, require
from ..meta import ModelInfo, Precision
from .common import ExportJob


def export_onnx(job: ExportJob) -> None:
    """fp32/fp16: the traced graph. int8: the fp32 graph, then ONNX Runtime's static QDQ quantization
    (``job.quant``, default ``QuantConfig()``: see export/int8.py)."""
    if job.info.precision is Precision.INT8:
        from .int8 import QuantConfig, quantize_onnx

        fp32 = job.out.with_name(job.out.stem + ".fp32.tmp.onnx")
        try:
            _trace(dataclasses.replace(job, out=fp32))
            quantize_onnx(fp32, job.out, job.info, job.quant or QuantConfig())
        finally:
            fp32.unlink(missing_ok=True)
        return
    _trace(job)


def _trace(job: ExportJob) -> None:
    onnx = require("onnx", "onnx", extra="onnx")
    # Batch is always dynamic (servers batch requests); height/width only with --dynamic.
    axes = {"images": {0: "batch"}, "output": {0: "batch"}}
    if job.info.dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript-based exporter gives a plain, static graph for this CNN and
        # needs no onnxscript at export time.
        torch.onnx.export(job.model, (job.example,), str(job.out), opset_version=job.opset, input_names=["images"],
                          output_names=["output"], dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    m = onnx.load(str(job.out))
    ops = {n.op_type for n in m.graph.node}
    if "ScatterND" in ops:
        raise ExportError("ONNX graph contains ScatterND: the head must use split/cat")
    embed_info(m, job.info)
    onnx.checker.check_model(m)
    onnx.save(m, str(job.out))


def embed_info(model, info: ModelInfo) -> None:
    """Replace an ONNX ModelProto's metadata with ``info`` (also for graph passes whose tool drops it)."""
    del model.metadata_props[:]
    model.metadata_props.add(key=META_KEY, value=info.to_json())
