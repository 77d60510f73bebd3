"""Shared benchmark helpers: timing, sample JPEGs, artifacts, tables."""

from __future__ import annotations

import csv
import itertools
import statistics
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[3]  # src/polydet/bench/common.py -> repository (editable install)
BUNDLED = REPO / "weights" / "polydet_main_area.pt"


def sample_jpegs(n: int, sizes=(320, 640, 1024, 1600), seed: int = 0, quality: int = 90) -> list[bytes]:
    """JPEGs of several long sides, made of smooth noise with bright quads (page-like), reproducible."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        long = sizes[i % len(sizes)]
        h, w = (long, int(long * 0.75)) if i % 2 else (int(long * 0.75), long)
        small = rng.integers(0, 255, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
        r = min(h, w) * rng.uniform(0.2, 0.35)
        a = rng.uniform(0, np.pi)
        quad = np.array([[cx + r * np.cos(a + k * np.pi / 2), cy + r * np.sin(a + k * np.pi / 2)] for k in range(4)])
        cv2.fillPoly(img, [quad.astype(np.int32)], (235, 235, 230))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(buf.tobytes())
    return out


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def table(rows: list[dict], cols: list[str] | None = None) -> str:
    """A Markdown table (pasted as is into BENCHMARKS.md)."""
    cols = cols or list(rows[0])
    fmt = [lambda v: f"{v:.3g}" if isinstance(v, float) and abs(v) < 100 else (f"{v:.0f}" if isinstance(v, float) else str(v))]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt[0](r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def weights_or_random() -> str:
    return str(BUNDLED) if BUNDLED.exists() else "random"


def percentiles(seconds: list[float], qs=(50, 95, 99)) -> dict:
    """{"p50_ms": ..., ...} of latencies in seconds (nearest rank); NaN when empty."""
    if not seconds:
        return {f"p{q}_ms": float("nan") for q in qs}
    s = sorted(seconds)
    return {f"p{q}_ms": s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))] * 1e3 for q in qs}


def closed_loop(make_worker, concurrency: int, seconds: float, warmup_s: float = 1.0,
                keep_latencies: bool = False, by_completion: bool = False, keep_calls: bool = False) -> dict:
    """``concurrency`` threads, each calling its own ``make_worker(i)()`` back to back for ``seconds``.

    A call returns None when it succeeded, else a short failure reason. Calls that start during the
    first ``warmup_s`` are not counted. Returns requests, failures (with reasons), req_per_s and the
    latency percentiles of the successful calls (and the latencies themselves if ``keep_latencies``;
    ``keep_calls``: "calls", a (thread, sequence number of the call in that thread, latency) per counted
    successful call, which :func:`image_index` turns into the image a caller sent).
    ``by_completion``: count the calls that *end* inside the ``seconds`` window, over that window. Counting
    by start over start-to-last-end undercounts calls whose latency L is a good part of the window (the
    window's first L seconds finish uncounted calls): ~0.67x for 5 s calls in a 10 s window.
    """
    lock = threading.Lock()
    lat, reasons, calls = [], {}, []
    t_start = time.perf_counter()
    t_count, t_end = t_start + warmup_s, t_start + warmup_s + seconds

    def loop(i):
        call = make_worker(i)
        mine, bad, seqs = [], {}, []
        for seq in itertools.count():
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            try:
                why = call()
            except Exception as e:  # noqa: BLE001 - a failed request is a data point, not a crash
                why = f"{type(e).__name__}: {e}"[:120]
            t1 = time.perf_counter()
            if (t_count <= t1 <= t_end) if by_completion else t0 >= t_count:
                if why is None:
                    mine.append(t1 - t0)
                    seqs.append(seq)
                else:
                    bad[why] = bad.get(why, 0) + 1
        with lock:
            lat.extend(mine)
            calls.extend((i, n, x) for n, x in zip(seqs, mine))
            for k, v in bad.items():
                reasons[k] = reasons.get(k, 0) + v

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # by start: in-flight calls at t_end finish inside this
    elapsed = seconds if by_completion else max(time.perf_counter() - t_count, 1e-9)
    n_fail = sum(reasons.values())
    out = {"requests": len(lat), "failures": n_fail, "req_per_s": len(lat) / elapsed,
           "failure_reasons": "; ".join(f"{v}x {k}" for k, v in reasons.items())[:300],
           **percentiles(lat), "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan")}
    if keep_latencies:
        out["latencies"] = lat
    if keep_calls:
        out["calls"] = calls
    return out


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows (dicts, columns = the union of keys in first-seen order) to a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def run_and_report(args, run, table) -> int:
    """A benchmark's main once its arguments are parsed: ``run(args, workdir)`` in a temporary folder, then
    <args.out>.json (the result) and <args.out>.md (``table(result)``, printed too)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(table(result))
    print(table(result))
    return 0


# -- closed-loop clients of a served model (compare, tuning, GPU scripts) ------------------------------
def multipart_body(images: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with one file per image (fields image0, image1, ...) and its Content-Type."""
    boundary = "polydet-bench-boundary"  # JPEG bytes never hold it: the pool is ours
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"image{k}\"; filename=\"{k}.jpg\"\r\n"
             f"Content-Type: image/jpeg\r\n\r\n".encode() + img + b"\r\n" for k, img in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def image_index(thread: int, seq: int, n_images: int, per_request: int = 1) -> int:
    """The first image of call ``seq`` of client thread ``thread`` (rest_caller's and grpc_caller's order:
    thread i starts at image i and steps by ``per_request``)."""
    return (thread + seq * per_request) % n_images


def images_from(jpegs: list[bytes], first: int, per_request: int) -> list[bytes]:
    """The ``per_request`` images of a request whose first image is ``first``, wrapping around the pool."""
    return [jpegs[(first + j) % len(jpegs)] for j in range(per_request)]


def rest_body(images: list[bytes]) -> tuple[bytes, str]:
    """A REST request's body and Content-Type: one image raw, several as a multipart form."""
    return (images[0], "application/octet-stream") if len(images) == 1 else multipart_body(images)


def _answered(data: bytes, n: int) -> str | None:
    """None when a served answer holds ``n`` output-contract objects (one bare, or a results list)."""
    import json

    d = json.loads(data)
    if n == 1:
        return None if "detections" in d else f"no detections key: {data[:100]!r}"
    results = d.get("results") if isinstance(d, dict) else None
    if not isinstance(results, list) or len(results) != n or not all("detections" in r for r in results):
        return f"not {n} results: {data[:100]!r}"
    return None


def rest_caller(url: str, token: str | None, jpegs: list[bytes], model: str = "polydet", per_request: int = 1):
    """make_worker(i) for common.closed_loop: raw POSTs (``per_request`` > 1: multipart forms of that many
    JPEGs) over one keep-alive connection per thread."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    def make(i):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        seq = itertools.count()

        def call():
            body, ctype = rest_body(images_from(jpegs, image_index(i, next(seq), len(jpegs), per_request), per_request))
            headers = {"Content-Type": ctype, **auth}
            try:
                conn.request("POST", f"/predictions/{model}", body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()  # reconnects on the next request
                return f"{type(e).__name__}"
            if r.status != 200:
                return f"HTTP {r.status}: {data[:100]!r}"
            return _answered(data, per_request)

        return call

    return make


def grpc_caller(target: str, token: str | None, jpegs: list[bytes], model: str = "polydet", per_request: int = 1):
    """make_worker(i) for common.closed_loop: Predictions over one shared channel (``per_request`` > 1: that
    many JPEGs in inputs image0, image1, ...)."""
    import grpc

    from ..serving import grpc_stubs

    pb = grpc_stubs.load()
    opts = [("grpc.max_send_message_length", 16 * 2**20), ("grpc.max_receive_message_length", 16 * 2**20)]
    stub = pb.inference_pb2_grpc.InferenceAPIsServiceStub(grpc.insecure_channel(target, options=opts))
    metadata = (("authorization", f"Bearer {token}"),) if token else None

    def make(i):
        seq = itertools.count()

        def call():
            images = images_from(jpegs, image_index(i, next(seq), len(jpegs), per_request), per_request)
            inputs = {"data": images[0]} if per_request == 1 else {f"image{j}": b for j, b in enumerate(images)}
            req = pb.inference_pb2.PredictionsRequest(model_name=model, input=inputs)
            try:
                resp = stub.Predictions(req, metadata=metadata, timeout=120)
            except grpc.RpcError as e:
                return f"{e.code().name}: {(e.details() or '')[:80]}"
            return _answered(resp.prediction, per_request)

        return call

    return make


def _load_child(url, token, threads, seconds, sizes, model, ready, start, results):
    jpegs = sample_jpegs(16, sizes)
    timed_child_loop(rest_caller(url, token, jpegs, model), threads, seconds, ready, start, results)


def timed_child_loop(make, threads, seconds, ready, start, results) -> None:
    """The body of a run_together child: say ready, wait for the start, run closed_loop(make) with latencies,
    and put its result with the child's own CPU seconds (user + system) on ``results``."""
    import psutil

    ready.put(1)
    start.wait()
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    r = closed_loop(make, threads, seconds, warmup_s=2.0, keep_latencies=True)
    results.put({**r, "cpu_s": sum(me.cpu_times()[:2]) - cpu0})


def run_together(target, arg_tuples, ready_timeout: float, result_timeout: float) -> list:
    """One spawned process per tuple, called as ``target(*args, ready, start, results)``: each puts on
    ``ready`` when set up, all start when ``start`` is set, each puts one result on ``results``.
    Returns the results (in arrival order); processes still alive afterwards are killed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a clean interpreter (and torch) in each child
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=target, args=(*args, ready, start, results), daemon=True) for args in arg_tuples]
    for p in ps:
        p.start()
    try:
        for _ in ps:
            ready.get(timeout=ready_timeout)
        start.set()
        return [results.get(timeout=result_timeout) for _ in ps]
    finally:
        for p in ps:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


def multi_closed_loop(url: str, token: str | None, concurrency: int, seconds: float, procs: int,
                      sizes=(320, 640, 1024, 1600), model: str = "polydet") -> dict:
    """closed_loop REST clients spread over ``procs`` processes (one Python process cannot drive
    hundreds of clients past its GIL); results merged as if from one."""
    per = [concurrency // procs + (k < concurrency % procs) for k in range(procs)]
    got = run_together(_load_child, [(url, token, n, seconds, tuple(sizes), model) for n in per if n],
                       ready_timeout=120, result_timeout=seconds + 300)
    lat = [x for g in got for x in g["latencies"]]
    return {"clients": concurrency, "requests": len(lat), "failures": sum(g["failures"] for g in got),
            "req_per_s": sum(g["req_per_s"] for g in got), **percentiles(lat),
            "cpu_clients_ms_per_req": sum(g["cpu_s"] for g in got) * 1e3 / max(1, len(lat)),  # warm-up included
            "failure_reasons": "; ".join(g["failure_reasons"] for g in got if g["failure_reasons"])[:300]}
