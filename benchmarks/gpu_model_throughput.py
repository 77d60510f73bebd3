"""Model-only images/s on a GPU: TorchScript fp32 and fp16, several batch sizes and input sizes.

Run on the H100 by scripts/gpu_tests.sh (the default sweep: TorchScript traced on CUDA, fp32 and fp16)
and by scripts/gpu_serve_bench.sh (``--variants`` with the speed-ups tried for the fp16 target).
Timings use CUDA events after warm-up, inputs already on the device (model only: no decode, letterbox
or NMS). Variants:

- ``torchscript``: the exported artifact through polydet's backend (what the pipeline runs);
- ``torchscript_cl``: the same module and input in channels_last memory format;
- ``eager_cl``: the BN-fused eager model, channels_last;
- ``eager_cl_graph``: that, captured once in a CUDA graph per batch size and replayed;
- ``compile_cl``: ``torch.compile`` (inductor, default mode) of the channels_last eager model;
  compiled once per batch size, so keep ``--batches`` short for it.

Prints a Markdown table; ``--json`` writes the rows (written after every row, so a run cut short keeps
what it measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.backends import load_backend  # noqa: E402
from polydet.bench.common import table, weights_or_random  # noqa: E402
from polydet.export import export, load_or_build  # noqa: E402
from polydet.meta import Precision  # noqa: E402

CL = torch.channels_last


def measure(fn, x, iters: int) -> float:
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters  # ms per batch


def eager(weights: str, size: int, half: bool):
    model, _ = load_or_build(weights, imgsz=size)
    model = model.cuda().eval().fuse()
    return (model.half() if half else model).to(memory_format=CL)


def graphed(model, x):
    """A CUDA graph of ``model(x)`` for this input shape; the returned fn copies into the static input."""
    static_in = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.inference_mode():
        static_out = model(static_in)

    def run(inp):
        static_in.copy_(inp)
        g.replay()
        return static_out

    return run


def variant_fn(name: str, path: Path, weights: str, size: int, half: bool, x: torch.Tensor, cache: dict):
    """(callable, input) for one variant at the input ``x``'s batch size."""
    if name.startswith("torchscript"):
        b = load_backend(path, device="cuda", precision=Precision.FP16 if half else None)
        if name == "torchscript_cl":
            b.model = b.model.to(memory_format=CL)
            return b, x.contiguous(memory_format=CL)
        return b, x
    if "eager" not in cache:
        cache["eager"] = eager(weights, size, half)
    model, xc = cache["eager"], x.contiguous(memory_format=CL)
    if name == "eager_cl":
        return torch.inference_mode()(model), xc
    if name == "eager_cl_graph":
        return graphed(model, xc), xc
    if name == "compile_cl":
        compiled = torch.compile(model, dynamic=False)
        fn = torch.inference_mode()(compiled)
        t = time.perf_counter()
        fn(xc)
        torch.cuda.synchronize()
        print(f"  compile_cl batch {x.shape[0]}: compiled in {time.perf_counter() - t:.0f} s", flush=True)
        return fn, xc
    raise SystemExit(f"unknown variant {name}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="224,320")
    p.add_argument("--batches", default="1,8,64,256,1024")
    p.add_argument("--precisions", default="fp32,fp16")
    p.add_argument("--variants", default="torchscript", help="comma list, see the module docstring")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    weights = weights_or_random()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            path, _ = export(weights, "torchscript", out=Path(tmp) / f"m{size}.torchscript", imgsz=size, device="cuda")
            for prec in args.precisions.split(","):
                half = prec == "fp16"
                for variant in args.variants.split(","):
                    cache: dict = {}
                    for batch in [int(v) for v in args.batches.split(",")]:
                        x = torch.rand(batch, 3, size, size, device="cuda", dtype=torch.float16 if half else torch.float32)
                        fn, xv = variant_fn(variant, path, weights, size, half, x, cache)
                        iters = max(5, min(200, 20000 // batch))
                        ms = measure(fn, xv, iters)
                        rows.append({"variant": variant, "imgsz": size, "precision": prec, "batch": batch,
                                     "ms_per_batch": ms, "img_per_s": batch / ms * 1e3})
                        print(rows[-1], flush=True)
                        del fn, xv
                        if args.json_out:
                            Path(args.json_out).write_text(json.dumps(rows, indent=1))
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, weights: {Path(weights).name}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
