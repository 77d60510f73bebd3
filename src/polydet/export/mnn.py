"""MNN exporter: the ONNX export converted by MNN's converter into ``<stem>.mnn``; the ModelInfo goes into
``<stem>.json`` beside it (an MNN model holds no polydet metadata).

The converter is called through its compiled library function (``_tools.mnnconvert``), never through the
``mnnconvert`` command or ``MNN.tools``: those import a logger that runs ``pip install`` when a package is
missing and sends the machine's id and the conversion's arguments to a remote endpoint
(tests/unit/test_mnn.py runs the export with sockets and subprocesses refused).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from pathlib import Path

from ..errors import ExportError, require
from .common import ExportJob
from .onnx import export_onnx


def export_mnn(job: ExportJob) -> None:
    tools = require("_tools", "MNN (its converter library)", extra="mnn")
    with tempfile.TemporaryDirectory(prefix="polydet-mnn-") as tmp:
        onnx_path = Path(tmp) / "m.onnx"
        export_onnx(dataclasses.replace(job, out=onnx_path))
        args = ["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(job.out),
                "--bizCode", "polydet"]
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            ok = tools.mnnconvert(args)
        if not ok or not job.out.is_file():
            raise ExportError(f"MNN's converter failed: {log.getvalue()[-1000:]}")
    job.out.with_suffix(".json").write_text(job.info.to_json())
