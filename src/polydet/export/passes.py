"""ONNX graph passes (the seed handbook's "simplify, optimize" step), each checked against the graph it
rewrote.

A pass is ``function(path, info)`` (``PASSES`` in formats.py): it loads the artifact, rewrites the graph
with its tool, puts ``info`` back as the metadata (onnxsim adds keys of its own, so every pass writes the
metadata anew), runs the old and the new graph with ONNX Runtime on fixed inputs, and replaces the file
only when every output agrees within ``PASS_TOLERANCE``. The output contract (one ``(B, N, 9+nc)``
tensor) is unchanged by all of them, so ModelInfo.layout stays what the pipeline decodes.

The passes that change the contract (uint8 NHWC input, logit scores) are in output_passes.py and go
through the same ``_rewrite``; splitting the output into coords/scores is not a pass (export/rknn.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..backends.base import META_KEY
from ..errors import ExportError, require
from ..meta import ModelInfo
from .common import fixed_inputs

# Max |rewritten - original| on the fixed inputs, both run by ONNX Runtime. The passes fold constants,
# drop shape arithmetic and fuse nothing numeric (BN is fused before export), so the outputs are
# expected bit for bit the same (measured: 0.0 for all three on the bundled weights and the random
# model); the slack only admits a different kernel order after a rewrite.
PASS_TOLERANCE = {"corners_px": 1e-3, "scores": 1e-5}


def slim(path: Path, info: ModelInfo) -> None:
    """onnxslim: constant folding, dead-code and shape-op elimination; keeps the dynamic batch axis and
    resolves the output shape (what ORT's quantizer needs)."""
    onnxslim = require("onnxslim", "onnxslim", extra="optimize")
    _rewrite(path, info, "slim", lambda m: onnxslim.slim(m))


def simplify(path: Path, info: ModelInfo) -> None:
    """onnx-simplifier (onnxsim): constant folding through ONNX Runtime, then onnxoptimizer's fusions."""
    onnxsim = require("onnxsim", "onnxsim", extra="optimize")

    def run(m):
        out, ok = onnxsim.simplify(m)
        if not ok:
            raise ExportError("onnxsim could not validate the simplified graph")
        return out

    _rewrite(path, info, "simplify", run)


def optimize(path: Path, info: ModelInfo) -> None:
    """onnxoptimizer's fuse-and-eliminate passes (no-op removal, shape-gather elimination, fusions)."""
    onnxoptimizer = require("onnxoptimizer", "onnxoptimizer", extra="optimize")
    _rewrite(path, info, "optimize",
             lambda m: onnxoptimizer.optimize(m, onnxoptimizer.get_fuse_and_elimination_passes()))


def _rewrite(path: Path, info: ModelInfo, name: str, transform, compare=None) -> None:
    """``transform`` the graph at ``path``; keep it only if ``compare(old, new, info)`` (default:
    :func:`compare_graphs`) is within PASS_TOLERANCE."""
    onnx = require("onnx", "onnx", extra="onnx")
    from .onnx import embed_info

    path = Path(path)
    old = onnx.load(str(path))
    kept = [(p.key, p.value) for p in old.metadata_props if p.key.startswith(META_KEY + ".")]  # int8 recipe
    try:
        new = transform(old)
    except ExportError:
        raise
    except Exception as e:  # any tool failure is an export error naming the pass
        raise ExportError(f"graph pass {name!r} failed on {path}: {e}") from e
    embed_info(new, info)
    for key, value in kept:
        new.metadata_props.add(key=key, value=value)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / path.name
        onnx.save(new, str(candidate))
        diff = (compare or compare_graphs)(path, candidate, info)
        bad = {k: v for k, v in diff.items() if v > PASS_TOLERANCE[k]}
        if bad:
            raise ExportError(f"graph pass {name!r} changed the outputs beyond {PASS_TOLERANCE}: {diff}")
        candidate.replace(path)


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """The first output of an ONNX graph on ``x`` (ONNX Runtime, CPU, one thread: deterministic)."""
    ort = require("onnxruntime", "onnxruntime", extra="onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def graph_input(path: Path, info: ModelInfo, eight_bit: bool = False) -> np.ndarray:
    """The fixed inputs in the graph's own input format: (B, H, W, 3) uint8 pixels for a graph taking
    uint8 (graph pass "fuse-preprocess"), else (B, 3, H, W) of its float type, rounded to 1/255 steps
    where ``eight_bit`` (to compare it with a graph taking uint8)."""
    onnx = require("onnx", "onnx", extra="onnx")
    elem = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.elem_type
    x = fixed_inputs((info.imgsz, info.imgsz))
    if elem == onnx.TensorProto.UINT8:
        return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    if eight_bit:
        x = (x * 255).round() / 255
    return x.to(torch.float16 if elem == onnx.TensorProto.FLOAT16 else torch.float32).numpy()


def compare_graphs(a: Path, b: Path, info: ModelInfo, sigmoid_b: bool = False) -> dict:
    """Max abs difference of two graphs' outputs on the fixed inputs: ``{"corners_px", "scores"}``; both
    get the same pixels, each in its own input format; ``sigmoid_b``: ``b`` outputs logits, compared
    after the sigmoid (graph pass "drop-sigmoid")."""
    xa, xb = graph_input(a, info), graph_input(b, info)
    if xa.dtype == np.uint8 or xb.dtype == np.uint8:  # one takes 8-bit pixels: so must the other
        xa, xb = graph_input(a, info, eight_bit=True), graph_input(b, info, eight_bit=True)
    oa, ob = run_onnx(a, xa).astype(np.float32), run_onnx(b, xb).astype(np.float32)
    if oa.shape != ob.shape:
        raise ExportError(f"graph pass changed the output shape {oa.shape} -> {ob.shape}")
    if sigmoid_b:
        from ..ops.nms import sigmoid_scores

        ob = sigmoid_scores(torch.from_numpy(ob)).numpy()
    d = np.abs(oa.astype(np.float64) - ob)
    return {"corners_px": float(d[..., :8].max()), "scores": float(d[..., 8:].max())}
