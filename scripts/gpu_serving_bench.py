"""GPU serving benchmarks of issue 14, run by scripts/gpu_serving_bench.sh on the device.

``decode``: the preprocessors side by side on the same 640x480 JPEGs (CPU PIL+cv2, torchvision nvJPEG,
nvImageCodec: decode + letterbox, images/s at a batch) and the model alone through the shipped backends
(TorchScript fp16 channels-last vs the AOTInductor package that scripts/gpu_aoti_probe.py found to load, 224).

``serve``: builds the archives on the device (today's TorchScript path with the CPU decode, the same with the
GPU decode, the AOTInductor fp16 package compiled there, the naive handler), starts one TorchServe and, per
row, registers the model, drives it with closed-loop REST clients on the same host (raw JPEG bodies, or
JSON {"images": [base64 ...]} for multi-image requests), and reads where the time goes from TorchServe's
metrics (frontend, queue, handler stages) and the processes' CPU time. The most telling row comes first:
the compiled engine (the AOTInductor package when step 1 left one, else TorchScript) with the GPU decode and
8 images per request at 256 clients, then the same at 1 image per request (the issue's two served targets);
``--sweep`` then tries more worker layouts and batching at that concurrency and writes the best as
``--recommend`` JSON (``polydet archive --gpu``'s Batching keys), and the rows after it use that layout.
``--budget`` seconds bound the whole run: a row that would not fit is skipped and listed. JSON rows to --out.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gpu_serving_load import gpu_memory_mib, load  # noqa: E402  (scripts/: the closed-loop clients)
from polydet.bench.common import table  # noqa: E402


def photos(n: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """Synthetic 640x480 photos (polydet.data.synth: pages and photos on clutter, camera effects), JPEG."""
    import numpy as np
    from PIL import Image

    from polydet.data.synth import SynthConfig, render_sample

    rng = np.random.default_rng(seed)
    cfg = SynthConfig(long_side=(640, 640), aspect=(4 / 3, 4 / 3), jpeg_p=0.0)
    out = []
    for k in range(n):
        img, _ = render_sample(rng, cfg)
        if k % 2:
            img = np.ascontiguousarray(img.transpose(1, 0, 2))  # portrait too
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def _rate(fn, seconds: float) -> tuple[float, int]:
    import torch

    for _ in range(3):  # TorchScript's profiling runs and first-call set-up stay out of the timing
        fn()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), n


def decode_bench(args) -> list[dict]:
    import torch

    from polydet.backends import load_backend
    from polydet.export import export
    from polydet.gpu_preprocess import GpuPreprocessor
    from polydet.preprocess import CpuPreprocessor

    jpegs = photos(16)  # ~0.6 s of rendering each; batches repeat them
    info = load_backend(args.weights, device="cuda").info
    rows = []
    pres = {"cpu (PIL + cv2, 1 thread)": CpuPreprocessor(info, "cuda", torch.float16)}
    for dec in ("torchvision", "nvimgcodec"):
        try:
            pres[dec] = GpuPreprocessor(info, "cuda", torch.float16, decoder=dec).probe()
        except Exception as e:  # noqa: BLE001
            rows.append({"stage": "preprocess", "way": dec, "error": f"{type(e).__name__}: {e}"[:200]})
    for name, pre in pres.items():
        for b in (64, 256):
            batch = (jpegs * (b // len(jpegs) + 1))[:b]
            ips, _ = _rate(lambda: len(pre(batch).items), args.seconds)
            rows.append({"stage": "preprocess", "way": name, "batch": b, "img_per_s": round(ips)})
            print(rows[-1], flush=True)
            if isinstance(pre, GpuPreprocessor):
                dps, _ = _rate(lambda: len(pre.decode_batch(batch)), args.seconds)
                rows.append({"stage": "decode only", "way": name, "batch": b, "img_per_s": round(dps)})
                print(rows[-1], flush=True)
            Path(args.out).write_text(json.dumps(rows, indent=1))
    if not args.model:
        return rows
    paths = {"torchscript fp16": export(args.weights, "torchscript", out="/tmp/gb/ts.torchscript", imgsz=224)[0]}
    if args.aoti and Path(args.aoti).is_file():
        paths["aoti (step 1's package)"] = Path(args.aoti)
    else:
        print(f"no AOTInductor package at {args.aoti}: its model-only rows are not measured", flush=True)
    for name, path in paths.items():
        b_ = load_backend(path, device="cuda", precision="fp16" if "torchscript" in name else None)
        name = f"{name} {b_.precision.value}" if "aoti" in name else name
        for b in (256, 1024):
            x = torch.rand(b, 3, 224, 224, device="cuda", dtype=torch.float16)
            ips, _ = _rate(lambda: (b_(x), b)[1], args.seconds)
            rows.append({"stage": "model only (backend)", "way": name, "batch": b, "img_per_s": round(ips)})
            print(rows[-1], flush=True)
    return rows


# -- serve ------------------------------------------------------------------------------------------
class Budget:
    """The seconds this run may still spend: a row that would not fit is skipped (and says so), so a
    device command's limit is never what ends the run; SIGTERM (timeout) unwinds and stops TorchServe."""

    REGISTER_S = 25.0  # registering a model on the GPU: workers' start, CUDA context, warm-up per batch size

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def fits(self, points: int, seconds: float) -> bool:
        return self.left() >= self.REGISTER_S + points * (seconds + 6.0)


