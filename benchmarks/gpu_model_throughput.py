"""Model-only images/s on a GPU: TorchScript fp32 and fp16, several batch sizes and input sizes.

Run on the H100 by scripts/gpu_tests.sh. The model is exported on the CPU-independent path (traced on
CUDA here); timings use CUDA events after warm-up, inputs already on the device (model only: no decode,
letterbox or NMS). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.backends import load_backend  # noqa: E402
from polydet.bench.common import table, weights_or_random  # noqa: E402
from polydet.export import export  # noqa: E402


def measure(backend, x, iters: int) -> float:
    for _ in range(3):
        backend(x)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        backend(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters  # ms per batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="224,320")
    p.add_argument("--batches", default="1,8,64,256,1024")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    weights = weights_or_random()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            path, _ = export(weights, "torchscript", out=Path(tmp) / f"m{size}.torchscript", imgsz=size, device="cuda")
            for half in (False, True):
                b = load_backend(path, device="cuda", half=half)
                for batch in [int(v) for v in args.batches.split(",")]:
                    x = torch.rand(batch, 3, size, size, device="cuda", dtype=b.input_dtype)
                    iters = max(5, min(200, 20000 // batch))
                    ms = measure(b, x, iters)
                    rows.append({"imgsz": size, "precision": "fp16" if half else "fp32", "batch": batch,
                                 "ms_per_batch": ms, "img_per_s": batch / ms * 1e3})
                    print(rows[-1], flush=True)
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, weights: {Path(weights).name}\n")
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
