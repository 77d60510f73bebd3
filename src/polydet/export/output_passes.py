"""ONNX graph passes that change the artifact's input or output (formats.CONTRACT_PASSES), each checked
against the graph it rewrote and recorded in ModelInfo.passes, which tells every backend and the pipeline
what the artifact takes and returns:

- ``fuse-preprocess``: the graph takes letterboxed ``(B, H, W, 3)`` uint8 **RGB** images (RGB: the order
  every polydet preprocessor produces, so nothing is reordered on the way in); ``Cast`` to the graph's
  float type, ``Transpose`` to NCHW and ``Div`` by 255 are inserted at its input, the same arithmetic as
  the CPU preprocessor's ``div_(255.0)``. ``ModelInfo.uint8_input`` then says so.
- ``drop-sigmoid``: the final sigmoids on obj/cls are removed; the output is ``meta.LAYOUT_LOGITS`` and
  the pipeline thresholds in logit space (``ops.nms.polygon_nms_logits``: the same kept rows as the
  sigmoid NMS, sigmoid applied to the rows that can pass only).

Each rewrite goes through passes._rewrite: the old and the new graph run on the same fixed 8-bit
pixels (in each graph's own input format), the new scores pass through the sigmoid where the pass
dropped it, and the file is replaced only within ``passes.PASS_TOLERANCE``. Measured with the bundled
weights at 224: 0.0 for fuse-preprocess (the same float input reaches the first conv), 1.2e-7 on scores
and 0.0 px for drop-sigmoid (a float64 sigmoid against ONNX Runtime's float32 one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ExportError, require
from ..meta import ModelInfo
from .passes import _rewrite, compare_graphs

# ops that only move data: the final sigmoids reach the output through these alone
_MOVES = {"Concat": None, "Reshape": 1, "Transpose": 1, "Flatten": 1, "Squeeze": 1, "Unsqueeze": 1,
          "Identity": 1}  # op -> how many leading inputs carry data (None: all)


def fuse_preprocess(path: Path, info: ModelInfo) -> None:
    """The graph takes (B, H, W, 3) uint8 RGB; Cast + Transpose + Div(255) inserted at its input."""
    _rewrite(path, info, "fuse-preprocess", _fuse)


def drop_sigmoid(path: Path, info: ModelInfo) -> None:
    """The Sigmoid nodes that reach the output through data movement alone are bypassed."""
    _rewrite(path, info, "drop-sigmoid", drop_final_sigmoids,
             compare=lambda a, b, i: compare_graphs(a, b, i, sigmoid_b=True))


def _fuse(m):
    onnx = require("onnx", "onnx", extra="onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = m.graph
    inp = graph.input[0]
    elem = inp.type.tensor_type.elem_type
    dims = list(inp.type.tensor_type.shape.dim)
    if elem == TensorProto.UINT8:
        raise ExportError("fuse-preprocess: the graph already takes uint8 (the pass ran twice?)")
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16) or len(dims) != 4 or dims[1].dim_value != 3:
        raise ExportError(f"fuse-preprocess needs a (B, 3, H, W) float input, got {inp.type}")
    name, inner = inp.name, inp.name + "_nchw"
    for node in graph.node:  # the old input becomes the inserted nodes' output
        node.input[:] = [inner if i == name else i for i in node.input]
    dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    graph.initializer.append(numpy_helper.from_array(np.array(255, dtype), name + "_255"))
    nodes = [helper.make_node("Cast", [name], [name + "_f"], to=elem, name="preprocess/Cast"),
             helper.make_node("Transpose", [name + "_f"], [name + "_t"], perm=[0, 3, 1, 2],
                              name="preprocess/Transpose"),
             helper.make_node("Div", [name + "_t", name + "_255"], [inner], name="preprocess/Div")]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    new = helper.make_tensor_value_info(name, TensorProto.UINT8, [_dim(dims[i]) for i in (0, 2, 3)] + [3])
    graph.input.remove(inp)
    graph.input.insert(0, new)
    onnx.checker.check_model(m)
    return m


def _dim(d):
    return d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)


def drop_final_sigmoids(m):
    """The drop-sigmoid pass's rewrite, in place on an in-memory ONNX model (``polydet debug`` uses it too)."""
    onnx = require("onnx", "onnx", extra="onnx")
    graph = m.graph
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found, stack, seen = [], [graph.output[0].name], set()
    while stack:  # from the output back through data movement only
        t = stack.pop()
        n = producer.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type == "Sigmoid":
            found.append(n)
        elif n.op_type in _MOVES:
            stack.extend(n.input[: _MOVES[n.op_type]] if _MOVES[n.op_type] else n.input)
    if not found:
        raise ExportError("drop-sigmoid: no Sigmoid reaches the output through data movement alone "
                          "(already dropped, or not a polydet head)")
    for sig in found:
        if any(u.op_type not in _MOVES for u in users.get(sig.output[0], [])):
            raise ExportError(f"drop-sigmoid: {sig.name}'s output is also used by computation")
        for u in users.get(sig.output[0], []):
            u.input[:] = [sig.input[0] if i == sig.output[0] else i for i in u.input]
        graph.node.remove(sig)
    onnx.checker.check_model(m)
    return m
