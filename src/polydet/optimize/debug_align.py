"""Two artifacts' graphs made comparable tensor by tensor when their contract passes differ (``polydet debug``).

- ``fuse-preprocess`` (meta.UINT8_INPUT_PASS): the graph takes letterboxed (B, H, W, 3) uint8 RGB and
  computes the float (B, 3, H, W) tensor in [0, 1] that a plain graph takes as its input. Here that tensor
  (the output of the inserted ``preprocess/Div``) is renamed to the name the graph's input had before the
  pass, and the uint8 input becomes ``<name>_uint8``: the body's first conv then reads a tensor of the same
  name in both graphs, and a fused graph's preprocessing is itself compared with the other's float input.
  The inserted Cast and Transpose outputs exist in fused graphs only, so they never pair with a plain one.
- ``drop-sigmoid`` (meta.LOGITS_PASS): the tensors between the removed sigmoids and the output keep their
  names but hold logits. When exactly one of the two graphs has logits, the other's final sigmoids are
  removed here too (the pass's own rewrite, in memory), so those tensors are compared in logit space in
  both graphs. Where that rewrite does not apply (a head quantized with Q/DQ after its sigmoids), the
  tensors reaching the output through data movement alone are left out of the comparison instead.

Every artifact is fed from the same letterboxed pixels, each in its own input format (``feed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError, require
from ..meta import ModelInfo

PREPROCESS_DIV = "preprocess/Div"  # the node export.output_passes._fuse inserts last: its output is the float input
_TAIL_OPS = {"Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity",
             "QuantizeLinear", "DequantizeLinear"}  # data movement (and Q/DQ) between head and output


@dataclass
class Aligned:
    model: object  # onnx.ModelProto, rewritten for the comparison (never saved)
    info: ModelInfo  # from the artifact's metadata (defaults when it carries none)
    input_name: str  # the graph input ORT is fed
    uint8: bool  # the input is (B, H, W, 3) uint8 RGB (fuse-preprocess), else (B, 3, H, W) float
    input_dtype: np.dtype  # of the graph input
    float_input: str  # the (B, 3, H, W) float tensor in [0, 1] the body starts from, named alike in both
    logits: bool  # obj/cls are logits in this graph as compared (its own pass, or removed here)
    skip: frozenset  # tensors left out of the comparison (see the module docstring)


def artifact_info(model) -> ModelInfo:
    """The ModelInfo an ONNX artifact carries (defaults, no passes, for a foreign export)."""
    from ..backends.base import META_KEY

    text = next((p.value for p in model.metadata_props if p.key == META_KEY), None)
    return ModelInfo.from_json(text) if text else ModelInfo()


def align(path: Path, to_logits: bool = False) -> Aligned:
    """The artifact at ``path`` as compared: fused preprocessing renamed, sigmoids removed if ``to_logits``."""
    onnx = require("onnx", "onnx", extra="onnx")
    model = onnx.load(str(path))
    info = artifact_info(model)
    inp = model.graph.input[0]
    uint8 = inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type))
    name = inp.name
    if uint8:
        _rename_fused_input(model, name)
    skip: frozenset = frozenset()
    logits = info.logit_scores
    if to_logits and not logits:
        from ..export.output_passes import drop_final_sigmoids  # the drop-sigmoid pass's own rewrite

        try:
            drop_final_sigmoids(model)
        except ExportError:
            skip = tail_tensors(model)
        logits = True
    return Aligned(model, info, inp.name, uint8, dtype, name, logits, skip)


def _rename_fused_input(model, name: str) -> None:
    """``name`` (uint8 input) -> ``name_uint8``; the preprocess/Div output -> ``name``."""
    div = next((n for n in model.graph.node if n.name == PREPROCESS_DIV), None)
    if div is None:
        raise ExportError(f"the graph takes uint8 but has no {PREPROCESS_DIV} node: not polydet's "
                          "fuse-preprocess pass, its tensors cannot be matched")
    inner, raw = div.output[0], name + "_uint8"
    for node in model.graph.node:
        node.input[:] = [raw if i == name else name if i == inner else i for i in node.input]
    div.output[0] = name
    model.graph.input[0].name = raw


def tail_tensors(model) -> frozenset:
    """Tensors reaching the graph's first output through data movement and Q/DQ alone (output included)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    seen, stack = set(), [model.graph.output[0].name]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        n = producer.get(t)
        if n is not None and n.op_type in _TAIL_OPS:
            stack.extend(i for i in n.input if i in producer)
    return frozenset(seen)


def feed(x: np.ndarray, a: Aligned) -> np.ndarray:
    """The letterboxed batch ``x`` ((B, H, W, 3) uint8, or (B, 3, H, W) float in [0, 1] on 1/255 steps) in
    ``a``'s own input format, converted as polydet's CPU preprocessor and ONNX Runtime backend do."""
    from ..preprocess import to_uint8_nhwc

    t = torch.from_numpy(np.ascontiguousarray(x))
    if a.uint8:
        return np.ascontiguousarray(to_uint8_nhwc(t).numpy())
    if t.dtype == torch.uint8:  # as CpuPreprocessor: to the input dtype, then /255
        t = t.permute(0, 3, 1, 2).to(torch.float16 if a.input_dtype == np.float16 else torch.float32).div_(255.0)
    return np.ascontiguousarray(t.numpy().astype(a.input_dtype))
