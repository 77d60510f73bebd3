"""``polydet bench compare``: in-process vs served REST vs served gRPC vs the seeds' naive way, one run.

Same machine, same artifact (the TorchScript inside the archive), same JPEG pool, same CPU budget:
the in-process pipeline runs as ``--workers`` processes of ``--threads`` torch threads each, pulling
batches of ``--batch-size`` — the shape of the TorchServe it is compared with (``--workers`` Python
workers of ``--threads`` threads, batchSize ``--batch-size``). Both use every core of the machine; the
served side also pays for its Java frontend and for the load-generating client on those cores.
Phases alternate in ``--rounds`` rounds so that a noisy neighbour hits every way alike, and the ratios
are taken per round. Also: latency at concurrency 1 (p50 served − p50 in-process, each with the
threads of one worker) and the naive baseline (PIL decode/resize, one image at a time, shapely-loop
NMS) against ours in one process with ``--threads`` threads, alternated in ``--naive-rounds``.

The latency at concurrency 1 is also taken **paired by image**: the pool holds JPEGs of very different
sizes, so the p50 of each way jumps between one image's latency and the next's from round to round;
the median over the pool's images of (served median - in-process median) for that image is what
serving adds to a request. TorchServe's own round trip is measured twice, with a handler that reads
nothing: once at batchSize 1 and once with the served model's batchSize and maxBatchDelay (whose
batcher makes a lone request wait up to maxBatchDelay for company). ``--server-cpus`` pins the
TorchServe (frontend and workers) and the in-process children to the same CPUs, ``--client-cpus``
the load generator (this process) to others, so that both ways get the same CPU budget and the
clients' CPU is not taken from the server's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from .common import (closed_loop, grpc_caller, image_index, percentiles, rest_caller, run_together, sample_jpegs,
                     table, weights_or_random, write_csv)
from .loadgen import rest_event_loop
from .serve import ServerProbe, ServeSettings, build_store, register_model, served, warm_up

SIZES = (320, 640, 1024, 1600)  # long sides of the JPEG pool (the locust pool too)
POOL = 16  # JPEGs in the pool
NOOP = "no-op REST"  # TorchServe's own round trip (polydet.bench.noop_handler), concurrency 1, batchSize 1
NOOP_BATCHED = "no-op REST batched"  # the same with the served model's batchSize and maxBatchDelay


def cpu_list(text: str | None) -> list[int] | None:
    """taskset's list syntax: "0,1", "2-3", "0-1,4" -> [0, 1, ...]; None or "" -> None (no pinning)."""
    if not text:
        return None
    cpus = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def pin(cpus: list[int] | None) -> None:
    """Pin the calling thread (and the threads and processes it starts from now on) to ``cpus``."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet bench compare", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="checkpoint (default: bundled weights, else random)")
    p.add_argument("--imgsz", type=int, default=None, help="served/in-process input size (default: the weights')")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold (all ways)")
    s = ServeSettings()
    p.add_argument("--workers", type=int, default=s.workers, help="worker processes (served and in-process)")
    p.add_argument("--threads", type=int, default=s.threads, help="torch threads per worker")
    p.add_argument("--batch-size", type=int, default=s.batch_size)
    p.add_argument("--max-batch-delay", type=int, default=s.max_batch_delay, help="ms (served)")
    p.add_argument("--netty-threads", type=int, default=s.netty_threads)
    p.add_argument("--concurrency", type=int, default=None, help="clients in the throughput phases "
                   "(default: 2 x workers x batch, at least 4)")
    p.add_argument("--seconds", type=float, default=10.0, help="per throughput phase")
    p.add_argument("--latency-seconds", type=float, default=6.0, help="per concurrency-1 phase")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-seconds", type=float, default=30.0, help="small-JPEG warm-up of the server")
    p.add_argument("--naive", default="224:0.25,640:0.25,640:0.01",
                   help="imgsz:conf pairs for ours vs naive ('' skips)")
    p.add_argument("--naive-seconds", type=float, default=6.0)
    p.add_argument("--naive-rounds", type=int, default=2, help="ours/naive alternations per pair")
    p.add_argument("--skip-served", action="store_true", help="no TorchServe (in-process and naive only)")
    p.add_argument("--protocols", default="REST,gRPC", help="served protocols to measure (default %(default)s)")
    p.add_argument("--images-per-request", default="1", help="comma list: each served protocol is also measured "
                   "with N images per request (way 'REST x8': a multipart form / several gRPC inputs; img/s "
                   "counts images); default %(default)s")
    p.add_argument("--server-cpus", default=None, help="CPUs (taskset list, e.g. 0-1) of the TorchServe and of "
                   "the in-process children: the same CPU budget for both ways (default: no pinning)")
    p.add_argument("--client-cpus", default=None, help="CPUs of the load generator (this process), e.g. 2-3: "
                   "its CPU then is not taken from the server's (default: no pinning)")
    p.add_argument("--client", choices=("events", "threads"), default="events", help="REST load generator: one "
                   "thread driving every connection (default: the least CPU taken from a server it shares cores "
                   "with) or a thread per client (http.client)")
    p.add_argument("--pin-cpu", action="store_true", help="served: the archive's handler.pin_cpu (each worker "
                   "pins itself to a CPU of its own)")
    p.add_argument("--out", default=None, help="folder for compare.csv, compare.json and compare.png")
    return p


# -- in-process side: child processes with their own torch thread pools -------------------------------
def _child(artifact, threads, batch, seconds, conf, mode, cpus, ready, start, results):
    pin(cpus)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import psutil
    import torch

    torch.set_num_threads(threads)
    from ..pipeline import DetectOptions, Detector
    from .naive import NaiveDetector

    jpegs = sample_jpegs(POOL, SIZES)
    det = Detector.from_artifact(artifact, options=DetectOptions(conf=conf))
    if mode == "naive":
        naive = NaiveDetector(det.backend, conf=conf)
        run = lambda chunk: [naive.detect_one(b) for b in chunk]  # noqa: E731
    else:
        run = det.detect
    for k in range(3):  # warm-up: TorchScript's profiling executor optimises on the first calls
        run([jpegs[(k + j) % len(jpegs)] for j in range(batch)])
    ready.put(os.getpid())
    start.wait()
    me = psutil.Process()
    cpu0, t_start, lat, n, i = sum(me.cpu_times()[:2]), time.perf_counter(), [], 0, 0
    while time.perf_counter() - t_start < seconds or len(lat) < 2:
        chunk = [jpegs[(i + j) % len(jpegs)] for j in range(batch)]
        i += batch
        t0 = time.perf_counter()
        run(chunk)
        lat.append(time.perf_counter() - t0)
        n += batch
    results.put({"images": n, "elapsed": time.perf_counter() - t_start, "lat": lat,
                 "cpu_s": sum(me.cpu_times()[:2]) - cpu0})


def in_process(artifact, procs: int, threads: int, batch: int, seconds: float, conf: float,
               mode: str = "ours", cpus: list[int] | None = None) -> dict:
    """``procs`` processes run the pipeline on batches for ``seconds`` -> img/s, latency, CPU per image;
    "by_image": each image's latencies (one process of batch 1: the pool's images in turn)."""
    # spawned children: a clean torch in each, with its own thread count
    got = run_together(_child, [(str(artifact), threads, batch, seconds, conf, mode, cpus)] * procs,
                       ready_timeout=300, result_timeout=seconds + 600)
    images = sum(g["images"] for g in got)
    lat = [x for g in got for x in g["lat"]]
    out = {"img_per_s": images / max(g["elapsed"] for g in got), "requests": images, "failures": 0,
           **percentiles(lat), "cpu_ms_per_img": sum(g["cpu_s"] for g in got) * 1e3 / images}
    if procs == 1 and batch == 1:
        out["by_image"] = _by_image((j % POOL, x) for j, x in enumerate(got[0]["lat"]))
    return out


def _by_image(pairs) -> dict[int, list[float]]:
    by: dict[int, list[float]] = {}
    for image, seconds in pairs:
        by.setdefault(image, []).append(seconds)
    return by


def paired_added_ms(served: dict, base: dict) -> float:
    """Median over the pool's images of (``served`` median latency - ``base`` median latency) of that
    image, in ms: what serving adds to one request, free of the pool's size mix (see the module doc)."""
    a, b = served.get("by_image", {}), base.get("by_image", {})
    diffs = [statistics.median(a[k]) - statistics.median(b[k]) for k in a if k in b]
    return statistics.median(diffs) * 1e3 if diffs else float("nan")


