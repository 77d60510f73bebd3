"""fp32 vs optimised vs INT8 PTQ variants vs QAT of one model, accuracy, CPU speed and served throughput, in one run.

    python benchmarks/quant_bench.py --weights weights/polydet_main_area.pt --n-val 300 --out benchmarks/results/quant \
        [--qat best_224_qat.onnx] [--served-seconds 15]

Every artifact is exported from the same weights; accuracy is ``polydet.evaluate`` on one synthetic labelled
set (seed 999, the model card's validation seed; the first ``--n-val`` images); calibration uses its own
synthetic seed (QuantConfig.calib_seed) or ``--calib``. Speed: ONNX Runtime, ``--threads`` intra-op
threads, batch 1 latency (ms, median) and batch 8 throughput (img/s), measured interleaved over every
artifact in the same rounds (optimize/report.measure_speed), on real letterboxed validation images.
``--qat``: a QDQ ONNX from `polydet qat` of the same weights, added as a row (evaluated and timed like the
others; QAT itself runs before, its own command). ``--served-seconds``: each row archived as it is and served
by one real TorchServe (quant_served.py), REST img/s measured interleaved over ``--served-rounds`` rounds.
Writes <out>.json and <out>.md (the table BENCHMARKS.md quotes).

``--row LABEL=PATH`` (repeatable): rows from existing ONNX files instead of exporting any (one labelled fp32 is
the reference), e.g. the artifacts of an earlier ``--work`` run plus a QAT file. ``--no-eval``: speed only (no
mAP, no parity): the quick first look at a host's CPU (scripts/gpu_qat.sh measures INT8 vs fp32 so first). The
JSON records the CPU (model, VNNI) and the cores the process was allowed to run on (pin it with taskset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # quant_served

VARIANTS = {  # name -> export() keyword arguments
    "fp32": {},
    "fp32 slim+simplify": {"passes": ["slim", "simplify"]},
    "int8 minmax, head float": {"precision": "int8", "quant": {}},
    "int8 percentile, head float": {"precision": "int8", "quant": {"method": "percentile"}},
    "int8 entropy, head float": {"precision": "int8", "quant": {"method": "entropy"}},
    "int8 minmax, decode float": {"precision": "int8", "quant": {"exclude": "decode"}},
    "int8 minmax, nothing float": {"precision": "int8", "quant": {"exclude": "none"}},
    "int8 minmax, head float, no reduce_range": {"precision": "int8", "quant": {"reduce_range": False}},
}


def parity(path: Path, eager, imgsz: int) -> dict:
    """export()'s own check (max |artifact - eager| on its fixed inputs), returned rather than raised: two
    variants here are expected to fail it (they lose accuracy)."""
    import torch

    from polydet.backends import load_backend
    from polydet.export.common import fixed_inputs

    x = fixed_inputs((imgsz, imgsz))
    with torch.inference_mode():
        d = (load_backend(path)(x) - eager(x)).abs()
    return {"parity_corners_px": float(d[..., :8].max()), "parity_scores": float(d[..., 8:].max())}


def build(args, workdir: Path) -> dict:
    from polydet.export import export

    if args.row:  # existing artifacts, nothing exported
        paths = {label: Path(path) for label, _, path in (r.partition("=") for r in args.row)}
        if "fp32" not in paths or not all(paths.values()):
            raise SystemExit("--row needs LABEL=PATH pairs, one of them labelled fp32 (the reference)")
        return paths
    paths = {}
    names = ["fp32", *[v for v in args.variants if v != "fp32"]] if args.variants else list(VARIANTS)  # fp32: the reference
    chosen = {n: VARIANTS[n] for n in names}
    for i, (name, kw) in enumerate(chosen.items()):
        kw = dict(kw)
        if "quant" in kw:
            kw["quant"] = {"calib": args.calib, "n_calib": args.n_calib, **kw["quant"]}
        t = time.perf_counter()
        paths[name], _ = export(args.weights, "onnx", out=workdir / f"v{i}.onnx", imgsz=args.imgsz, verify=False, **kw)
        print(f"built {name} in {time.perf_counter() - t:.1f} s", flush=True)
    for spec in args.qat or ():
        label, _, path = spec.rpartition("=")
        paths[label or "QAT (polydet qat)"] = Path(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights/polydet_main_area.pt")
    p.add_argument("--imgsz", type=int)
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--calib", default="synth")
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10, help="batch-1 runs per artifact and round (batch 8: a quarter)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quant"))
    p.add_argument("--work", help="keep the artifacts and the validation set here (default: a temporary folder)")
    p.add_argument("--variants", type=lambda v: [x.strip() for x in v.split(";") if x.strip()],
                   help=f"';'-separated subset of the variants (default all: {'; '.join(VARIANTS)})")
    p.add_argument("--qat", action="append", metavar="[LABEL=]PATH",
                   help="a QDQ ONNX written by `polydet qat` from the same weights: one more row (repeatable)")
    p.add_argument("--row", action="append", metavar="LABEL=PATH",
                   help="an existing ONNX as a row, nothing exported (repeatable; one labelled fp32)")
    p.add_argument("--no-eval", action="store_true", help="speed only: no mAP, no parity check")
    p.add_argument("--served-seconds", type=float, default=0.0, help="served img/s per row and round (0: not served)")
    p.add_argument("--served-rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8, help="REST clients of the served measurement")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(args.work or tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))
    return 0


def run(args, workdir: Path) -> dict:
    from polydet.backends import load_backend
    from polydet.data.synth import write_dataset
    from polydet.evaluate import evaluate_artifact
    from polydet.export import TOLERANCES, load_or_build
    from polydet.optimize.report import cpu_facts, load_batch, measure_speed

    val = workdir / "val"
    if not (val / "dataset.json").is_file() or json.loads((val / "dataset.json").read_text())["n"] != args.n_val:
        write_dataset(val, args.n_val, seed=999, progress=False, preview=0)
    paths = build(args, workdir)
    rows = {}
    eager, info = load_or_build(args.weights, imgsz=args.imgsz)
    for name, path in paths.items():
        rows[name] = {"mb": path.stat().st_size / 1e6}
        if args.no_eval:
            continue
        r = evaluate_artifact(path, val)
        rows[name].update({"map50": r["map50"], "map": r["map"], **parity(path, eager.eval(), args.imgsz or info.imgsz)})
        print(f"{name}: mAP50 {r['map50']:.4f} mAP50-95 {r['map']:.4f}", flush=True)
    backends = {name: load_backend(path) for name, path in paths.items()}
    batch = load_batch(val, backends["fp32"].info, 8)
    speed = measure_speed(backends, batch, threads=args.threads, rounds=args.rounds, iters=args.iters)
    for name, row in rows.items():
        row.update(speed[name])
    if args.served_seconds > 0:
        from quant_served import served_throughput

        jpegs = [p.read_bytes() for p in sorted(val.glob("*.jpg"))[:16]]
        served = served_throughput(paths, jpegs, workdir, args.served_seconds, args.served_rounds, args.concurrency)
        for name, row in rows.items():
            row.update(served[name])
    return {"tolerance_int8": TOLERANCES["int8"], "weights": args.weights, "n_val": args.n_val, "calib": args.calib,
            "n_calib": args.n_calib, "threads": args.threads, "rounds": args.rounds, "iters": args.iters, "qat": args.qat,
            "served_seconds": args.served_seconds, "served_rounds": args.served_rounds, "concurrency": args.concurrency,
            "cpu": cpu_facts(), "cpu_affinity": sorted(os.sched_getaffinity(0)), "eval": not args.no_eval,
            "rows": rows}


def table(result: dict) -> str:
    ref = result["rows"]["fp32"]
    lines = [("| variant | mAP50 | mAP50-95 | ms/img batch 1 | x fp32 | img/s batch 8 | x fp32 | served img/s | x fp32 "
              "| MB | export check (corners px / scores) |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        served = (f"{r['served_img_s']:.1f} | {r['served_img_s'] / ref['served_img_s']:.2f}" if "served_img_s" in r
                  else "- | -")
        acc = f"{r['map50']:.4f} | {r['map']:.4f}" if "map50" in r else "- | -"
        check = f"{r['parity_corners_px']:.3g} / {r['parity_scores']:.3g}" if "parity_scores" in r else "-"
        lines.append(f"| {name} | {acc} | {r['ms_batch1']:.2f} | "
                     f"{r['ms_batch1'] / ref['ms_batch1']:.2f} | {r['img_s_batch8']:.1f} | "
                     f"{r['img_s_batch8'] / ref['img_s_batch8']:.2f} | {served} | {r['mb']:.2f} | {check} |")
    cpu = result.get("cpu", {})
    return "\n".join(lines) + (f"\n\nCPU: {cpu.get('cpu') or cpu.get('machine')} (VNNI: {cpu.get('vnni')}), cores "
                               f"{result.get('cpu_affinity')}, {result['threads']} thread(s)\n")


if __name__ == "__main__":
    sys.exit(main())
