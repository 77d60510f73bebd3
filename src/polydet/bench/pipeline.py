"""``polydet bench pipeline``: in-process per-stage timings and end-to-end images/s.

Stages: decode (JPEG bytes -> RGB), letterbox, inference (backend forward), NMS, scale back (polygons to
original pixels + the output dicts). For each backend x input size x batch size, on one machine, in one
run. Uses the bundled weights when present (realistic NMS candidate counts), else random weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import median_ms, sample_jpegs, table, weights_or_random


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet bench pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="torchscript,onnx", help="comma list of torchscript,onnx")
    p.add_argument("--sizes", default="224,320,640", help="input sizes (square letterbox)")
    p.add_argument("--batches", default="1,8,32", help="batch sizes")
    p.add_argument("--weights", default=None, help="checkpoint (default: bundled weights, else random)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seconds", type=float, default=4.0, help="time budget per configuration")
    p.add_argument("--json", dest="json_out", help="also write the rows as JSON here")
    return p


def bench_one(det, jpegs: list[bytes], batch: int, seconds: float) -> dict:
    from ..imageio import decode_image
    from ..ops.letterbox import letterbox

    stage = {"decode": [], "letterbox": [], "inference": [], "nms": [], "scale_back": []}
    n_img, t_start, i = 0, time.perf_counter(), 0
    while True:
        chunk = [jpegs[(i + k) % len(jpegs)] for k in range(batch)]
        i += batch
        t0 = time.perf_counter()
        rgbs = [decode_image(b, rgb=True) for b in chunk]
        t1 = time.perf_counter()
        boxed = [letterbox(im, det.info.imgsz, det.info.stride) for im in rgbs]
        batch_arr = np.stack([b[0] for b in boxed])
        x = torch.from_numpy(batch_arr).to(det.device).permute(0, 3, 1, 2).to(det.backend.input_dtype).div_(255)
        t2 = time.perf_counter()
        pred = det.backend(x)
        if pred.device.type == "cuda":
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        kept = det._nms(pred, det.options)
        t4 = time.perf_counter()
        for k, (im, (_, lb)) in enumerate(zip(rgbs, boxed)):
            lb.unmap(kept[k][:, :8].reshape(-1, 4, 2).cpu().double())
        t5 = time.perf_counter()
        for key, a, b in (("decode", t0, t1), ("letterbox", t1, t2), ("inference", t2, t3), ("nms", t3, t4),
                          ("scale_back", t4, t5)):
            stage[key].append(b - a)
        n_img += batch
        if time.perf_counter() - t_start > seconds and len(stage["decode"]) >= 3:
            break
    row = {k: median_ms(v) / batch for k, v in stage.items()}  # ms per image
    total = sum(sum(v) for v in stage.values())
    row["img_per_s"] = n_img / total
    return row


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from ..export import export
    from ..pipeline import Detector

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights or weights_or_random()
    jpegs = sample_jpegs(16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            for backend in args.backends.split(","):
                path, _ = export(weights, backend, out=Path(tmp) / f"m{size}.{backend}", imgsz=size, verify=False)
                det = Detector.from_artifact(path, device=args.device)
                for batch in [int(b) for b in args.batches.split(",")]:
                    r = bench_one(det, jpegs, batch, args.seconds)
                    rows.append({"backend": backend, "imgsz": size, "batch": batch, **r})
                    print(f"  {backend} {size} b{batch}: {r['img_per_s']:.1f} img/s", flush=True)
    print(f"\nweights: {'random (no bundled weights)' if weights == 'random' else weights}; device {args.device}; "
          f"torch threads {torch.get_num_threads()}; per-image median ms per stage\n")
    print(table(rows, ["backend", "imgsz", "batch", "decode", "letterbox", "inference", "nms", "scale_back", "img_per_s"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0