# -- served side ----------------------------------------------------------------------------------
def served_phase(ts, protocol: str, concurrency: int, seconds: float, jpegs: list[bytes],
                 model: str = "polydet", per_request: int = 1, client: str = "events") -> dict:
    """A closed loop of ``concurrency`` clients, ``per_request`` images per request; img/s counts images.
    ``client``: "events" (REST: one thread drives every connection, :mod:`.loadgen`) or "threads" (a
    thread per client, as gRPC always is)."""
    token = ts.tokens.inference
    with ServerProbe(ts) as probe:
        # by completion: an 8-image request can take seconds, and counting by start would undercount it
        if protocol == "rest" and client == "events":
            r = rest_event_loop(ts.inference_url, token, jpegs, concurrency, seconds, 1.0, model, per_request)
        else:
            make = (rest_caller(ts.inference_url, token, jpegs, model, per_request) if protocol == "rest"
                    else grpc_caller(ts.grpc_inference_target, token, jpegs, model, per_request))
            r = closed_loop(make, concurrency, seconds, warmup_s=1.0, by_completion=True, keep_calls=True)
    calls = r.pop("calls")
    r = {"img_per_s": r["req_per_s"] * per_request, "images_per_request": per_request, **r, **probe.result}
    if concurrency == 1 and per_request == 1:
        r["by_image"] = _by_image((image_index(t, n, len(jpegs)), x) for t, n, x in calls)
    r["cpu_ms_per_img"] = sum(probe.result[f"cpu_{k}_ms_per_req"] for k in ("frontend", "workers", "client")) / per_request
    return r


