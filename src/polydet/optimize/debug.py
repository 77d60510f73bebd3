"""``polydet debug A B``: compare two ONNX artifacts layer by layer (the seed handbook's polygraphy step).

Every node output of both graphs is marked as a graph output and run with ONNX Runtime on the same
letterboxed images; tensors present in both (matched by name: ORT's QDQ quantizer keeps the float name of
every tensor it quantizes) are compared in A's graph order by cosine similarity, SNR and max abs error.
The error a layer *adds* is its SNR drop: the lowest SNR of its matched inputs minus its own; the table
points at the first layer whose drop exceeds ``--jump`` dB. Marking every tensor keeps ORT from fusing
QDQ pairs, so the final outputs are also compared unmarked, as the runtime serves them.

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


def _all_outputs_session(path: Path):
    """An ORT session of the graph with every node output marked (no fusion between them), one thread."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, model


def run_all(path: Path, x: np.ndarray) -> tuple[dict, list]:
    """{tensor: value} of every node output on ``x``, and the graph's nodes in order."""
    sess, model = _all_outputs_session(path)
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: x})
    return dict(zip(names, values)), list(model.graph.node)


def compare_layers(a: Path, b: Path, x: np.ndarray) -> list[LayerError]:
    """LayerError for every float tensor both graphs compute, in A's graph order."""
    va, nodes = run_all(a, x)
    vb, _ = run_all(b, x)
    snr: dict[str, float] = {}
    rows = []
    for node in nodes:
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
    """The artifacts' outputs as their backends serve them (nothing marked): cosine, SNR, max abs."""
    import torch

    from ..backends import load_backend

    with torch.inference_mode():
        oa, ob = load_backend(a)(torch.from_numpy(x)).numpy(), load_backend(b)(torch.from_numpy(x)).numpy()
    out = {}
    for key, sl in (("corners", slice(0, 8)), ("scores", slice(8, None))):
        cos, s, mx = tensor_stats(oa[..., sl], ob[..., sl])
        out[key] = {"cosine": cos, "snr_db": s, "max_abs": mx}
    return out


def inputs_for(a: Path, images: str, n: int) -> np.ndarray:
    """``n`` letterboxed inputs for A: from a folder of images, or synthetic scenes ("synth")."""
    from ..backends import load_backend
    from ..export.int8 import QuantConfig, calibration_images
    from ..preprocess import CpuPreprocessor

    info = load_backend(a).info
    imgs = calibration_images(QuantConfig(calib=images, n_calib=n, calib_seed=777))
    return CpuPreprocessor(info, "cpu").__call__(imgs).batch.numpy()


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
        x = inputs_for(args.a, args.images, args.n)
        rows = compare_layers(args.a, args.b, x)
        final = final_outputs(args.a, args.b, x)
    except PolydetError as e:
        print(f"polydet debug: error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows, args.top, args.jump))
    for key, v in final.items():
        print(f"final {key} (unmarked, as served): cosine {v['cosine']:.5f}  SNR {v['snr_db']:.1f} dB  "
              f"max|err| {v['max_abs']:.4g}")
    if args.json:
        args.json.write_text(json.dumps({"layers": [asdict(r) for r in rows], "final": final}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
