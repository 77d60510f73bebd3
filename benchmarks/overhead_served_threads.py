"""A real TorchServe's worker CPU per image, by thread and by process (issue 11, item 9).

Builds the archive (``polydet archive``, TorchScript, batchSize 4, maxBatchDelay 1 ms), serves it on
127.0.0.1 with 2 workers x 1 torch thread (its own TMPDIR, stopped by PID), and runs closed loops of REST
clients (``polydet.bench.common``) for ``--seconds``, ``--rounds`` times. For each round: img/s, and the CPU
ms per image of every process under the frontend (the workers, anything else TorchServe started) and of
each worker's threads, from psutil before and after the loop. Set ``PYTHONPATH`` to another checkout's
``src`` to measure that code instead (the workers inherit the environment).

    .venv/bin/python benchmarks/overhead_served_threads.py [--rounds 3] [--seconds 15] [--clients 8]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def snapshot(java) -> dict:
    """{(pid, name): cpu_s} per process under the frontend, and {(pid, tid): cpu_s} per worker thread."""
    procs, threads = {}, {}
    for c in java.children(recursive=True):
        try:
            name = "worker" if "model_service_worker" in " ".join(c.cmdline()) else " ".join(c.cmdline())[:80]
            procs[(c.pid, name)] = sum(c.cpu_times()[:2])
            if name == "worker":
                for t in c.threads():
                    threads[(c.pid, t.id)] = t.user_time + t.system_time
        except Exception:  # noqa: BLE001, S112 - a process that ended between the listing and the read
            continue
    return {"procs": procs, "threads": threads, "java": sum(java.cpu_times()[:2])}


def profiled_store(store: Path, profile_dir: Path) -> None:
    """Rewrite store/polydet.mar with overhead_profile_handler.py appended to its handler file."""
    import shutil
    import zipfile

    mar = store / "polydet.mar"
    shutil.move(mar, mar.with_suffix(".orig"))
    extra = Path(__file__).with_name("overhead_profile_handler.py").read_text()
    with zipfile.ZipFile(mar.with_suffix(".orig")) as src, zipfile.ZipFile(mar, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("polydet_handler.py"):
                data += b"\n\n" + extra.encode()
            dst.writestr(item, data)
    profile_dir.mkdir(parents=True, exist_ok=True)


def profile_counts(profile_dir: Path | None) -> dict:
    """The profiling handler's counts, summed over the workers."""
    out = collections.defaultdict(float)
    for f in (profile_dir.glob("*.json") if profile_dir else ()):
        for k, v in json.loads(f.read_text()).items():
            out[k] += v
    return out


def one_round(ts, jpegs, clients: int, seconds: float, profile_dir: Path | None = None) -> dict:
    import psutil

    from polydet.bench.common import closed_loop, rest_caller
    from polydet.bench.serve import scrape

    java = psutil.Process(ts.pid)
    p0, m0, s0 = profile_counts(profile_dir), scrape(ts.metrics_url), snapshot(java)
    r = closed_loop(rest_caller(ts.inference_url, ts.tokens.inference, jpegs), clients, seconds, warmup_s=0)
    s1, m1, p1 = snapshot(java), scrape(ts.metrics_url), profile_counts(profile_dir)
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in ("PolydetImages", "PolydetHandlerSeconds_count")}
    n = r["requests"]
    per = lambda a, b: round((a - b) * 1e3 / n, 3)
    procs = collections.defaultdict(float)
    for k, v in s1["procs"].items():
        procs[k[1]] += per(v, s0["procs"].get(k, 0.0))
    by_rank = collections.defaultdict(list)  # per worker, its threads' CPU sorted: [main, next, ...]
    for (pid, tid), v in s1["threads"].items():
        by_rank[pid].append(per(v, s0["threads"].get((pid, tid), 0.0)))
    threads = [sorted(v, reverse=True) for v in by_rank.values()]
    prof = {}
    if p1:
        imgs = max(p1["images"] - p0["images"], 1)
        prof = {"in_handle": round((p1["inside_s"] - p0["inside_s"]) * 1e3 / imgs, 3),
                "ts_loop": round((p1["outside_s"] - p0["outside_s"]) * 1e3 / imgs, 3)}
    return {**prof, "img_per_s": round(r["req_per_s"], 2), "failures": r["failures"],
            "mean_batch": round(d["PolydetImages"] / max(d["PolydetHandlerSeconds_count"], 1), 2), "frontend": per(s1["java"], s0["java"]),
            "procs": dict(procs), "worker_threads": threads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup-seconds", type=float, default=10.0)
    ap.add_argument("--profile-dir", default="", help="serve with overhead_profile_handler.py appended to the "
                    "handler; its counts (and, with POLYDET_OVERHEAD_CPROFILE=1, cProfile dumps) go here")
    args = ap.parse_args(argv)
    from polydet.bench.common import sample_jpegs
    from polydet.bench.serve import ServeSettings, build_store, served, warm_up

    settings = ServeSettings()
    with tempfile.TemporaryDirectory(prefix="polydet-overhead-") as tmp:
        store, _ = build_store(tmp, settings=settings)
        profile_dir = Path(args.profile_dir).resolve() if args.profile_dir else None
        if profile_dir:
            profiled_store(store, profile_dir)
            os.environ["POLYDET_OVERHEAD_PROFILE"] = str(profile_dir)  # the frontend's workers inherit it
        with served(store, settings, run_dir=Path(tmp) / "run") as ts:
            warm_up(ts, args.warmup_seconds, args.clients)
            jpegs = sample_jpegs(16, (320, 640, 1024, 1600))
            for k in range(args.rounds):
                print(json.dumps({"round": k + 1, **one_round(ts, jpegs, args.clients, args.seconds, profile_dir)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
