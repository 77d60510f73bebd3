"""GPU serving benchmarks of issue 14, run by scripts/gpu_serving_bench.sh on the device.

``decode``: the preprocessors side by side on the same 640x480 JPEGs (CPU PIL+cv2, torchvision nvJPEG,
nvImageCodec: decode + letterbox, images/s at a batch) and the model alone through the shipped backends
(TorchScript fp16 channels-last vs the AOTInductor fp16 package, 224, images/s).

``serve``: builds the archives on the device (today's TorchScript path with the CPU decode, the same with the
GPU decode, the AOTInductor fp16 package compiled there, the naive handler), starts one TorchServe and, per
row, registers the model, drives it with closed-loop REST clients on the same host (raw JPEG bodies, or
JSON {"images": [base64 ...]} for multi-image requests), and reads where the time goes from TorchServe's
metrics (frontend, queue, handler stages) and the processes' CPU time. ``--sweep`` first tries worker
layouts and batching on the GPU-decode + multi-image + AOTI path at one concurrency. JSON rows to --out.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from polydet.bench.common import percentiles, run_together, table  # noqa: E402


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
    paths = {"torchscript fp16": export(args.weights, "torchscript", out="/tmp/gb/ts.torchscript", imgsz=224)[0],
             "aoti fp16": Path(args.aoti)}
    for name, path in paths.items():
        b_ = load_backend(path, device="cuda", precision="fp16" if "torchscript" in name else None)
        for b in (256, 1024):
            x = torch.rand(b, 3, 224, 224, device="cuda", dtype=torch.float16)
            ips, _ = _rate(lambda: (b_(x), b)[1], args.seconds)
            rows.append({"stage": "model only (backend)", "way": name, "batch": b, "img_per_s": round(ips)})
            print(rows[-1], flush=True)
    return rows


# -- load -------------------------------------------------------------------------------------------
def _caller(url, token, jpegs, model, per_request):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    bodies = []
    for k in range(len(jpegs)):
        if per_request == 1:
            bodies.append((jpegs[k], "application/octet-stream"))
        else:
            imgs = [base64.b64encode(jpegs[(k + j) % len(jpegs)]).decode() for j in range(per_request)]
            bodies.append((json.dumps({"images": imgs}).encode(), "application/json"))

    def make(i):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        k = [i]

        def call():
            body, ctype = bodies[k[0] % len(bodies)]
            k[0] += 1
            try:
                conn.request("POST", f"/predictions/{model}", body=body, headers={"Content-Type": ctype, **auth})
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                return type(e).__name__
            if r.status != 200:
                return f"HTTP {r.status}: {data[:100]!r}"
            got = json.loads(data)
            res = [got] if per_request == 1 else got.get("results", [])
            ok = len(res) == per_request and all("detections" in x for x in res)
            return None if ok else f"bad answer: {data[:100]!r}"

        return call

    return make


def _child(url, token, threads, seconds, pool, model, per_request, ready, start, results):
    import psutil

    from polydet.bench.common import closed_loop

    make = _caller(url, token, [base64.b64decode(s) for s in json.loads(Path(pool).read_text())], model, per_request)
    ready.put(1)
    start.wait()
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    r = closed_loop(make, threads, seconds, warmup_s=2.0, keep_latencies=True)
    results.put({**r, "cpu_s": sum(me.cpu_times()[:2]) - cpu0})


def load(ts, model, clients, seconds, per_request, procs, pool) -> dict:
    token = ts.tokens.inference
    per = [clients // procs + (k < clients % procs) for k in range(procs)]
    got = run_together(_child, [(ts.inference_url, token, n, seconds, pool, model, per_request) for n in per if n],
                       ready_timeout=120, result_timeout=seconds + 300)
    lat = [x for g in got for x in g["latencies"]]
    rps = sum(g["req_per_s"] for g in got)
    return {"clients": clients, "per_request": per_request, "requests": len(lat), "img_per_s": rps * per_request,
            "req_per_s": rps, "failures": sum(g["failures"] for g in got), **percentiles(lat),
            "cpu_clients_ms_per_img": sum(g["cpu_s"] for g in got) * 1e3 / max(1, len(lat) * per_request),
            "failure_reasons": "; ".join(g["failure_reasons"] for g in got if g["failure_reasons"])[:300]}


def gpu_memory_mib() -> list[int]:
    r = subprocess.run(["nvidia-smi", "--query-compute-apps=used_memory", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    return [int(v) for v in r.stdout.split() if v.strip().isdigit()]


# -- serve ------------------------------------------------------------------------------------------
def build_store(root: Path, weights: str, aoti: str) -> Path:
    """On the device: polydet_cpudec.mar (TorchScript, CPU decode: today's path), polydet.mar (the same
    with GPU decode), polydet_aoti.mar (the AOTInductor fp16 package compiled here), naive.mar."""
    from polydet.serving.archive import SERVED, ArchiveJob, build_archives

    store = root / "store"
    base = ArchiveJob(store, root / "build", weights=weights, formats=("torchscript",), imgsz=224, service=SERVED)
    build_archives(dataclasses.replace(base, name="polydet_cpudec", service=dataclasses.replace(SERVED, gpu_decode=False)))
    build_archives(base)
    build_archives(dataclasses.replace(base, name="polydet_aoti", artifact=Path(aoti), device="cuda"))
    ts_art = next((root / "build" / "polydet-1.0").glob("*.torchscript"))
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "naive", "--version",
                    "1.0", "--serialized-file", str(ts_art), "--handler", str(ROOT / "benchmarks/naive_handler.py"),
                    "--export-path", str(store), "--force"], check=True)
    return store


def measure(ts, archive, name, settings, clients, seconds, per_request, procs, pool) -> list[dict]:
    from polydet.bench.serve import ServerProbe, register_model
    from polydet.serving.client import RestClient

    t0 = time.perf_counter()
    register_model(ts, settings, archive=archive, name=name, timeout=300)
    ready_s = time.perf_counter() - t0
    mem = gpu_memory_mib()
    rows = []
    for c in clients:
        with ServerProbe(ts) as probe:
            r = load(ts, name, c, seconds, per_request, procs, pool)
        pr = probe.result if name != "naive" else {k: v for k, v in probe.result.items()
                                                    if not k.startswith(("Polydet", "HandlerTime"))}
        rows.append({"model": name, "layout": settings.label(), "ready_s": round(ready_s, 1),
                     "gpu_mib_per_worker": round(sum(mem) / len(mem)) if mem else None, **r, **pr})
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=300).unregister(name)
    return rows


SWEEP = [(4, 16, 5, 8), (8, 16, 5, 16)]  # workers, batch, delay, images per request
COLS = ["row", "model", "layout", "clients", "per_request", "img_per_s", "req_per_s", "p50_ms", "p99_ms", "failures",
        "frontend_latency_ms", "queue_ms", "HandlerTime_avg", "PolydetPreprocessMs_avg", "PolydetInferenceMs_avg",
        "PolydetPostprocessMs_avg", "PolydetBatchSize_avg", "gpu_mib_per_worker", "cpu_frontend_ms_per_req",
        "cpu_workers_ms_per_req", "cpu_clients_ms_per_img"]


def serve_bench(args) -> list[dict]:
    from polydet.bench.serve import ServeSettings, served
    from polydet.serving.client import RestClient

    root = Path(args.work)
    pool = root / "pool.json"
    pool.write_text(json.dumps([base64.b64encode(j).decode() for j in photos(16, seed=1)]))
    store = build_store(root, args.weights, args.aoti)
    clients = [int(c) for c in args.clients.split(",")]
    mk = lambda w, b, d: ServeSettings(batch_size=b, max_batch_delay=d, workers=w, threads=1,  # noqa: E731
                                       job_queue_size=4096, gpu=True)
    vm = f"-Xmx8g -XX:+ExitOnOutOfMemoryError -Dlog4j.configurationFile={ROOT / 'src/polydet/serving/log4j2.xml'}"
    rows: list[dict] = []
    save = lambda: Path(args.out).write_text(json.dumps(rows, indent=1))  # noqa: E731
    with served(store, mk(1, 1, 1), properties={"vmargs": vm}) as ts:
        RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=300).unregister("polydet")
        best = (4, 16, 5, 8)
        if args.sweep:
            scored = []
            for w, b, d, n in SWEEP:
                r = measure(ts, "polydet_aoti.mar", "aoti", mk(w, b, d), [args.sweep_clients], args.seconds, n,
                            args.procs, pool)[0]
                rows.append({"row": "sweep", **r})
                scored.append(((r["p99_ms"] <= 100, r["img_per_s"]), (w, b, d, n)))
                save()
            best = max(scored)[1]
        w, b, d, n = best
        plan = [("today: TorchScript, CPU decode", "polydet_cpudec.mar", "cpudec", mk(10, 16, 5), 1),
                ("+ GPU decode", "polydet.mar", "gpudec", mk(w, b, d), 1),
                ("+ multi-image requests", "polydet.mar", "gpudec", mk(w, b, d), n),
                ("+ compiled engine (AOTInductor fp16)", "polydet_aoti.mar", "aoti", mk(w, b, d), n),
                ("+ compiled engine, 1 image per request", "polydet_aoti.mar", "aoti", mk(w, b, d), 1),
                ("naive handler (baseline)", "naive.mar", "naive", mk(10, 16, 5), 1)]
        for label, archive, name, settings, per in plan:
            for r in measure(ts, archive, name, settings, clients, args.seconds, per, args.procs, pool):
                rows.append({"row": label, **r})
                save()
    return rows


def plot(rows: list[dict], out: Path, title: str) -> None:
    """Served images/s and p99 against clients, one line per benchmark row (the sweep left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in dict.fromkeys(r["row"] for r in rows if r["row"] != "sweep"):
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
    p.add_argument("--aoti", default="/tmp/gb/aoti_fp16.pt2", help="the AOTInductor fp16 CUDA package (polydet export --format aoti)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--clients", default="64,256,512")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--model", action="store_true", help="decode: the model-only rows too (needs --aoti)")
    p.add_argument("--sweep-clients", type=int, default=256)
    p.add_argument("--procs", type=int, default=8, help="client processes")
    p.add_argument("--work", default="/tmp/gb")
    p.add_argument("--out", required=True, help="JSON rows")
    p.add_argument("--title", default="polydet served on one GPU")
    args = p.parse_args(argv)
    if args.what == "plot":
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"), args.title)
        return 0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = decode_bench(args) if args.what == "decode" else serve_bench(args)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    import torch

    print(f"\n{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
    cols = ["stage", "way", "batch", "img_per_s", "error"] if args.what == "decode" else COLS
    print(table(rows, [c for c in cols if any(c in r for r in rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
