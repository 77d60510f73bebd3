"""``polydet bench nms``: polygon_nms (numba and torch paths) against plain shapely greedy loops, in one run.

Scenes: ``ops.reference.synthetic_predictions(all_pass=True)``, i.e. clusters of ~20 jittered quads
around rotated rectangles of 3-20 % of a 640 px image (overlapping at times), 2 classes, every row a
candidate at conf 0.25 (so "1000 candidates" is 1000 rows into the greedy pass). Baselines, both in
``ops/reference.py`` and checked to give identical rows before timing:

- seeds' loop: the seeds' ``polygon_nms_kernel``: for the best remaining box, build the hull polygon
  of every remaining box of its class and compute shapely intersection and union areas;
- cached loop: the same loop with each hull polygon built once (a faster baseline than the seeds').

polygon_nms is timed twice: as called by default (``backend="auto"``: the compiled numba kernel on CPU
when numba loads; the table says which ran) and with ``backend="torch"`` (the vectorized torch path,
the one CUDA tensors take). Both are checked against the cached loop before timing. torch runs on 1
thread by default (``--threads``), like shapely and numba: the same CPU for every column, and on a
shared 2-core machine extra threads mostly wait for each other. ``benchmarks/bench_nms.py`` is a shim
over this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet bench nms", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 3087], help="candidates per image")
    p.add_argument("--repeat", type=int, default=30, help="timed runs of polygon_nms (median)")
    p.add_argument("--ref-repeat", type=int, default=3, help="timed runs of each shapely loop (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.45)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for nms.csv, nms.json and nms.png")
    return p


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def run(sizes, repeat: int = 30, ref_repeat: int = 3, conf: float = 0.25, iou: float = 0.45,
        seed: int = 0) -> list[dict]:
    """One row per candidate count; raises RuntimeError when polygon_nms and the reference disagree."""
    import torch

    from ..ops.nms import polygon_nms, resolve_backend
    from ..ops.reference import shapely_nms, synthetic_predictions

    rows = []
    for n in sizes:
        pred = torch.from_numpy(synthetic_predictions(np.random.default_rng(seed + n), n, all_pass=True))[None]
        kw = {"conf": conf, "iou": iou}
        backend = resolve_backend("auto", pred)
        ref, _ = shapely_nms(pred.numpy(), cache_polygons=True, **kw)
        for b in ("auto", "torch"):
            ours = polygon_nms(pred, backend=b, **kw)[0]  # also warms up (numba: compiles or loads its cache)
            if not np.array_equal(ours.numpy(), ref[0]):
                raise RuntimeError(f"{n} candidates: polygon_nms (backend {b}) and the shapely loop disagree")
        t_ours = median_ms(lambda: polygon_nms(pred, **kw), repeat)
        t_torch = median_ms(lambda: polygon_nms(pred, backend="torch", **kw), repeat)
        t_seed = median_ms(lambda: shapely_nms(pred.numpy(), **kw), ref_repeat)
        t_cached = median_ms(lambda: shapely_nms(pred.numpy(), cache_polygons=True, **kw), ref_repeat)
        rows.append({"candidates": n, "kept": len(ours), "backend": backend, "polydet_ms": t_ours,
                     "torch_ms": t_torch, "shapely_ms": t_seed, "ratio": t_seed / t_ours,
                     "ratio_torch": t_seed / t_torch, "shapely_cached_ms": t_cached,
                     "ratio_cached": t_cached / t_ours})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import numba

        numba_version = f"numba {numba.__version__}"
    except Exception:  # the torch path runs without it
        numba_version = "no numba"
    head = (f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{numba_version}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}; conf {args.conf}, iou {args.iou}")
    print(head)
    try:
        rows = run(args.sizes, args.repeat, args.ref_repeat, args.conf, args.iou, args.seed)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    cols = ("candidates", "kept", "polygon_nms ms", "path", "seeds' loop ms", "ratio", "cached loop ms", "ratio",
            "torch path ms", "ratio")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(":---" if c == "path" else "---:" for c in cols) + "|")
    for r in rows:
        print(f"| {r['candidates']} | {r['kept']} | {r['polydet_ms']:.3f} | {r['backend']} | {r['shapely_ms']:.0f} "
              f"| {r['ratio']:.0f}x | {r['shapely_cached_ms']:.0f} | {r['ratio_cached']:.0f}x | {r['torch_ms']:.2f} "
              f"| {r['ratio_torch']:.0f}x |")
    if args.out:
        from .common import write_csv
        from .plots import nms_title, plot_nms

        out = Path(args.out)
        write_csv(rows, out / "nms.csv")
        (out / "nms.json").write_text(json.dumps({"header": head, "rows": rows}, indent=1))
        print(f"wrote {out / 'nms.csv'}, {plot_nms(rows, out / 'nms.png', nms_title(head, rows))}")
    return 0
