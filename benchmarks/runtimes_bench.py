"""Every runtime polydet exports to, side by side in one run: parity to the eager model, accuracy, CPU speed.

    python benchmarks/runtimes_bench.py --weights weights/polydet_main_area.pt --n-val 300 --out benchmarks/results/runtimes

Each artifact is exported from the same weights (the formats whose runtime is installed); accuracy is
``polydet.evaluate`` on one synthetic labelled set (seed 999, the model card's validation seed); speed is
batch-1 latency (ms, median) and batch-8 throughput (img/s) with ``--threads`` threads per runtime,
measured interleaved over every artifact in the same rounds (optimize/report.measure_speed) on real
letterboxed validation images. Writes <out>.json and <out>.md (the table BENCHMARKS.md quotes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant_bench import parity, table  # noqa: E402

from polydet.bench.common import run_and_report

# name -> (format, export keyword arguments); what each needs installed is its backend's manifest
VARIANTS = {
    "fp32": ("onnx", {}),  # the reference row of the table (ONNX Runtime fp32)
    "TorchScript fp32": ("torchscript", {}),
    "ONNX Runtime int8 (head float)": ("onnx", {"precision": "int8", "quant": {}}),
    "OpenVINO fp32": ("openvino", {}),
    "OpenVINO fp16 weights": ("openvino", {"precision": "fp16"}),
    "OpenVINO int8 (head float)": ("openvino", {"precision": "int8", "quant": {}}),
    "NCNN fp32": ("ncnn", {}),
    "NCNN fp16 weights": ("ncnn", {"precision": "fp16"}),
    "MNN fp32": ("mnn", {}),
}


def missing(fmt: str) -> list[str]:
    """The distributions the format's backend imports (its Capabilities.runtime) that are not installed."""
    from polydet.backends import backend_class
    from polydet.export import FORMATS

    caps = backend_class(Path("m" + FORMATS[fmt].suffix)).capabilities
    return [d for d in caps.runtime if not _installed(d)]


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        return bool(metadata.version(dist))
    except metadata.PackageNotFoundError:
        return False


def build(args, workdir: Path) -> dict:
    from polydet.export import FORMATS, export

    paths = {}
    for i, (name, (fmt, kw)) in enumerate(VARIANTS.items()):
        if args.only and name != "fp32" and name not in args.only:
            continue
        if fmt not in FORMATS or missing(fmt):
            print(f"skipped {name}: {fmt} or {', '.join(missing(fmt))} not available", flush=True)
            continue
        kw = dict(kw)
        if "quant" in kw:
            kw["quant"] = {"calib": "synth", "n_calib": 64, **kw["quant"]}
        with contextlib.redirect_stdout(io.StringIO()):  # converters print their passes
            paths[name], _ = export(args.weights, fmt, out=workdir / f"v{i}{FORMATS[fmt].suffix}", verify=False, **kw)
        print(f"built {name}", flush=True)
    return paths


def run(args, workdir: Path) -> dict:
    import torch

    from polydet.backends import load_backend
    from polydet.data.synth import write_dataset
    from polydet.evaluate import evaluate_artifact
    from polydet.export import load_or_build
    from polydet.optimize.report import cpu_facts, load_batch, measure_speed

    torch.set_num_threads(args.threads)  # every backend takes its thread count from torch's when built
    val = workdir / "val"
    write_dataset(val, args.n_val, seed=999, progress=False, preview=0)
    paths = build(args, workdir)
    eager, info = load_or_build(args.weights)
    rows = {}
    for name, path in paths.items():
        r = evaluate_artifact(path, val)
        rows[name] = {"map50": r["map50"], "map": r["map"], "mb": sum(f.stat().st_size for f in
                                                                      path.parent.glob(path.stem.split(".")[0] + ".*")) / 1e6,
                      **parity(path, eager.eval(), info.imgsz)}
        print(f"{name}: mAP50 {r['map50']:.4f} mAP50-95 {r['map']:.4f}", flush=True)
    backends = {name: load_backend(path) for name, path in paths.items()}
    speed = measure_speed(backends, load_batch(val, backends["fp32"].info, 8), threads=args.threads,
                          rounds=args.rounds)
    for name, row in rows.items():
        row.update(speed[name])
    return {"weights": args.weights, "n_val": args.n_val, "threads": args.threads, "rounds": args.rounds,
            "cpu": cpu_facts(), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights/polydet_main_area.pt")
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes"))
    p.add_argument("--only", type=lambda v: [x.strip() for x in v.split(";") if x.strip()], default=[],
                   help=f"';'-separated variant names (fp32 always runs: the reference row); known: {'; '.join(VARIANTS)}")
    return run_and_report(p.parse_args(argv), run, table)


if __name__ == "__main__":
    sys.exit(main())
