"""Soak test: many requests against a real TorchServe; memory of the Python workers and the Java frontend.

Starts its own TorchServe 0.12.0 (repository config.properties, free loopback ports, its own TMPDIR and
start folder), sends ``--requests`` requests from ``--concurrency`` threads (a fixed mix of raw JPEG,
PNG, multipart, base64 JSON with options, and a bad request that must get its 400), and samples the
resident set size (RSS) of the model's Python workers (summed; the archive's minWorkers of them) and of
the Java frontend every ``(--requests - --warmup)/200`` answered requests. Growth is measured after the
warm-up: median of the last 5 samples over median of the first 5 samples taken after ``--warmup``
requests. Exit status 0 when every request got its expected status, no worker was restarted, and both
RSS grew less than ``--max-growth``.

    .venv/bin/python benchmarks/soak.py                     # 20,000 requests, builds its own archive
    .venv/bin/python benchmarks/soak.py --requests 1000 --warmup 300 --model-store DIR --json-out r.json

Numbers of a full run are in RELIABILITY.md. ``tests/reliability/test_soak.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OCTET = {"Content-Type": "application/octet-stream"}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000, help="total requests (default 20000)")
    p.add_argument("--warmup", type=int, default=2_000, help="requests before the baseline (default 2000)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--model-store", type=Path, default=None,
                   help="a store holding polydet.mar (default: build one with archive.sh in the run folder)")
    p.add_argument("--config", type=Path, default=REPO / "config.properties", help="TorchServe config template")
    p.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up (0.10)")
    p.add_argument("--json-out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the run folder (logs) instead of deleting it")
    p.add_argument("--duration", type=float, default=None,
                   help="run for this many seconds instead (--requests is then a maximum); RSS sampled every 2 s")
    p.add_argument("--proxy", action="store_true", help="send the traffic through polydet's nginx front (needs nginx)")
    p.add_argument("--probes", action="store_true",
                   help="mix in issue 17's attacks: small-file bombs among the requests, and (with --proxy) rounds of "
                        "slow-body connections from 127.0.0.2 that declare 16 MiB, send 15 and stall")
    return p


def _payloads(probes: bool = False) -> list[tuple[str, dict, int | tuple[int, ...]]]:
    """(name, requests kwargs, expected status or statuses): one round of the traffic mix. With ``probes``,
    the small-file bombs of issue 17.4: a 47 KB PNG of 7000x7000 (413: over the decode budget, or the pixel
    cap of a test archive) and a JPEG whose header declares 7000x7000 over a 480x360 scan (400 corrupt, or
    413 from the header under a smaller pixel cap)."""
    import cv2
    import numpy as np

    def page(w, h, seed):
        rng = np.random.default_rng(seed)
        img = rng.integers(40, 140, (h, w, 3), dtype=np.uint8)
        quad = np.array([[0.3 * w, 0.15 * h], [0.75 * w, 0.2 * h], [0.7 * w, 0.85 * h], [0.25 * w, 0.8 * h]],
                        np.int32)
        cv2.fillConvexPoly(img, quad, (235, 235, 230))
        return img

    jpeg = cv2.imencode(".jpg", page(480, 360, 0))[1].tobytes()
    png = cv2.imencode(".png", page(300, 520, 1))[1].tobytes()
    big = cv2.imencode(".jpg", page(1280, 960, 2))[1].tobytes()
    b64 = base64.b64encode(jpeg).decode()
    return [
        ("raw jpeg", {"data": jpeg, "headers": OCTET}, 200),
        ("raw png", {"data": png, "headers": OCTET}, 200),
        ("multipart", {"files": {"data": ("page.jpg", jpeg, "image/jpeg")}}, 200),
        ("json options", {"json": {"image": b64, "conf": 0.3, "max_det": 5}}, 200),
        ("raw 1280x960", {"data": big, "headers": OCTET}, 200),
        ("json dewarp", {"json": {"image": b64, "dewarp": True}}, 200),
        ("garbage", {"data": b"not an image" * 10, "headers": OCTET}, 400),
    ] + (_bombs() if probes else [])


def _bombs() -> list[tuple[str, dict, tuple[int, ...]]]:
    sys.path.insert(0, str(REPO / "tests" / "reliability"))  # the corpus' own builders (bad_inputs.py)
    from bad_inputs import jpeg, jpeg_declaring, page, png_bomb

    return [("png bomb 7000x7000", {"data": png_bomb(), "headers": OCTET}, (413,)),
            ("jpeg declaring 7000x7000", {"data": jpeg_declaring(jpeg(page()), 7000, 7000), "headers": OCTET},
             (400, 413))]


def _build_store(run_dir: Path) -> Path:
    store, tmp = run_dir / "model_store", run_dir / "tmp"
    tmp.mkdir()
    # A private TMPDIR: torch-model-archiver stages files in $TMPDIR/<model name>, shared by concurrent runs.
    r = subprocess.run(["bash", str(REPO / "archive.sh"), "--store", str(store), "--build", str(run_dir / "build"),
                        "--formats", "torchscript"], env=dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp)),
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"archive.sh failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return store


class _Keys:
    """The current inference and management keys. TorchServe's keys expire (token_expiration_min, 60 in
    config.properties) and TorchServe does not renew them: a client that runs longer renews an expired key
    with the API key (POST /token?type=...). The first caller refused with the old key renews it; the
    others pick up the new one."""

    def __init__(self, ts):
        self.ts = ts
        tokens = ts.tokens
        self.api = tokens.api
        self.keys = {"inference": tokens.inference, "management": tokens.management}
        self.renewals = 0
        self._lock = threading.Lock()

    def renew(self, kind: str, stale: str) -> str:
        import requests

        from polydet.serving.server import Tokens

        with self._lock:
            if self.keys[kind] == stale:
                r = requests.post(f"{self.ts.management_url}/token", params={"type": kind}, timeout=30,
                                  headers={"Authorization": f"Bearer {self.api}"})
                r.raise_for_status()
                self.keys[kind] = getattr(Tokens.read(self.ts.key_file), kind)
                self.renewals += 1
            return self.keys[kind]

    def request(self, session, method: str, url: str, kind: str, **kw):
        """``session.request`` with this kind's key; renew it and try once more if it expired."""
        for _ in range(2):
            used = self.keys[kind]
            r = session.request(method, url, **dict(kw, headers={"Authorization": f"Bearer {used}",
                                                                 **kw.get("headers", {})}))
            if r.status_code != 400 or "InvalidKeyException" not in r.text:
                break
            self.renew(kind, used)
        return r