def ensure_archive(root: Path, weights: str, aoti: str | None, name: str) -> str:
    """``name``.mar in root/store, built on first use: polydet_cpudec (TorchScript, CPU decode: today's path),
    polydet (the same with the GPU decode), polydet_aoti (the AOTInductor CUDA package as compiled by step 1),
    naive (benchmarks/naive_handler.py over the TorchScript artifact)."""
    from polydet.serving.archive import SERVED, ArchiveJob, build_archives

    store = root / "store"
    if (store / f"{name}.mar").exists():
        return f"{name}.mar"
    base = ArchiveJob(store, root / "build", weights=weights, formats=("torchscript",), imgsz=224, service=SERVED)
    if name == "polydet_cpudec":
        build_archives(dataclasses.replace(base, name=name, service=dataclasses.replace(SERVED, gpu_decode=False)))
    elif name == "polydet":
        build_archives(base)
    elif name == "polydet_aoti":
        build_archives(dataclasses.replace(base, name=name, artifact=Path(aoti), device="cuda"))
    else:
        ensure_archive(root, weights, aoti, "polydet")
        ts_art = next((root / "build" / "polydet-1.0").glob("*.torchscript"))
        subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version",
                        "1.0", "--serialized-file", str(ts_art), "--handler", str(ROOT / "benchmarks/naive_handler.py"),
                        "--export-path", str(store), "--force"], check=True)
    return f"{name}.mar"


def measure(ts, archive, name, settings, loads, args, pool, budget: Budget) -> list[dict]:
    """Register ``archive`` with ``settings``, then one closed-loop run per (clients, images per request); a
    model that does not get ready is one row with the reason (its workers' log tail), not the end of the run."""
    from polydet.bench.serve import ServerProbe, register_model
    from polydet.serving.client import RestClient

    t0 = time.perf_counter()
    try:
        register_model(ts, settings, archive=archive, name=name, timeout=max(30.0, min(90.0, budget.left() - 30)))
    except Exception as e:  # noqa: BLE001
        RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=60).unregister(name)
        log = (ts.log_dir / "model_log.log").read_text(errors="replace").splitlines()[-6:]
        print(f"{archive} did not get ready: {e}", *log, sep="\n", flush=True)
        return [{"model": name, "layout": settings.label(), "error": f"{type(e).__name__}: {e}"[:300], "log": log}]
    ready_s = time.perf_counter() - t0
    mem = gpu_memory_mib()
    rows = []
    try:
        for c, per_request in loads:
            with ServerProbe(ts) as probe:
                r = load(ts, name, c, args.seconds, per_request, args.procs, pool)
            pr = probe.result if name != "naive" else {k: v for k, v in probe.result.items()
                                                        if not k.startswith(("Polydet", "HandlerTime"))}
            rows.append({"model": name, "layout": settings.label(), "workers": settings.workers,
                         "batch_size": settings.batch_size, "max_batch_delay": settings.max_batch_delay,
                         "ready_s": round(ready_s, 1), "gpu_mib_per_worker": round(sum(mem) / len(mem)) if mem else None,
                         **r, **pr})
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    finally:
        RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=300).unregister(name)
    return rows


