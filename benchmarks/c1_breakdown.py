"""Where a lone request's time goes (issue 11, item 9): one TorchServe, requests sent one at a time.

For each request: the client's latency L, TorchServe's own per-request metrics (with ``metrics_mode=log`` the
frontend writes them to metrics.log in request order: F = ts_inference_latency, from the frontend receiving
the request to its answer; Q = ts_queue_latency, the wait for a worker and for maxBatchDelay), and the
handler's own time H (its HandlerTime line). Then, per image of the pool, the in-process pipeline's latency
D (one process, batch 1, `bench compare`'s in-process child). Printed: medians per request of L-F (client,
socket, netty), F-Q-H (frontend <-> worker, TorchServe's Python loop), Q, and per image of H-D (the
handler against the same pipeline in-process) and L-D (what serving adds). Runs once per worker count.

    python benchmarks/c1_breakdown.py --workers 1,2 --reps 12 --out benchmarks/results/c1_breakdown
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics as st
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from polydet.bench.common import sample_jpegs, weights_or_random
from polydet.bench.compare import POOL, SIZES, in_process
from polydet.bench.serve import ServeSettings, build_store, served


def _metric(text: str, name: str, unit: str) -> list[float]:
    return [float(x) for x in re.findall(rf"{name}\.{unit}:([0-9.]+)\|#model_name:polydet", text)]


def run(workers: int, reps: int, delay: int) -> dict:
    settings = ServeSettings(workers=workers, max_batch_delay=delay)
    pool = sample_jpegs(POOL, SIZES)
    n = reps * POOL
    with tempfile.TemporaryDirectory() as tmp:
        store, artifact = build_store(tmp, weights_or_random(), None, settings, conf=0.25)
        with served(store, settings, run_dir=Path(tmp) / "run", properties={"metrics_mode": "log"}) as ts:
            u = urlsplit(ts.inference_url)
            conn = http.client.HTTPConnection(u.hostname, u.port)
            headers = {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {ts.tokens.inference}"}

            def send(body: bytes) -> float:
                t0 = time.perf_counter()
                conn.request("POST", "/predictions/polydet", body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
                return (time.perf_counter() - t0) * 1e3

            for k in range(100):  # warm-up
                send(pool[k % POOL])
            log = ts.log_dir / "metrics.log"
            before = log.read_text()
            h0, f0 = before.count("HandlerTime.ms:"), len(_metric(before, "ts_inference_latency_microseconds",
                                                                   "Microseconds"))
            lat = [send(pool[k % POOL]) for k in range(n)]  # request k carries image k % POOL
            time.sleep(1.5)  # the frontend writes the lines after answering
            text = log.read_text()
        hs = [float(x) for x in re.findall(r"HandlerTime\.ms:([0-9.]+)", text)][h0:h0 + n]
        fs = [x / 1e3 for x in _metric(text, "ts_inference_latency_microseconds", "Microseconds")][f0:f0 + n]
        qs = [x / 1e3 for x in _metric(text, "ts_queue_latency_microseconds", "Microseconds")][f0:f0 + n]
        if not len(hs) == len(fs) == len(qs) == n:
            raise RuntimeError(f"expected {n} metric lines each, got {len(hs)}, {len(fs)}, {len(qs)}")
        base = in_process(artifact, 1, 1, 1, 8.0, 0.25)["by_image"]
    per = lambda xs: {j: st.median(xs[j::POOL]) for j in range(POOL)}  # noqa: E731 - per image, ms
    L, H = per(lat), per(hs)
    D = {j: st.median(v) * 1e3 for j, v in base.items()}
    return {"workers": workers, "max_batch_delay_ms": delay, "requests": n,
            "client_p50_ms": st.median(lat), "frontend_F_p50_ms": st.median(fs), "queue_Q_p50_ms": st.median(qs),
            "handler_H_p50_ms": st.median(hs),
            "L_minus_F_ms": st.median(a - b for a, b in zip(lat, fs)),
            "F_minus_Q_minus_H_ms": st.median(f - q - h for f, q, h in zip(fs, qs, hs)),
            "H_minus_D_per_image_ms": st.median(H[j] - D[j] for j in D),
            "L_minus_D_per_image_ms": st.median(L[j] - D[j] for j in D)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2", help="comma list: one run per worker count")
    p.add_argument("--reps", type=int, default=12, help="passes over the 16-image pool")
    p.add_argument("--max-batch-delay", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="writes <out>.json")
    args = p.parse_args()
    rows = [run(int(w), args.reps, args.max_batch_delay) for w in args.workers.split(",")]
    for r in rows:
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