def _worker_pids(ts, keys: _Keys) -> list[int]:
    import requests

    r = keys.request(requests, "GET", f"{ts.management_url}/models/polydet", "management", timeout=10)
    r.raise_for_status()
    return sorted(int(w["pid"]) for w in r.json()[0]["workers"])


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _drive(keys: _Keys, url: str, payloads, n: int, warmup: int, concurrency: int, rss, duration: float | None = None):
    """Send ``n`` requests of the ``payloads`` mix from ``concurrency`` threads (or as many as fit in
    ``duration`` seconds); sample ``rss()`` (the workers' and the Java frontend's RSS) from ``warmup``
    answers on: every ``(n - warmup)/200`` answers, or every 2 s with a ``duration``; and at the end. Returns
    ``(samples, latencies, failures, seconds)``: samples ``(answered, seconds, workers' RSS, Java RSS)``,
    failures ``{"payload: status": count}``."""
    import requests

    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    latencies: list[float] = []
    failures: dict[str, int] = {}
    t_start = time.perf_counter()
    end = t_start + duration if duration else float("inf")

    def client():
        s = requests.Session()
        while True:
            with lock:
                i = state["next"]
                if i >= n or time.perf_counter() >= end:
                    return
                state["next"] += 1
            name, kw, want = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                got = keys.request(s, "POST", url, "inference", timeout=60, **kw).status_code
            except requests.RequestException as e:
                got = type(e).__name__
            dt = time.perf_counter() - t0
            with lock:
                state["done"] += 1
                latencies.append(dt)
                if got not in (want if isinstance(want, tuple) else (want,)):
                    label = f"{name}: {got}"
                    failures[label] = failures.get(label, 0) + 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    samples = _sample_while(threads, state, t_start, rss, warmup, max(5, (n - warmup) // 200), 2.0 if duration else None)
    elapsed = time.perf_counter() - t_start
    samples.append((state["done"], elapsed, *rss()))
    return samples, latencies, failures, elapsed


def _sample_while(threads, state, t_start: float, rss, warmup: int, step: int, every_s: float | None) -> list:
    samples: list[tuple[int, float, int, int]] = []
    next_sample, next_time = warmup, 0.0
    while any(t.is_alive() for t in threads):
        done, now = state["done"], time.perf_counter()
        if every_s and done >= warmup and now >= next_time:
            samples.append((done, now - t_start, *rss()))
            next_time = now + every_s
        elif not every_s and done >= next_sample:
            samples.append((done, now - t_start, *rss()))
            while next_sample <= done:  # answers arrive a batch at a time: keep the grid fixed
                next_sample += step
        time.sleep(0.01)
    return samples


def _memory(out: dict, samples: list[tuple[int, float, int, int]]) -> None:
    """RSS growth of the workers and of Java into ``out``, and the verdict ``out["ok"]``."""

    def growth(col):
        first, last = [s[col] for s in samples[:5]], [s[col] for s in samples[-5:]]
        return _median(first), _median(last), max(s[col] for s in samples), _median(last) / _median(first) - 1

    mib = 2**20
    for name, col in (("worker", 2), ("java", 3)):
        base, final, peak, g = growth(col)
        out[name] = {"baseline_mib": round(base / mib, 1), "final_mib": round(final / mib, 1),
                     "peak_mib": round(peak / mib, 1), "growth": round(g, 4)}
    out["rss_trace_mib"] = [[d, round(t, 1), round(w / mib, 1), round(j / mib, 1)] for d, t, w, j in samples[::10]]
    probes = out.get("slow_body_probes")
    out["ok"] = (not out["failures"] and not out["worker_restarted"] and out["worker"]["growth"] < out["max_growth"]
                 and out["java"]["growth"] < out["max_growth"] and out["java"]["peak_mib"] <= out["java_budget_mib"]
                 # every stalled connection was ended by nginx (401/503/closed), none left open
                 and (probes is None or (probes["rounds"] > 0 and "open" not in probes["ended"])))


# The Java frontend's documented memory budget (RELIABILITY.md "Java RSS and G1": -Xmx1g, ~1.3 GB to be safe).
JAVA_BUDGET_MIB = 1300


def run_soak(store: Path, config: Path, run_dir: Path, n: int, warmup: int, concurrency: int,
             max_growth: float, duration: float | None = None, proxy: bool = False, probes: bool = False) -> dict:
    import psutil

    from polydet.serving.server import Ports, TorchServe

    payloads = _payloads(probes)
    ts = TorchServe(run_dir / "ts", config, ports=Ports.free(), model_store=store, models="polydet.mar")
    ts.start()
    front, prober = None, None
    try:
        ready_s = ts.wait_ready("polydet", timeout=240)
        keys = _Keys(ts)
        worker_pids = _worker_pids(ts, keys)
        java, workers = psutil.Process(ts.pid), [psutil.Process(p) for p in worker_pids]

        def rss() -> tuple[int, int]:
            return sum(w.memory_info().rss for w in workers), java.memory_info().rss

        url, front, prober = _front(ts, run_dir, proxy, probes)
        samples, latencies, failures, elapsed = _drive(keys, url, payloads, n, warmup, concurrency, rss, duration)
        restarted = _worker_pids(ts, keys) != worker_pids
    finally:
        if prober is not None:
            prober.stop()
        if front is not None:
            front.stop()
        ts.stop()
    lat = sorted(latencies)
    out = {"requests": len(lat), "warmup": warmup, "concurrency": concurrency, "ready_seconds": round(ready_s, 1),
           "seconds": round(elapsed, 1), "req_per_s": round(len(lat) / elapsed, 1), "proxy": proxy, "probes": probes,
           "latency_ms": {"p50": round(lat[len(lat) // 2] * 1e3, 1), "p99": round(lat[int(len(lat) * 0.99)] * 1e3, 1),
                          "max": round(lat[-1] * 1e3, 1)},
           "failures": failures, "key_renewals": keys.renewals, "workers": len(worker_pids), "worker_restarted": restarted,
           "samples": len(samples), "max_growth": max_growth, "java_budget_mib": JAVA_BUDGET_MIB}
    if prober is not None:
        out["slow_body_probes"] = {"rounds": prober.rounds, "ended": prober.statuses, "errors": prober.errors[:5]}
    _memory(out, samples)
    return out


def _front(ts, run_dir: Path, proxy: bool, probes: bool):
    """(url, nginx front or None, slow-body prober or None) for the traffic of a run."""
    if not proxy:
        return f"{ts.inference_url}/predictions/polydet", None, None
    sys.path.insert(0, str(REPO / "tests" / "reliability"))
    from probes import SlowBodyProber

    from polydet.serving.proxy import Proxy, free_port

    front = Proxy(run_dir / "nginx", ts.inference_url.removeprefix("http://"), free_port(),
                  max_body=int(ts.properties["max_request_size"])).start()
    prober = None
    if probes:
        prober = SlowBodyProber(front.port, ts.tokens.inference)
        prober.start()
    return f"{front.url}/predictions/polydet", front, prober


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if not 0 <= args.warmup < args.requests:
        raise SystemExit("--warmup must be below --requests")
    run_dir = Path(tempfile.mkdtemp(prefix="polydet-soak-"))
    # `kill PID` stops a run cleanly: the finally blocks stop TorchServe and remove the run folder.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        store = args.model_store.resolve() if args.model_store else _build_store(run_dir)
        if not (store / "polydet.mar").is_file():
            raise SystemExit(f"{store}/polydet.mar not found: run ./archive.sh (or omit --model-store)")
        res = run_soak(store, args.config.resolve(), run_dir, args.requests, args.warmup, args.concurrency,
                       args.max_growth, args.duration, args.proxy, args.probes)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"run folder kept: {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(res, indent=1))
    w, j = res["worker"], res["java"]
    print(f"{res['requests']} requests in {res['seconds']} s ({res['req_per_s']} req/s, concurrency "
          f"{res['concurrency']}), p50 {res['latency_ms']['p50']} ms, p99 {res['latency_ms']['p99']} ms; "
          f"failures {res['failures'] or 0}; expired-key renewals {res['key_renewals']}; "
          f"worker restarted: {res['worker_restarted']}")
    for name, r in ((f"python workers ({res['workers']})", w), ("java frontend", j)):
        print(f"{name:18s} RSS after warm-up {r['baseline_mib']} MiB -> {r['final_mib']} MiB "
              f"(peak {r['peak_mib']} MiB): {r['growth'] * 100:+.1f} % (limit {res['max_growth'] * 100:.0f} %)")
    if "slow_body_probes" in res:
        print(f"slow-body probes: {res['slow_body_probes']}")
    print("OK" if res["ok"] else "FAILED")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