def served_ways(protocols: str, per_request: str) -> list[str]:
    """Way names: "REST" (one image per request), "REST x8" (8 per request), ... in protocol order."""
    counts = [int(n) for n in per_request.split(",")]
    return [p if n == 1 else f"{p} x{n}" for p in ("REST", "gRPC") if p in protocols.split(",") for n in counts]


def way_args(way: str) -> tuple[str, int]:
    """"gRPC x8" -> ("grpc", 8); "REST" -> ("rest", 1)."""
    proto, _, n = way.partition(" x")
    return proto.lower(), int(n or 1)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    weights = args.weights or weights_or_random()
    settings = ServeSettings(batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, workers=args.workers,
                             threads=args.threads, netty_threads=args.netty_threads)
    conc = args.concurrency or max(4, 2 * args.workers * args.batch_size)
    budget = args.workers * args.threads
    t_begin = time.strftime("%Y-%m-%d %H:%M")
    server_cpus, client_cpus = cpu_list(args.server_cpus), cpu_list(args.client_cpus)
    with tempfile.TemporaryDirectory(prefix="polydet-compare-") as tmp:
        tmp = Path(tmp)
        store, artifact = build_store(tmp, weights, args.imgsz, settings, conf=args.conf, pin_cpu=args.pin_cpu)
        imgsz = _imgsz(artifact)
        import contextlib

        pin(server_cpus)  # the TorchServe started next inherits it; in-process children pin themselves
        with (contextlib.nullcontext() if args.skip_served else served(store, settings, run_dir=tmp / "run")) as ts:
            pin(client_cpus)
            ways = ["in-process"] + ([] if args.skip_served else served_ways(args.protocols, args.images_per_request))
            if ts is not None:
                # TorchServe's own round trip: the same bodies to a handler that reads nothing
                register_model(ts, ServeSettings(workers=1, batch_size=1), archive="noop.mar", name="noop")
                register_model(ts, ServeSettings(workers=1, batch_size=settings.batch_size,
                                                 max_batch_delay=settings.max_batch_delay),
                               archive="noop.mar", name="noop_batched")
                n = warm_up(ts, args.warmup_seconds / 2, conc, grpc="gRPC" in ways)
                # then the measured traffic through the measuring client: its code paths in the JVM too
                n += served_phase(ts, "rest", conc, args.warmup_seconds / 2, sample_jpegs(POOL, SIZES),
                                  client=args.client)["requests"]
                print(f"  warm-up: {n} requests", flush=True)
            rows, rounds = _rounds(args, ts, artifact, ways, conc, server_cpus)
        naive_rows = _naive(args, weights, tmp, rows)
    summary = summarize(rounds, naive_rows)
    _report(args, settings, weights, conc, budget, t_begin, rows, rounds, summary, naive_rows, imgsz)
    return 0


