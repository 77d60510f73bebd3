"""``polydet debug A B``: compare two ONNX artifacts layer by layer (the seed handbook's polygraphy step).

Every node output of both graphs is marked as a graph output and run with ONNX Runtime on the same
letterboxed images; tensors present in both (matched by name: ORT's QDQ quantizer keeps the float name of
every tensor it quantizes) are compared in A's graph order by cosine similarity, SNR and max abs error.
The error a layer *adds* is its SNR drop: the lowest SNR of its matched inputs minus its own; the table
points at the first layer whose drop exceeds ``--jump`` dB. Marking every tensor keeps ORT from fusing
QDQ pairs, so the final outputs are also compared unmarked, as the runtime serves them.

Artifacts with the contract passes compare with any other (debug_align.py): each is fed the same letterboxed
pixels in its own input format (uint8 NHWC for ``fuse-preprocess``); a fused graph's float tensor after its
``/255`` carries the plain graph's input name, so the body's tensors pair as before. When one artifact
outputs logits (``drop-sigmoid``), the other's final sigmoids are removed in memory and the head's tensors
are compared in **logit space**; the final outputs are compared as **probabilities** (the sigmoid applied
to any logit output), the scores a user gets from either.

    polydet debug model_fp32.onnx model_int8.onnx --images VAL_DIR --top 15
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .debug_align import Aligned, align, artifact_info, feed

SNR_CAP = 100.0  # dB reported for identical tensors (inf would hide every later drop)


@dataclass(frozen=True)
class LayerError:
    index: int  # position in A's graph order
    name: str  # the tensor compared
    op: str  # the op that produced it in A
    cosine: float
    snr_db: float  # 10 log10(|a|^2 / |a-b|^2), capped at SNR_CAP
    max_abs: float
    drop_db: float  # min SNR of its matched inputs minus its own: the error this layer adds


def tensor_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(cosine, SNR dB, max abs error) of ``b`` against the reference ``a`` (same shape)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    err = float(np.sum((a - b) ** 2))
    sig = float(np.sum(a * a))
    snr = SNR_CAP if err == 0 else min(SNR_CAP, 10 * math.log10(max(sig, 1e-30) / err))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = 1.0 if na == nb == 0 else float(a @ b / max(na * nb, 1e-30))
    return cos, snr, float(np.abs(a - b).max()) if a.size else 0.0


def _all_outputs_session(model):
    """An ORT session of ``model`` with every node output marked (no fusion between them), one thread."""
    import onnx
    import onnxruntime as ort

    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(path: Path, x: np.ndarray, to_logits: bool = False) -> tuple[dict, Aligned]:
    al = align(path, to_logits)
    sess = _all_outputs_session(al.model)
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {al.input_name: feed(x, al)})
    return {k: v for k, v in zip(names, values) if k not in al.skip}, al


def run_all(path: Path, x: np.ndarray, to_logits: bool = False) -> tuple[dict, list]:
    """{tensor: value} of every node output on the letterboxed batch ``x`` (fed in the artifact's own input
    format), and the graph's nodes in order, as debug_align.align rewrote them."""
    values, al = _run(path, x, to_logits)
    return values, list(al.model.graph.node)


def _info(path: Path):
    import onnx

    return artifact_info(onnx.load(str(path), load_external_data=False))


def _logits(path: Path) -> bool:
    return _info(path).logit_scores


def compare_layers(a: Path, b: Path, x: np.ndarray) -> list[LayerError]:
    """LayerError for every float tensor both graphs compute, in A's graph order. ``x``: letterboxed images,
    (B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1]; each artifact gets them in its own input format."""
    la, lb = _logits(a), _logits(b)
    va, al_a = _run(a, x, to_logits=lb and not la)
    vb, al_b = _run(b, x, to_logits=la and not lb)
    snr: dict[str, float] = {}
    for vals, al in ((va, al_a), (vb, al_b)):  # a plain graph's float input, as a fused graph's /255 output
        if not al.uint8:
            vals[al.float_input] = feed(x, al)
    if not al_a.uint8 and al_a.float_input in vb:  # A's input is no node of A: its SNR seeds the first layer
        snr[al_a.float_input] = tensor_stats(va[al_a.float_input], vb[al_a.float_input])[1]
    rows = []
    for node in al_a.model.graph.node:
        for name in node.output:
            ra, rb = va.get(name), vb.get(name)
            if ra is None or rb is None or ra.shape != rb.shape or ra.dtype.kind != "f" or rb.dtype.kind != "f":
                continue
            cos, s, mx = tensor_stats(ra, rb)
            snr[name] = s
            inputs = [snr[i] for i in node.input if i in snr]
            drop = (min(inputs) if inputs else SNR_CAP) - s
            rows.append(LayerError(len(rows), name, node.op_type, cos, s, mx, drop))
    return rows


def first_jump(rows: list[LayerError], jump_db: float) -> LayerError | None:
    """The first layer (graph order) that adds more than ``jump_db`` dB of error."""
    return next((r for r in rows if r.drop_db > jump_db), None)


