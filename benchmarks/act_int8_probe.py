"""Probe (issue 12): does SiLU keep ONNX Runtime's static INT8 from beating fp32 on this CPU?

    .venv/bin/python benchmarks/act_int8_probe.py [--rounds 9] [--keep DIR]

Hypothesis: SiLU (x * sigmoid(x)) stays float between the quantized convs (DQ -> Sigmoid -> Mul -> Q), which
eats INT8's gain; with ReLU, ORT fuses Conv+Relu into QLinearConv and the backbone stays int8 end to end.
Builds from the bundled weights, through the library's own export path (export.common + export.onnx's
tracer + export.int8.quantize_onnx with the default ``QuantConfig()``):

- fp32 SiLU: the normal fp32 ONNX export;
- fp32 ReLU: the same fused weights with every ``nn.SiLU`` replaced by ``nn.ReLU`` (its detections are
  meaningless: SPEED ONLY, accuracy is not measured);
- INT8 SiLU / INT8 ReLU: each fp32 graph through ``quantize_onnx`` (head float, per channel, reduce_range
  chosen from the CPU);
- INT8 ReLU exclude=none: the head quantized too (accuracy known bad with one output tensor; speed only).

Times them with ONNX Runtime sessions of 1 intra-op thread, sequential execution, on letterboxed real
inputs (the bundled examples/*.jpg, filled to 8 with synthetic scenes of seed 999), in interleaved rounds
(each round times every artifact once, the order rotating), median per artifact; prints img/s at batch 1
and 8, the ratios, and each graph's op histogram after ORT's optimisation (optimized_model_filepath).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch
from torch import nn

WEIGHTS = "weights/polydet_main_area.pt"
B1_ITERS, B8_ITERS = 50, 12  # runs per artifact per round (median taken inside the round, then over rounds)


def relu_model(model: nn.Module) -> nn.Module:
    """``model`` with every nn.SiLU module replaced by nn.ReLU (in place); returns it."""
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SiLU):
                setattr(parent, name, nn.ReLU())
                n += 1
    if n == 0 or any(isinstance(m, nn.SiLU) for m in model.modules()):
        raise RuntimeError(f"SiLU swap failed ({n} replaced)")
    print(f"fp32 ReLU: replaced {n} nn.SiLU modules by nn.ReLU (SPEED ONLY: its outputs are not a detector)")
    return model


def build(workdir: Path) -> dict[str, Path]:
    """The five artifacts, through the library's export path; name -> path."""
    from polydet.export.common import ExportJob, example_input, fused_copy, load_or_build
    from polydet.export.int8 import QuantConfig, quantize_onnx
    from polydet.export.onnx import export_onnx
    from polydet.meta import Precision

    eager, info = load_or_build(WEIGHTS)
    info32 = dataclasses.replace(info, precision=Precision.FP32, passes=(), dynamic=False, letterbox="square")
    info8 = dataclasses.replace(info32, precision=Precision.INT8)
    x = example_input(info32.imgsz, Precision.FP32, "cpu")
    paths = {"fp32 SiLU": workdir / "fp32_silu.onnx", "fp32 ReLU": workdir / "fp32_relu.onnx"}
    for name, act in (("fp32 SiLU", False), ("fp32 ReLU", True)):
        model = fused_copy(eager.eval(), Precision.FP32, "cpu")
        export_onnx(ExportJob(relu_model(model) if act else model, x, paths[name], info32))
    jobs = {"INT8 SiLU": ("fp32 SiLU", QuantConfig()), "INT8 ReLU": ("fp32 ReLU", QuantConfig()),
            "INT8 ReLU exclude=none": ("fp32 ReLU", QuantConfig(exclude="none"))}
    for name, (src, cfg) in jobs.items():
        t = time.perf_counter()
        paths[name] = workdir / (name.replace(" ", "_").replace("=", "-") + ".onnx")
        with contextlib.redirect_stderr(io.StringIO()):  # the calibration progress bar
            recipe = quantize_onnx(paths[src], paths[name], info8, cfg)
        print(f"{name}: quantize_onnx({src}) in {time.perf_counter() - t:.1f} s, recipe {recipe}")
    return paths


def inputs(info) -> np.ndarray:
    """(8, 3, S, S) float32: the bundled sample images and synthetic scenes (seed 999), letterboxed."""
    from polydet.data.synth import render_sample
    from polydet.preprocess import CpuPreprocessor

    imgs: list = [p.read_bytes() for p in sorted((ROOT / "examples").glob("*.jpg"))][:8]
    imgs += [render_sample(np.random.default_rng([999, i]))[0] for i in range(8 - len(imgs))]
    return CpuPreprocessor(info, "cpu", torch.float32)(imgs).batch.numpy()