def _rounds(args, ts, artifact, ways: list[str], conc: int, cpus) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """``args.rounds`` rounds of throughput (the ways in a rotating order) then latency at concurrency 1."""
    jpegs = sample_jpegs(POOL, SIZES)
    rows, rounds = [], []
    for r in range(args.rounds):
        res = {}
        for way in ways[r % len(ways):] + ways[: r % len(ways)]:  # rotate the order each round
            if way == "in-process":
                res[way] = in_process(artifact, args.workers, args.threads, args.batch_size, args.seconds,
                                      args.conf, cpus=cpus)
            else:
                res[way] = served_phase(ts, way_args(way)[0], conc, args.seconds, jpegs, per_request=way_args(way)[1],
                                        client=args.client)
            print(f"  round {r + 1} {way:>10}: {res[way]['img_per_s']:.1f} img/s", flush=True)
        lat = {"in-process": in_process(artifact, 1, args.threads, 1, args.latency_seconds, args.conf, cpus=cpus)}
        for way in ways[1:]:
            lat[way] = served_phase(ts, way_args(way)[0], 1, args.latency_seconds, jpegs,
                                    per_request=way_args(way)[1], client=args.client)
        if ts is not None:
            for name, model in ((NOOP, "noop"), (NOOP_BATCHED, "noop_batched")):
                lat[name] = served_phase(ts, "rest", 1, args.latency_seconds, jpegs, model=model, client=args.client)
        rounds.append((res, lat))
        for metric, got in (("throughput", res), ("latency_c1", lat)):
            for way in (ways if metric == "throughput" else lat):
                row = {k: v for k, v in got[way].items() if k != "by_image"}
                if metric == "latency_c1" and way not in ("in-process", NOOP, NOOP_BATCHED) and "by_image" in got[way]:
                    row["added_paired_ms"] = paired_added_ms(got[way], lat["in-process"])
                rows.append({"round": r + 1, "way": way, "metric": metric, **row})
    return rows, rounds


def _naive(args, weights, tmp: Path, rows: list) -> list[dict]:
    """Ours vs the seeds' naive way, one process, alternated (``--naive`` pairs); adds their rows."""
    from ..export import export

    naive_rows = []
    for pair in filter(None, args.naive.split(",")):
        size, conf = int(pair.split(":")[0]), float(pair.split(":")[1])
        art = export(weights, "torchscript", out=tmp / f"n{size}.torchscript", imgsz=size, verify=False)[0]
        got = {"ours": [], "naive": []}
        for r in range(args.naive_rounds):  # alternate, so that a noisy neighbour hits both alike
            for mode in ("ours", "naive") if r % 2 == 0 else ("naive", "ours"):
                got[mode].append(in_process(art, 1, args.threads, 1, args.naive_seconds, conf, mode=mode))
        ours, naive = ({k: statistics.median(x[k] for x in got[m]) for k in got[m][0] if k != "by_image"}
                       for m in ("ours", "naive"))
        naive_rows.append({"imgsz": size, "conf": conf, "ours_img_per_s": ours["img_per_s"],
                           "naive_img_per_s": naive["img_per_s"], "ours_p50_ms": ours["p50_ms"],
                           "naive_p50_ms": naive["p50_ms"], "ours_vs_naive": statistics.median(
                               _ratio(a["img_per_s"], b["img_per_s"]) for a, b in zip(got["ours"], got["naive"]))})
        print(f"  ours vs naive {size} conf {conf}: {naive_rows[-1]['ours_vs_naive']:.2f}x", flush=True)
        rows.append({"round": 0, "way": f"naive {size} c{conf:g}", "metric": "throughput", **naive})
        rows.append({"round": 0, "way": f"ours b1 {size} c{conf:g}", "metric": "throughput", **ours})
    return naive_rows


