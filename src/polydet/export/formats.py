"""The export format table: one row per artifact format, read by ``export()``, the CLI and the archiver.

Adding a format is one module in this package (its exporter) plus one row in ``FORMATS``; nothing
outside that module asks which format it is. Importing this module imports no torch, so the CLI can
build its choices from the table cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from ..meta import Precision


@dataclass(frozen=True)
class ExportFormat:
    name: str  # what `polydet export --format` and archive.sh --formats call it
    suffix: str  # the artifact's file suffix, with its dot; the backend below must accept it
    exporter: str  # "module:function" imported when used; called as function(job: ExportJob) -> None
    backend: str  # the module in polydet.backends.MODULES that opens the artifact (and runs its check)
    precisions: tuple[Precision, ...]  # what it can export; anything else is refused, naming these
    passes: tuple[str, ...] = ()  # the graph passes (names in PASSES) it can run after exporting
    archive_suffix: str = ""  # TorchServe archive name: polydet<archive_suffix>.mar
    # True when its fp32 convolutions run in TF32 on CUDA whatever the run-time flag: tracing bakes
    # cuDNN's allow_tf32 into the graph, so the parity check holds it to TOLERANCES["tf32"] there.
    cuda_tf32: bool = False
    # files beside the artifact that it needs, archived with it: its name with the row's suffix replaced by each
    companions: tuple[str, ...] = ()
    fp16_input: bool = True  # False: its fp16 means fp16 weights taking fp32 input, exported on any device
    targets: tuple[str, ...] = ()  # hardware it compiles for (`polydet export --target`); the first is the default


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("torchscript", ".torchscript", ".torchscript:export_torchscript", "torchscript",
                 (Precision.FP32, Precision.FP16), cuda_tf32=True),
    ExportFormat("onnx", ".onnx", ".onnx:export_onnx", "onnxruntime",
                 (Precision.FP32, Precision.FP16, Precision.INT8), passes=("slim", "simplify", "optimize", "fuse-preprocess", "drop-sigmoid"),
                 archive_suffix="_onnx"),
    ExportFormat("tensorrt", ".engine", ".tensorrt:export_tensorrt", "tensorrt",  # fp32 engines: TF32 by default
                 (Precision.FP32, Precision.FP16, Precision.INT8), archive_suffix="_tensorrt", cuda_tf32=True,
                 companions=(".json",)),  # ModelInfo: an engine cannot hold it
    ExportFormat("openvino", ".xml", ".openvino:export_openvino", "openvino",
                 (Precision.FP32, Precision.FP16, Precision.INT8), archive_suffix="_openvino", companions=(".bin",),
                 fp16_input=False),
    ExportFormat("ncnn", ".ncnn.param", ".ncnn:export_ncnn", "ncnn", (Precision.FP32, Precision.FP16),
                 archive_suffix="_ncnn", companions=(".ncnn.bin", ".ncnn.json"), fp16_input=False),
    # MNN fp16 weights (its converter's --fp16) are not offered: a corner moved by 128 px on the random
    # model at 128 px (tests/unit/test_mnn.py keeps the measurement); fp32 is exact.
    ExportFormat("mnn", ".mnn", ".mnn:export_mnn", "mnn", (Precision.FP32,), archive_suffix="_mnn",
                 companions=(".json",)),
    # AOTInductor: compiled for the export's device (--device cuda to serve on a GPU); cuDNN convolutions in
    # TF32 on CUDA (fp32), as the TorchScript trace's
    ExportFormat("aoti", ".pt2", ".aoti:export_aoti", "aoti", (Precision.FP32, Precision.FP16),
                 archive_suffix="_aoti", cuda_tf32=True),
    # RKNN for the RK3588 NPU, built by rknn-toolkit2 in its own venv from the split-output ONNX (no fp32 on the
    # NPU: fp16 computes in fp16 on float32 input); .split.onnx: what the PC simulator rebuilds from
    ExportFormat("rknn", ".rknn", ".rknn:export_rknn", "rknn", (Precision.FP16, Precision.INT8),
                 archive_suffix="_rknn", companions=(".json", ".split.onnx"), fp16_input=False,
                 targets=("rk3588",)),  # the one built and simulated here; the toolkit knows more
)}

# Graph passes: name -> "module:function", called as function(path: Path, info: ModelInfo) -> None after
# the export, rewriting the artifact in place and keeping its metadata (``info``, passes included). An
# export runs the requested ones in the order given and records that order in ModelInfo.passes. Each
# checks its rewrite against the graph before it (export/passes.py: PASS_TOLERANCE) and keeps the output
# contract; the tools are the `optimize` extra.
PASSES: dict[str, str] = {
    "slim": ".passes:slim",  # onnxslim: folding, dead code, shapes resolved (what quantizers need)
    "simplify": ".passes:simplify",  # onnx-simplifier (onnxsim)
    "optimize": ".passes:optimize",  # onnxoptimizer's fuse-and-eliminate passes
    # the two below change the artifact's input or output (CONTRACT_PASSES): export/output_passes.py
    "fuse-preprocess": ".output_passes:fuse_preprocess",
    "drop-sigmoid": ".output_passes:drop_sigmoid",
}

# Passes that change what an artifact takes or returns, and what changes: a backend runs such an artifact
# only when its Capabilities.passes names the pass, and refuses it otherwise with this reason.
CONTRACT_PASSES: dict[str, str] = {
    "fuse-preprocess": "the artifact takes letterboxed (B, H, W, 3) uint8 RGB images; /255 and NCHW are in the graph",
    "drop-sigmoid": "the artifact outputs obj/cls logits; NMS must threshold them in logit space",
}


def resolve(spec: str) -> Callable:
    """``"module:function"`` -> the function; a module starting with "." is relative to this package."""
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module, __package__), func)


def for_backend(module: str) -> ExportFormat | None:
    """The format whose artifacts the backend ``module`` (a name in MODULES) opens, if polydet exports one."""
    return next((f for f in FORMATS.values() if f.backend == module), None)