def session(path: Path, optimized: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _median_s(sess, feed: dict, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_all(paths: dict[str, Path], x8: np.ndarray, rounds: int) -> dict:
    """name -> {"b1": img/s, "b8": img/s}, medians over interleaved rounds with a rotating order."""
    sessions = {k: session(p) for k, p in paths.items()}
    name_in = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    feeds = {k: ({name_in[k]: x8[:1]}, {name_in[k]: x8}) for k in sessions}
    for k, s in sessions.items():  # warm up: first runs allocate
        for f in feeds[k]:
            s.run(None, f), s.run(None, f)
    keys, res = list(sessions), {k: {"b1": [], "b8": []} for k in sessions}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            res[k]["b1"].append(1 / _median_s(sessions[k], feeds[k][0], B1_ITERS))
            res[k]["b8"].append(8 / _median_s(sessions[k], feeds[k][1], B8_ITERS))
        print(f"round {r + 1}/{rounds} done, load average {os.getloadavg()[0]:.2f}", flush=True)
    return {k: {b: statistics.median(v) for b, v in d.items()} | {"spread": d} for k, d in res.items()}


def histograms(paths: dict[str, Path], workdir: Path) -> dict:
    """name -> (op histogram of the file, op histogram after ORT's ENABLE_ALL optimisation)."""
    import onnx

    out = {}
    for k, p in paths.items():
        opt = workdir / (p.stem + ".ort_opt.onnx")
        session(p, opt)
        hist = [collections.Counter(n.op_type for n in onnx.load(str(f)).graph.node) for f in (p, opt)]
        out[k] = hist
    return out


def report(speed: dict, hists: dict) -> None:
    print("\n== speed: ONNX Runtime, 1 intra-op thread, sequential; img/s, median of rounds (min..max) ==")
    print(f"{'artifact':26s} {'b1 img/s':>9s} {'(ms/img)':>9s} {'b8 img/s':>9s}   b1 range        b8 range")
    for k, s in speed.items():
        r1, r8 = s["spread"]["b1"], s["spread"]["b8"]
        print(f"{k:26s} {s['b1']:9.1f} {1e3 / s['b1']:9.2f} {s['b8']:9.1f}   {min(r1):6.1f}..{max(r1):6.1f}"
              f"  {min(r8):6.1f}..{max(r8):6.1f}")
    pairs = [("INT8 SiLU", "fp32 SiLU"), ("INT8 ReLU", "fp32 ReLU"), ("fp32 ReLU", "fp32 SiLU"),
             ("INT8 ReLU", "fp32 SiLU"), ("INT8 ReLU exclude=none", "fp32 ReLU"),
             ("INT8 ReLU exclude=none", "fp32 SiLU")]
    print("\n== throughput ratios (a / b, >1: a is faster) ==")
    for a, b in pairs:
        print(f"{a + ' / ' + b:45s} batch 1 {speed[a]['b1'] / speed[b]['b1']:.3f}   "
              f"batch 8 {speed[a]['b8'] / speed[b]['b8']:.3f}")
    print("\n== op histograms: in the file -> after ORT ENABLE_ALL (optimized_model_filepath) ==")
    for k, (raw, opt) in hists.items():
        print(f"\n{k}: {sum(raw.values())} nodes in the file, {sum(opt.values())} after ORT")
        print("  file: " + ", ".join(f"{o} {n}" for o, n in raw.most_common()))
        print("  ORT:  " + ", ".join(f"{o} {n}" for o, n in opt.most_common()))
        qlinear = sum(n for o, n in opt.items() if o.startswith("QLinear"))
        floaty = sum(opt.get(o, 0) for o in ("Sigmoid", "Mul", "Conv", "FusedConv", "Add", "Relu"))
        print(f"  after ORT: QLinear* ops {qlinear}, DequantizeLinear {opt.get('DequantizeLinear', 0)}, "
              f"QuantizeLinear {opt.get('QuantizeLinear', 0)}, float compute ops (Sigmoid/Mul/Conv/FusedConv/Add/"
              f"Relu) {floaty}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--keep", type=Path, default=None, help="write the artifacts here instead of a temp dir")
    args = p.parse_args(argv)
    import onnxruntime as ort

    from polydet.export.common import load_or_build
    from polydet.optimize.report import cpu_facts

    torch.set_num_threads(1)  # the export and calibration stay off the other process's core
    t0 = time.perf_counter()
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; cpu {cpu_facts()}; "
          f"cores {os.cpu_count()}; load average {os.getloadavg()}")
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}; weights {WEIGHTS}")
    print("NOTE: the ReLU artifacts are the SiLU weights with the activation swapped: SPEED ONLY, not accuracy.")
    with tempfile.TemporaryDirectory(prefix="act_int8_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        paths = build(workdir)
        x8 = inputs(load_or_build(WEIGHTS)[1])
        print(f"inputs: {x8.shape} {x8.dtype} (examples/*.jpg + synthetic seed 999, letterboxed)")
        for k, path in paths.items():
            print(f"  {k}: {path.stat().st_size / 1e6:.2f} MB")
        hists = histograms(paths, workdir)
        speed = time_all(paths, x8, args.rounds)
        report(speed, hists)
    print(f"\nfinished {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} in {time.perf_counter() - t0:.0f} s; "
          f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