def summarize(rounds, naive_rows) -> dict:
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    s = {}
    for way in ("REST", "gRPC"):
        if rounds and way in rounds[0][0]:
            s[f"{way}_over_inprocess"] = med([_ratio(r[way]["img_per_s"], r["in-process"]["img_per_s"]) for r, _ in rounds])
            s[f"{way}_added_p50_ms"] = med([lat[way]["p50_ms"] - lat["in-process"]["p50_ms"] for _, lat in rounds])
    for way in (w for w in (rounds[0][0] if rounds else {}) if " x" in w):  # N images per request vs 1
        one = way.partition(" x")[0]
        key = f"{way.replace(' ', '_')}_over_{one}"
        if one in rounds[0][0]:
            s[key] = med([_ratio(r[way]["img_per_s"], r[one]["img_per_s"]) for r, _ in rounds])
    if rounds and NOOP in rounds[0][1]:
        s["noop_REST_p50_ms"] = med([lat[NOOP]["p50_ms"] for _, lat in rounds])
        s["noop_batched_REST_p50_ms"] = med([lat[NOOP_BATCHED]["p50_ms"] for _, lat in rounds])
        # the target: what serving adds beyond TorchServe's own round trip (<= 1 ms)
        s["REST_added_p50_beyond_noop_ms"] = med([lat["REST"]["p50_ms"] - lat["in-process"]["p50_ms"]
                                                  - lat[NOOP]["p50_ms"] for _, lat in rounds])
        paired = [paired_added_ms(lat["REST"], lat["in-process"]) for _, lat in rounds]
        s["REST_added_paired_ms"] = med(paired)
        s["REST_added_paired_beyond_noop_ms"] = med([p - lat[NOOP]["p50_ms"] for p, (_, lat) in zip(paired, rounds)])
        s["REST_added_paired_beyond_batched_noop_ms"] = med([p - lat[NOOP_BATCHED]["p50_ms"]
                                                            for p, (_, lat) in zip(paired, rounds)])
    for n in naive_rows:
        s[f"ours_vs_naive_{n['imgsz']}_c{n['conf']:g}"] = n["ours_vs_naive"]
    return s


def _imgsz(artifact) -> int:
    from ..backends import load_backend

    return load_backend(artifact).info.imgsz


def _report(args, settings, weights, conc, budget, t_begin, rows, rounds, summary, naive_rows, imgsz) -> None:
    import platform

    import torch

    wname = "random weights (no bundled weights)" if weights == "random" else Path(weights).name
    head = (f"{t_begin}, {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}; weights: {wname}; "
            f"imgsz {imgsz}; {settings.label()}; CPU budget {budget} torch threads in total; "
            f"throughput at {conc} clients, {args.seconds:g} s x {args.rounds} rounds"
            + (f"; server and in-process on CPUs {args.server_cpus}" if args.server_cpus else "")
            + (f", clients on CPUs {args.client_cpus}" if args.client_cpus else "")
            + ("; workers pinned one per CPU (handler.pin_cpu)" if args.pin_cpu else "")
            + f"; REST clients: {args.client}")
    cols = ["round", "way", "metric", "img_per_s", "images_per_request", "p50_ms", "p99_ms", "added_paired_ms", "failures",
            "cpu_ms_per_img", "queue_ms",
            "frontend_latency_ms", "HandlerTime_avg", "PolydetPreprocessMs_avg", "PolydetInferenceMs_avg",
            "PolydetPostprocessMs_avg", "PolydetBatchSize_avg", "cpu_frontend_ms_per_req", "cpu_workers_ms_per_req",
            "cpu_client_ms_per_req"]
    print(f"\n{head}\n")
    print(table(rows, [c for c in cols if any(c in r for r in rows)]))
    if naive_rows:
        print(f"\nours vs naive (one process of {args.threads} thread(s), one image at a time, the same artifact; "
              f"median of {args.naive_rounds} alternations):\n")
        print(table(naive_rows))
    print("\nratios (median over rounds):\n")
    print(table([{"ratio": k, "value": v} for k, v in summary.items()]))
    if args.out:
        out = Path(args.out)
        write_csv(rows, out / "compare.csv")
        (out / "compare.json").write_text(json.dumps({"header": head, "summary": summary, "naive": naive_rows,
                                                      "rows": rows}, indent=1, default=float))
        from .plots import plot_compare

        png = plot_compare(rows, out / "compare.png", head)
        print(f"\nwrote {out / 'compare.csv'}, {out / 'compare.json'}, {png}")
