"""RKNN (RK3588) in rknn-toolkit2's PC simulator beside ONNX Runtime fp32: parity to the eager model and accuracy.

    python benchmarks/rknn_sim_bench.py --weights weights/polydet_main_area.pt --n-val 300 --out benchmarks/results/rknn_sim

The same validation set as benchmarks/runtimes_bench.py (synthetic, seed 999) and the same export check
(quant_bench.parity). No speed: the simulator emulates the NPU on this x86 CPU, so its time says nothing
about a board's (a board must measure it: README, RKNN). int8 is calibrated on --n-calib synthetic images
(seed 4242, QuantConfig's), as `polydet export --format rknn --precision int8` does by default.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant_bench import parity  # noqa: E402

from polydet.bench.common import run_and_report

VARIANTS = {  # name -> (format, export keyword arguments)
    "ONNX Runtime fp32": ("onnx", {}),
    "RKNN fp16 (simulator)": ("rknn", {"precision": "fp16"}),
    "RKNN int8 (simulator)": ("rknn", {"precision": "int8"}),
}


def run(args, workdir: Path) -> dict:
    from polydet.data.synth import write_dataset
    from polydet.evaluate import evaluate_artifact
    from polydet.export import FORMATS, export, load_or_build

    val = workdir / "val"
    write_dataset(val, args.n_val, seed=999, progress=False, preview=0)
    eager, info = load_or_build(args.weights)
    rows = {}
    for i, (name, (fmt, kw)) in enumerate(VARIANTS.items()):
        if kw.get("precision") == "int8":
            kw = {**kw, "quant": {"calib": "synth", "n_calib": args.n_calib}}
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            path, _ = export(args.weights, fmt, out=workdir / f"v{i}{FORMATS[fmt].suffix}", verify=False, **kw)
        built = time.perf_counter() - t0
        r = evaluate_artifact(path, val)
        rows[name] = {"map50": r["map50"], "map": r["map"], "mb": path.stat().st_size / 1e6, "export_s": built,
                      **parity(path, eager.eval(), info.imgsz)}
        print(f"{name}: mAP50 {r['map50']:.4f} mAP50-95 {r['map']:.4f} ({built:.0f} s to export)", flush=True)
    return {"weights": args.weights, "n_val": args.n_val, "n_calib": args.n_calib, "rows": rows}


def table(result: dict) -> str:
    ref = result["rows"]["ONNX Runtime fp32"]
    lines = ["| variant | mAP50 | mAP50-95 | vs ORT fp32 (mAP50 / mAP50-95) | MB | export check (corners px / scores) |",
             "|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['map50']:.4f} | {r['map']:.4f} | {r['map50'] - ref['map50']:+.4f} / "
                     f"{r['map'] - ref['map']:+.4f} | {r['mb']:.2f} | {r['parity_corners_px']:.3g} / "
                     f"{r['parity_scores']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights/polydet_main_area.pt")
    p.add_argument("--n-val", type=int, default=300)
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rknn_sim"))
    return run_and_report(p.parse_args(argv), run, table)


if __name__ == "__main__":
    sys.exit(main())
