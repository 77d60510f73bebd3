"""NCNN exporter: pnnx converts a trace of the fused model into ``<stem>.ncnn.param`` + ``<stem>.ncnn.bin``;
the ModelInfo goes into ``<stem>.ncnn.json`` beside them (an ncnn model holds no metadata).

pnnx runs its converter binary in a subprocess and writes its intermediate files (a pnnx graph, a Python
script, an ONNX file) next to what it is given: they go to a temporary folder and only the two ncnn files
and the JSON are kept.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import ExportError, require
from ..meta import Precision
from .common import ExportJob


def companions(param: Path) -> tuple[Path, Path]:
    """(weights .bin, metadata .json) that travel with an ``.ncnn.param`` file."""
    stem = param.name.removesuffix(".param")
    return param.with_name(stem + ".bin"), param.with_name(stem + ".json")


def export_ncnn(job: ExportJob) -> None:
    pnnx = require("pnnx", "pnnx", extra="ncnn")
    if not job.out.name.endswith(".ncnn.param"):
        raise ExportError(f"an NCNN artifact is named <stem>.ncnn.param, got {job.out.name}")
    binary, meta = companions(job.out)
    with tempfile.TemporaryDirectory(prefix="polydet-pnnx-") as tmp:
        tmp = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.jit.trace(job.model.float(), job.example.float(), strict=False).save(str(tmp / "m.pt"))
        names = {k: str(tmp / v) for k, v in (("pnnxparam", "m.pnnx.param"), ("pnnxbin", "m.pnnx.bin"),
                                               ("pnnxpy", "m_pnnx.py"), ("pnnxonnx", "m.pnnx.onnx"),
                                               ("ncnnpy", "m_ncnn.py"), ("ncnnparam", "m.ncnn.param"),
                                               ("ncnnbin", "m.ncnn.bin"))}
        # fp16: weights stored in half (ncnn computes in fp32 or its own fp16 arithmetic); the input stays fp32
        fp16 = job.info.precision is Precision.FP16
        pnnx.convert(str(tmp / "m.pt"), inputs=[job.example.float().cpu()], fp16=fp16, **names)
        if not Path(names["ncnnparam"]).is_file():
            raise ExportError("pnnx wrote no ncnn model (its output above says why)")
        shutil.copyfile(names["ncnnparam"], job.out)
        shutil.copyfile(names["ncnnbin"], binary)
    meta.write_text(job.info.to_json())
