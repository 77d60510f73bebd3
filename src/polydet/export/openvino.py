"""OpenVINO exporter: the traced ONNX graph converted to an IR (``.xml`` graph + ``.bin`` weights, kept
together), ModelInfo in the IR's rt_info under META_KEY.

Precisions: fp32 (weights as traced), fp16 *weights* (``save_model(compress_to_fp16=True)``; the IR
still takes and returns fp32, and the CPU plugin computes in fp32; ``save_model`` compresses by default:
fp32 is asked for explicitly) and int8 (NNCF on the fp32 IR: export/openvino_int8.py).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from ..backends.base import META_KEY
from ..errors import ExportError, require
from ..meta import Precision
from .common import ExportJob
from .onnx import export_onnx


def export_openvino(job: ExportJob) -> None:
    ov = require("openvino", "openvino", extra="openvino")
    if job.out.suffix.lower() != ".xml":
        raise ExportError(f"an OpenVINO IR is written as NAME.xml (+ NAME.bin beside it), not {job.out.name}")
    # The exporter hands fp16 jobs a half model; the IR is traced in fp32 and its weights compressed when saved
    # (the fp16-rounded weights, cast back, are what compression stores).
    fp32 = dataclasses.replace(job.info, precision=Precision.FP32)
    with tempfile.TemporaryDirectory(prefix="polydet-ov-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(dataclasses.replace(job, model=job.model.float(), example=job.example.float(), out=onnx,
                                        info=fp32))
        model = ov.Core().read_model(str(onnx))
    model.set_rt_info(job.info.to_json(), [META_KEY])
    if job.info.precision is not Precision.INT8:
        ov.save_model(model, str(job.out), compress_to_fp16=job.info.precision is Precision.FP16)
        return
    from .int8 import QuantConfig
    from .openvino_int8 import quantize_ir

    with tempfile.TemporaryDirectory(prefix="polydet-ov-") as tmp:
        ov.save_model(model, str(Path(tmp) / "fp32.xml"), compress_to_fp16=False)
        quantize_ir(Path(tmp) / "fp32.xml", job.out, job.info, job.quant or QuantConfig())