# (workers, batchSize in requests, maxBatchDelay ms, images per request), most promising first; the first is
# also the headline row, measured first. A batch of 16 requests of 8 images is 128 images for the model; 16
# images per request is ServiceConfig.max_images_per_request's default limit.
SWEEP = [(8, 16, 5, 8), (4, 16, 5, 8), (8, 32, 5, 8), (8, 16, 5, 16), (4, 32, 10, 8), (12, 8, 2, 8), (8, 64, 10, 8)]
CPU_SWEEP = [(1, 4, 5, 8), (2, 4, 5, 4)]  # --cpu: the same run in small without a GPU (the flow, not numbers)
P99_TARGET_MS = 100.0  # issue 14: p99 <= 100 ms
AFTER_SWEEP_POINTS = 14  # load points the rows after the sweep take (5 + 3 + 1 + 2 + slack): the sweep leaves them time
COLS = ["row", "model", "layout", "clients", "per_request", "img_per_s", "req_per_s", "p50_ms", "p99_ms", "failures",
        "frontend_latency_ms", "queue_ms", "HandlerTime_avg", "PolydetPreprocessMs_avg", "PolydetInferenceMs_avg",
        "PolydetPostprocessMs_avg", "PolydetBatchSize_avg", "gpu_mib_per_worker", "cpu_frontend_ms_per_req",
        "cpu_workers_ms_per_req", "cpu_clients_ms_per_img"]


def recommend(sweep: list[dict], engine: str) -> dict:
    """The sweep's best layout: the most images/s among rows with p99 <= 100 ms and no failures (else the
    most images/s), as ``polydet archive --gpu``'s Batching keys."""
    ok = [r for r in sweep if not r.get("failures")] or sweep
    within = [r for r in ok if r["p99_ms"] <= P99_TARGET_MS]
    best = max(within or ok, key=lambda r: r["img_per_s"])
    return {"min_workers": best["workers"], "max_workers": best["workers"], "batch_size": best["batch_size"],
            "max_batch_delay": best["max_batch_delay"], "images_per_request": best["per_request"],
            "engine": engine, "img_per_s": round(best["img_per_s"]), "p99_ms": round(best["p99_ms"], 1),
            "clients": best["clients"], "p99_within_target": bool(within),
            "criterion": f"most img/s with p99 <= {P99_TARGET_MS:.0f} ms and no failures (else most img/s)",
            "sweep": [{k: r.get(k) for k in ("layout", "per_request", "img_per_s", "p99_ms", "failures",
                                             "gpu_mib_per_worker")}
                      for r in sweep]}


def serve_bench(args) -> list[dict]:
    from polydet.bench.serve import ServeSettings, served
    from polydet.serving.archive import GPU_BATCHING
    from polydet.serving.client import RestClient

    budget = Budget(args.budget)
    root = Path(args.work)
    pool = root / "pool.json"
    pool.write_text(json.dumps([base64.b64encode(j).decode() for j in photos(16, seed=1)]))
    aoti = args.aoti if args.aoti and Path(args.aoti).is_file() else None
    engine, main_name = ("polydet_aoti", "aoti") if aoti else ("polydet", "gpudec")
    print(f"engine of the sweep and headline: {engine}" + ("" if aoti else f" (no AOTInductor package at {args.aoti})"))
    mk = lambda w, b, d: ServeSettings(batch_size=b, max_batch_delay=d, workers=w, threads=1,  # noqa: E731
                                       job_queue_size=4096, gpu=not args.cpu)
    arch = lambda n: ensure_archive(root, args.weights, aoti, n)  # noqa: E731
    ensure_archive(root, args.weights, aoti, "polydet")  # served() starts with it registered
    arch(engine)
    vm = f"-Xmx8g -XX:+ExitOnOutOfMemoryError -Dlog4j.configurationFile={ROOT / 'src/polydet/serving/log4j2.xml'}"
    rows: list[dict] = []
    save = lambda: Path(args.out).write_text(json.dumps(rows, indent=1))  # noqa: E731
    with served(root / "store", mk(1, 1, 1), properties={"vmargs": vm}) as ts:
        RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=300).unregister("polydet")
        sweep = run_sweep(ts, engine, main_name, mk, args, pool, budget, rows, save)
        best, n = (SWEEP[0][:3], SWEEP[0][3])
        if sweep:
            rec = recommend(sweep, engine)
            if args.recommend:
                Path(args.recommend).write_text(json.dumps(rec, indent=1))
            best, n = (rec["max_workers"], rec["batch_size"], rec["max_batch_delay"]), rec["images_per_request"]
        cs = [int(c) for c in args.clients.split(",")]
        today = mk(GPU_BATCHING.max_workers, GPU_BATCHING.batch_size, GPU_BATCHING.max_batch_delay)
        plan = [(f"{engine}, GPU decode", engine, main_name, mk(*best),
                 [(c, n) for c in cs] + [(c, 1) for c in cs if c != args.sweep_clients]),
                ("today: TorchScript, CPU decode", "polydet_cpudec", "cpudec", today, [(c, 1) for c in cs]),
                ("naive handler (baseline)", "naive", "naive", today, [(args.sweep_clients, 1)])]
        if aoti:  # the GPU decode without the compiled engine, last: the least telling row
            plan.append(("TorchScript, GPU decode", "polydet", "gpudec", mk(*best),
                         [(args.sweep_clients, n), (args.sweep_clients, 1)]))
        for label, archive, name, settings, loads in plan:
            if not budget.fits(len(loads), args.seconds):
                rows.append({"row": label, "skipped": f"no time left ({budget.left():.0f} s)"})
                save()
                continue
            for r in measure(ts, arch(archive), name, settings, loads, args, pool, budget):
                rows.append({"row": f"{label}, {r.get('per_request', '?')} img/request", **r})
                save()
    return rows


