"""Tune TorchServe for this machine's cores: served REST throughput and concurrency-1 latency per setting.

Settings: worker processes x torch threads per worker (OMP_NUM_THREADS in the workers' environment),
batchSize / maxBatchDelay, and netty threads (frontend I/O). One TorchServe per (workers x threads,
netty) — threads live in the workers' environment — and the batching settings are re-registered on it.
Every setting gets a warm-up, then ``--seconds`` of throughput at ``--concurrency`` clients and
``--latency-seconds`` at one client. The in-process pipeline at the same budget is measured at the start
and at the end of the run, so the served numbers can be read as ratios on a noisy machine.

    .venv/bin/python benchmarks/tune_cpu.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.bench.common import closed_loop, rest_caller, sample_jpegs, table, weights_or_random, write_csv  # noqa: E402
from polydet.bench.compare import SIZES, in_process  # noqa: E402
from polydet.bench.serve import ServerProbe, ServeSettings, build_store, register_model, served  # noqa: E402

# (workers, threads, netty_threads) -> [(batchSize, maxBatchDelay ms), ...]
GRID = {
    (1, 2, None): [(1, 0), (4, 1), (4, 20)],
    (2, 1, None): [(1, 0), (2, 1), (4, 1), (4, 5), (4, 20), (8, 5)],
    (2, 1, 1): [(1, 0), (4, 1)],
    (2, 1, 4): [(1, 0), (4, 1)],
    (2, 2, None): [(1, 0), (4, 1)],
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--imgsz", type=int, default=224)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--latency-seconds", type=float, default=5.0)
    p.add_argument("--quick", action="store_true", help="only the first setting of each group")
    p.add_argument("--transport", action="store_true", help="instead: TorchServe's own cost per request, with "
                   "polydet/bench/noop_handler.py, per JVM / netty setting")
    p.add_argument("--out", default=None, help="folder for tune_cpu.csv")
    return p


def _rest_row(ts, token: str, jpegs, args, s: ServeSettings) -> dict:
    """Served REST throughput at ``args.concurrency`` clients (with the server's CPU and queue), and p50
    latency at one client, for setting ``s`` on TorchServe ``ts``: one row of the table."""
    closed_loop(rest_caller(ts.inference_url, token, jpegs), args.concurrency, 3.0, warmup_s=0)
    with ServerProbe(ts) as probe:
        r = closed_loop(rest_caller(ts.inference_url, token, jpegs), args.concurrency,
                        args.seconds, warmup_s=1.0)
    lat = closed_loop(rest_caller(ts.inference_url, token, jpegs), 1, args.latency_seconds,
                      warmup_s=0.5)
    pr = probe.result
    return {"way": "REST", "workers": s.workers, "threads": s.threads, "batch": s.batch_size,
            "delay": s.max_batch_delay, "netty": s.netty_threads or "default", "img_per_s": r["req_per_s"],
            "p50_c1_ms": lat["p50_ms"], "p99_ms": r["p99_ms"], "failures": r["failures"],
            "cpu_ms_per_img": sum(pr[f"cpu_{c}_ms_per_req"] for c in ("frontend", "workers", "client")),
            "cpu_frontend": pr["cpu_frontend_ms_per_req"], "cpu_workers": pr["cpu_workers_ms_per_req"],
            "cpu_client": pr["cpu_client_ms_per_req"], "queue_ms": pr["queue_ms"],
            "batch_avg": pr["PolydetBatchSize_avg"]}


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.transport:
        return transport(args)
    weights = weights_or_random()
    jpegs = sample_jpegs(16, SIZES)
    rows = []
    t0 = time.strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="polydet-tune-") as tmp:
        tmp = Path(tmp)
        store, artifact = build_store(tmp, weights, args.imgsz)

        def reference(tag):
            for procs, threads, batch in ((1, 2, 4), (2, 1, 1)):
                r = in_process(artifact, procs, threads, batch, args.seconds, 0.25)
                lat = in_process(artifact, 1, threads, 1, args.latency_seconds, 0.25)
                rows.append({"way": f"in-process {tag}", "workers": procs, "threads": threads, "batch": batch,
                             "delay": "", "netty": "", "img_per_s": r["img_per_s"], "p50_c1_ms": lat["p50_ms"],
                             "cpu_ms_per_img": r["cpu_ms_per_img"]})
                print(rows[-1], flush=True)

        reference("start")
        for k, ((workers, threads, netty), combos) in enumerate(GRID.items()):
            combos = combos[:1] if args.quick else combos
            first = ServeSettings(batch_size=combos[0][0], max_batch_delay=combos[0][1], workers=workers,
                                  threads=threads, netty_threads=netty)
            with served(store, first, run_dir=tmp / f"run{k}") as ts:
                token = ts.tokens.inference
                for j, (batch, delay) in enumerate(combos):
                    s = ServeSettings(batch_size=batch, max_batch_delay=delay, workers=workers, threads=threads,
                                      netty_threads=netty)
                    if j:
                        register_model(ts, s, replace=True)
                    rows.append(_rest_row(ts, token, jpegs, args, s))
                    print(rows[-1], flush=True)
        reference("end")
    print(f"\n{t0}; weights {Path(weights).name}; imgsz {args.imgsz}; {args.concurrency} clients x "
          f"{args.seconds:g} s; c1 latency over {args.latency_seconds:g} s\n")
    print(table(rows, ["way", "workers", "threads", "batch", "delay", "netty", "img_per_s", "p50_c1_ms", "p99_ms",
                       "cpu_ms_per_img", "cpu_frontend", "cpu_workers", "cpu_client", "queue_ms", "batch_avg"]))
    if args.out:
        print("wrote", write_csv(rows, Path(args.out) / "tune_cpu.csv"))
    return 0


JVM = {"default": "", "serialgc-c1": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"}


def transport(args) -> int:
    """No-op handler: per-request CPU of the frontend, the worker loop and the client, per setting."""
    import subprocess

    from polydet.bench.common import REPO
    from polydet.bench.serve import warm_up

    jpegs = sample_jpegs(16, SIZES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="polydet-noop-") as tmp:
        tmp = Path(tmp)
        (tmp / "store").mkdir()
        subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", "polydet",
                        "--version", "1.0", "--handler", str(REPO / "src" / "polydet" / "bench" / "noop_handler.py"),
                        "--export-path", str(tmp / "store")], check=True)
        log4j = REPO / "src/polydet/serving/log4j2.xml"
        for k, (jvm, netty, batch) in enumerate([("default", None, 1), ("default", None, 4), ("default", 1, 4),
                                                 ("serialgc-c1", 1, 4)]):
            s = ServeSettings(batch_size=batch, max_batch_delay=1 if batch > 1 else 0, workers=2, threads=1,
                              netty_threads=netty, netty_client_threads=netty)
            vm = f"-Xmx1g -XX:+ExitOnOutOfMemoryError {JVM[jvm]} -Dlog4j.configurationFile={log4j}"
            with served(tmp / "store", s, run_dir=tmp / f"run{k}", properties={"vmargs": vm}) as ts:
                warm_up(ts, 10.0, args.concurrency)
                token = ts.tokens.inference
                for conc, secs in ((args.concurrency, args.seconds), (1, args.latency_seconds)):
                    with ServerProbe(ts, period=1.0) as probe:
                        r = closed_loop(rest_caller(ts.inference_url, token, jpegs), conc, secs, warmup_s=1.0)
                    pr = probe.result
                    rows.append({"jvm": jvm, "netty": netty or "default", "batch": batch, "clients": conc,
                                 "req_per_s": r["req_per_s"], "p50_ms": r["p50_ms"], "failures": r["failures"],
                                 "cpu_frontend": pr["cpu_frontend_ms_per_req"], "cpu_workers": pr["cpu_workers_ms_per_req"],
                                 "cpu_client": pr["cpu_client_ms_per_req"], "queue_ms": pr["queue_ms"]})
                    print(rows[-1], flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}; no-op handler, JPEG pool 320-1600 px; CPU ms per request\n")
    print(table(rows))
    if args.out:
        print("wrote", write_csv(rows, Path(args.out) / "tune_transport.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