def final_outputs(a: Path, b: Path, x) -> dict:
    """The artifacts' outputs as their backends serve them (nothing marked), each fed ``x`` in its own input
    format: cosine, SNR, max abs of corners (px) and of scores as probabilities (logits through the sigmoid)."""
    import torch

    from ..backends import load_backend

    outs = []
    with torch.inference_mode():  # Backend.__call__ puts logit scores through the sigmoid (sigmoid_scores)
        for path in (a, b):
            outs.append(load_backend(path)(torch.from_numpy(feed(x, align(path)))).float().numpy())
    oa, ob = outs
    out = {}
    for key, sl in (("corners", slice(0, 8)), ("scores", slice(8, None))):
        cos, s, mx = tensor_stats(oa[..., sl], ob[..., sl])
        out[key] = {"cosine": cos, "snr_db": s, "max_abs": mx}
    return out


def inputs_for(a: Path, images: str, n: int) -> np.ndarray:
    """``n`` letterboxed inputs in A's own input format: from a folder of images, or synthetic scenes ("synth")."""
    from ..backends import load_backend
    from ..export.int8 import QuantConfig, calibration_images
    from ..preprocess import CpuPreprocessor

    info = load_backend(a).info
    imgs = calibration_images(QuantConfig(calib=images, n_calib=n, calib_seed=777))
    return CpuPreprocessor(info, "cpu").__call__(imgs).batch.numpy()


def pixels_for(a: Path, images: str, n: int) -> np.ndarray:
    """:func:`inputs_for` as (B, H, W, 3) uint8 RGB pixels, the form every artifact's input is made from."""
    import torch

    from ..preprocess import to_uint8_nhwc

    return to_uint8_nhwc(torch.from_numpy(inputs_for(a, images, n))).contiguous().numpy()


def spaces(a: Path, b: Path) -> str:
    """The line saying in which space the head's tensors and the final scores are compared."""
    la, lb = _logits(a), _logits(b)
    if la != lb:
        head = f"in logit space ({'A' if la else 'B'} outputs logits: the other's final sigmoids removed for this)"
    else:
        head = "in logit space (both output logits)" if la else "as both graphs compute them (sigmoids kept)"
    return f"head tensors compared {head}; the served scores below as probabilities"


def format_table(rows: list[LayerError], top: int, jump_db: float) -> str:
    worst = sorted(rows, key=lambda r: -r.drop_db)[:top]
    lines = [f"{len(rows)} tensors compared; the {len(worst)} that add the most error (SNR drop vs their inputs):",
             f"{'#':>4} {'op':<18} {'cosine':>9} {'SNR dB':>7} {'drop dB':>8} {'max|err|':>10}  tensor"]
    for r in sorted(worst, key=lambda r: r.index):
        lines.append(f"{r.index:>4} {r.op:<18} {r.cosine:9.5f} {r.snr_db:7.1f} {r.drop_db:8.1f} {r.max_abs:10.4g}  {r.name}")
    j = first_jump(rows, jump_db)
    lines.append(f"first layer adding > {jump_db} dB: " + (f"#{j.index} {j.op} {j.name} (SNR {j.snr_db:.1f} dB)"
                                                         if j else "none"))
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet debug", description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="reference ONNX artifact (e.g. the fp32 export)")
    p.add_argument("b", type=Path, help="ONNX artifact to compare (e.g. the INT8 export)")
    p.add_argument("--images", default="synth", help="image folder, or 'synth' (default: 4 synthetic scenes)")
    p.add_argument("--n", type=int, default=4, help="images to run (default %(default)s)")
    p.add_argument("--top", type=int, default=15, help="rows of the table (default %(default)s)")
    p.add_argument("--jump", type=float, default=10.0, help="dB a layer must add to count as the jump")
    p.add_argument("--json", type=Path, help="also write every layer's numbers here")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..errors import PolydetError

    args = make_parser().parse_args(argv)
    try:
        for path in (args.a, args.b):
            if path.suffix.lower() != ".onnx" or not path.is_file():
                raise PolydetError(f"{path}: layerwise comparison needs an existing .onnx artifact")
        x = pixels_for(args.a, args.images, args.n)
        for path in (args.a, args.b):
            info = _info(path)
            if not info.dynamic and info.imgsz != x.shape[1]:
                raise PolydetError(f"{path} takes {info.imgsz}x{info.imgsz} images, {args.a} {x.shape[1]}x"
                                   f"{x.shape[2]}: compare artifacts of the same input size")
        rows = compare_layers(args.a, args.b, x)
        final = final_outputs(args.a, args.b, x)
    except PolydetError as e:
        print(f"polydet debug: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, args.top, args.jump))
    print(spaces(args.a, args.b))
    for key, v in final.items():
        print(f"final {key} (unmarked, as served): cosine {v['cosine']:.5f}  SNR {v['snr_db']:.1f} dB  "
              f"max|err| {v['max_abs']:.4g}")
    if args.json:
        args.json.write_text(json.dumps({"layers": [asdict(r) for r in rows], "final": final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