def run_sweep(ts, engine, name, mk, args, pool, budget: Budget, rows: list, save) -> list[dict]:
    """The layouts of SWEEP at --sweep-clients; the first (the headline) also at 1 image per request."""
    out = []
    layouts = CPU_SWEEP if args.cpu else SWEEP
    for k, (w, b, d, n) in enumerate(layouts if args.sweep else layouts[:1]):
        loads = [(args.sweep_clients, n)] + ([(args.sweep_clients, 1)] if k == 0 else [])
        if not budget.fits(len(loads) + AFTER_SWEEP_POINTS, args.seconds):  # keep time for the rows after it
            rows.append({"row": "sweep", "layout": mk(w, b, d).label(), "per_request": n,
                         "skipped": f"no time left ({budget.left():.0f} s)"})
            break
        for r in measure(ts, f"{engine}.mar", name, mk(w, b, d), loads, args, pool, budget):
            rows.append({"row": f"{'headline' if k == 0 else 'sweep'}, {r.get('per_request', '?')} img/request", **r})
            if r.get("per_request") == n:
                out.append(r)
        save()
    return out


def plot(rows: list[dict], out: Path, title: str) -> None:
    """Served images/s and p99 against clients, one line per benchmark row (the sweep left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = [r for r in rows if "img_per_s" in r and not r["row"].startswith(("sweep", "headline"))]
    for label in dict.fromkeys(r["row"] for r in rows):
        rs = sorted((r for r in rows if r["row"] == label), key=lambda r: r["clients"])
        a.plot([r["clients"] for r in rs], [r["img_per_s"] for r in rs], "o-", label=label)
        b.plot([r["clients"] for r in rs], [r["p99_ms"] for r in rs], "o-", label=label)
    a.set(xlabel="closed-loop clients", ylabel="images/s", title=title, xscale="log")
    b.set(xlabel="closed-loop clients", ylabel="p99 per request (ms)", yscale="log", xscale="log")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["decode", "serve", "plot"], help="plot: --out JSON rows -> PNG beside it")
    p.add_argument("--weights", default=str(ROOT / "weights/polydet_main_area.pt"))
    p.add_argument("--aoti", default="/tmp/gb/aoti.pt2", help="the AOTInductor CUDA package step 1's probe found "
                   "to load (absent: the engine rows use TorchScript)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--clients", default="64,256,512")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--model", action="store_true", help="decode: the model-only rows too (with --aoti's if present)")
    p.add_argument("--sweep-clients", type=int, default=256)
    p.add_argument("--procs", type=int, default=8, help="client processes")
    p.add_argument("--work", default="/tmp/gb")
    p.add_argument("--out", required=True, help="JSON rows")
    p.add_argument("--budget", type=float, default=420.0, help="serve: seconds for everything (rows that would "
                   "not fit are skipped and listed)")
    p.add_argument("--cpu", action="store_true", help="serve: CPU workers and a 2-layout sweep (checks the flow "
                   "on a machine without a GPU; its numbers say nothing of the GPU)")
    p.add_argument("--recommend", help="serve --sweep: write the recommended GPU batching (JSON) here")
    p.add_argument("--title", default="polydet served on one GPU")
    args = p.parse_args(argv)
    if args.what == "plot":
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"), args.title)
        return 0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: unwind, so TorchServe is stopped
    rows = decode_bench(args) if args.what == "decode" else serve_bench(args)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    import torch

    print(f"\n{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, {os.cpu_count()} CPUs")
    cols = ["stage", "way", "batch", "img_per_s", "error"] if args.what == "decode" else COLS
    print(table(rows, [c for c in cols if any(c in r for r in rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
