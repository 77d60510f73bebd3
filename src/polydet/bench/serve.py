"""``polydet bench serve``: a locust load test against a polydet TorchServe, headless, step by step.

For each number of users U (``--users 1,4,16``) locust runs ``loadtest/locustfile.py`` for ``--seconds``
and writes its CSV and HTML report under ``--out``; a summary CSV (throughput, p50/p95/p99, failures per
step) and PNG plots (throughput and latency percentiles vs users) follow. The server is either a running
one (``--url``, ``--grpc-target``, ``--key-file``) or one started here from an archive built with
archive.sh (``--weights``, ``--imgsz``, the batching settings), stopped by PID at the end.

Also home of the helpers the other benchmarks share for served models: :class:`ServeSettings`,
:func:`build_store` and :func:`served` (start a TorchServe with given batching, workers and threads).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import REPO, weights_or_random

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
MODEL = "polydet"


@dataclass(frozen=True)
class ServeSettings:
    """What a TorchServe run is tuned by (see BENCHMARKS.md, "Tuning TorchServe for 2 cores")."""

    batch_size: int = 4  # batchSize: under load, batches amortise TorchServe's per-batch costs
    max_batch_delay: int = 1  # ms a worker waits to fill a batch; a lone request waits this long
    workers: int = 2  # Python worker processes (minWorkers = maxWorkers)
    threads: int = 1  # torch intra-op threads per worker (OMP_NUM_THREADS / MKL_NUM_THREADS)
    netty_threads: int | None = None  # number_of_netty_threads (frontend I/O); None: TorchServe's (cores)
    netty_client_threads: int | None = None  # netty_client_threads (frontend <-> worker); None: cores
    job_queue_size: int | None = None  # None: TorchServe's 100; more clients than this get 503s
    gpu: bool = False  # False: number_of_gpu=0 (CPU workers even where a GPU exists)

    def label(self) -> str:
        s = f"w{self.workers}xt{self.threads} b{self.batch_size} d{self.max_batch_delay}"
        return s + (f" netty{self.netty_threads}" if self.netty_threads else "")

    def properties(self) -> dict[str, str]:
        props = {"number_of_gpu": "1" if self.gpu else "0", "default_workers_per_model": str(self.workers)}
        for key, value in (("number_of_netty_threads", self.netty_threads),
                           ("netty_client_threads", self.netty_client_threads),
                           ("job_queue_size", self.job_queue_size)):
            if value is not None:
                props[key] = str(value)
        return props

    def env(self) -> dict[str, str]:
        """Worker environment: torch reads OMP_NUM_THREADS at import for its intra-op pool."""
        n = str(self.threads)
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def build_store(root: str | Path, weights: str | None = None, imgsz: int | None = None,
                settings: ServeSettings = ServeSettings(), conf: float | None = None,
                pin_cpu: bool = False) -> tuple[Path, Path]:
    """``polydet archive`` into ``root/model_store`` (TorchScript only), plus ``noop.mar`` (TorchServe's own
    round trip, :mod:`polydet.bench.noop_handler`) -> (store, the artifact inside polydet.mar).
    ``pin_cpu``: the archive's ``handler.pin_cpu`` (one CPU per worker)."""
    import dataclasses

    from ..options import DetectOptions
    from ..serving.archive import SERVED, ArchiveJob, Batching, build_archives

    root = Path(root)
    store, build = root / "model_store", root / "build"
    batching = Batching(min_workers=settings.workers, max_workers=settings.workers, batch_size=settings.batch_size,
                        max_batch_delay=settings.max_batch_delay)
    service = dataclasses.replace(SERVED, pin_cpu=pin_cpu,
                                  **({} if conf is None else {"options": DetectOptions(conf=conf)}))
    build_archives(ArchiveJob(store, build, weights=weights or weights_or_random(), formats=("torchscript",),
                              imgsz=imgsz, batching=batching, service=service))
    noop = Path(__file__).with_name("noop_handler.py")
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "noop", "--version",
                    "1.0", "--handler", str(noop), "--export-path", str(store), "--force"], check=True,
                   capture_output=True)
    artifact = next((build / f"{MODEL}-1.0").glob("*.torchscript"))
    return store, artifact


@contextlib.contextmanager
def served(store: str | Path, settings: ServeSettings, run_dir: str | Path | None = None,
           register: bool = True, timeout: float = 240.0, properties: dict[str, str] | None = None):
    """A TorchServe serving ``store``/polydet.mar with ``settings``; stopped by PID on exit.

    The model is registered through the management API with batch size, delay and workers as query
    parameters (they override the archive's model-config.yaml), so one archive serves every setting.
    """
    from ..serving.server import Ports, TorchServe

    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="polydet-bench-"))
        props = {**settings.properties(), **(properties or {})}
        if register:
            props["load_models"] = ""  # registered below, with the settings as parameters
        ts = TorchServe(run_dir, ports=Ports.free(), model_store=store, properties=props)
        saved = {k: os.environ.get(k) for k in settings.env()}
        os.environ.update(settings.env())  # the frontend and its workers inherit the launcher's env
        try:
            ts.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        stack.callback(ts.stop)
        if register:
            register_model(ts, settings, timeout=timeout)
        ts.wait_ready(MODEL, timeout=timeout)
        yield ts


def register_model(ts, settings: ServeSettings, archive: str = f"{MODEL}.mar", name: str = MODEL,
                   timeout: float = 240.0, replace: bool = False) -> None:
    """Register ``archive`` as ``name`` with the batching and workers of ``settings`` (query parameters
    override the archive's model-config.yaml); ``replace`` unregisters it first. Threads and netty
    settings need a restart (they live in the workers' environment and config.properties)."""
    from ..serving.client import RestClient

    client = RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=timeout)
    if replace:
        client.unregister(name)
    client.register(archive, model_name=name, initial_workers=settings.workers, batch_size=settings.batch_size,
                    max_batch_delay=settings.max_batch_delay, response_timeout=120)
    if settings.workers > 1:  # initial_workers sets the minimum; pin the maximum too
        client.scale(name, min_worker=settings.workers, max_worker=settings.workers)
    ts.wait_ready(name, timeout=timeout)


# -- locust runner ----------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--users", default="1,2,4,8,16", help="comma list of concurrent users, one step each")
    p.add_argument("--seconds", type=float, default=20.0, help="duration of each step")
    p.add_argument("--protocol", default="rest", choices=["rest", "grpc", "both"])
    p.add_argument("--out", default="benchmarks/results/loadtest", help="folder for CSV, HTML and PNG")
    p.add_argument("--sizes", default="320,640,1024,1600", help="long sides of the JPEG pool")
    p.add_argument("--images-per-request", type=int, default=1, help="images in each request (a multipart form / "
                   "several gRPC inputs when > 1; the locustfile's POLYDET_IMAGES_PER_REQUEST)")
    p.add_argument("--url", help="use a running server: inference URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--grpc-target", help="use a running server: gRPC inference host:port")
    p.add_argument("--key-file", help="key_file.json of the running server (none: auth off)")
    g = p.add_argument_group("server started here (when no --url)")
    g.add_argument("--weights", default=None, help="checkpoint (default: bundled weights, else random)")
    g.add_argument("--imgsz", type=int, default=None, help="input size (default: the weights')")
    for f in ("batch_size", "max_batch_delay", "workers", "threads", "netty_threads"):
        g.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(ServeSettings(), f))
    return p


def locust_step(users: int, seconds: float, out: Path, user_class: str, env: dict, host: str) -> dict:
    """One headless locust run (CSV and HTML report under ``out``) -> its final totals and failures."""
    import json

    prefix = out / f"{user_class.lower()}_u{users}"
    summary = Path(f"{prefix}_summary.json")
    summary.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), user_class, "--headless", "-u", str(users),
           "-r", str(users), "-t", f"{max(1, round(seconds))}s", "--stop-timeout", "10", "--host", host,
           "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", "--loglevel", "WARNING",
           "--exit-code-on-error", "0"]
    r = subprocess.run(cmd, env=dict(os.environ, **env, POLYDET_SUMMARY=str(summary)), capture_output=True,
                       text=True, timeout=seconds + 120)
    if r.returncode or not summary.exists():
        raise RuntimeError(f"locust failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    s = json.loads(summary.read_text())
    return {"protocol": "grpc" if user_class == "GrpcUser" else "rest", "users": users,
            **{k: s[k] for k in ("requests", "failures", "req_per_s", "p50_ms", "p95_ms", "p99_ms", "mean_ms")},
            "images_per_request": s.get("images_per_request", 1), "img_per_s": s.get("img_per_s", s["req_per_s"]),
            "failure_reasons": "; ".join(s["failure_reasons"])[:500]}


def run_load(users: list[int], seconds: float, out: Path, protocols: list[str], url: str, grpc_target: str,
             key_file: str | None, sizes: str, images_per_request: int = 1) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {"POLYDET_KEY_FILE": key_file or "none", "POLYDET_GRPC_TARGET": grpc_target or "",
           "POLYDET_IMAGES_PER_REQUEST": str(images_per_request),
           "POLYDET_SIZES": sizes, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for proto in protocols:
        for u in users:
            row = locust_step(u, seconds, out, "GrpcUser" if proto == "grpc" else "RestUser", env, url)
            rows.append(row)
            print(f"  {proto} {u:>3} users: {row['req_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p99 {row['p99_ms']:.0f} ms, {row['failures']} failures", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from .common import table, write_csv
    from .plots import plot_load

    users = [int(u) for u in args.users.split(",")]
    protocols = ["rest", "grpc"] if args.protocol == "both" else [args.protocol]
    out = Path(args.out)
    with contextlib.ExitStack() as stack:
        if args.url:
            url, target, key_file, where = args.url, args.grpc_target, args.key_file, f"running server {args.url}"
            if "grpc" in protocols and not target:
                raise SystemExit("--protocol grpc with --url needs --grpc-target")
        else:
            settings = ServeSettings(**{f: getattr(args, f) for f in ("batch_size", "max_batch_delay", "workers",
                                                                      "threads", "netty_threads")})
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="polydet-load-")))
            print(f"building the archive and starting TorchServe ({settings.label()}) ...", flush=True)
            store, _ = build_store(tmp, args.weights, args.imgsz, settings)
            ts = stack.enter_context(served(store, settings, run_dir=tmp / "run"))
            url, target, key_file = ts.inference_url, ts.grpc_inference_target, str(ts.key_file)
            where = f"TorchServe pid {ts.pid} ({settings.label()}, weights {args.weights or weights_or_random()})"
        print(f"load test against {where}", flush=True)
        rows = run_load(users, args.seconds, out, protocols, url, target, key_file, args.sizes,
                        args.images_per_request)
    summary = out / "summary.csv"
    write_csv(rows, summary)
    png = plot_load(rows, out / "load.png", title=f"{time.strftime('%Y-%m-%d')}, polydet served, {where}")
    cols = ["protocol", "users", "images_per_request", "requests", "failures", "req_per_s", "img_per_s", "p50_ms",
            "p95_ms", "p99_ms"]
    print(f"\n{time.strftime('%Y-%m-%d')}, {where}, {args.seconds:g} s per step\n")
    print(table(rows, cols))
    print(f"\nwrote {summary}, {png} and locust's CSV/HTML per step in {out}")
    return 0


# -- server-side accounting (used by compare, the tuning and GPU scripts) ------------------------------
COUNTERS = ("ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds")
GAUGES = ("QueueTime", "WorkerThreadTime", "HandlerTime", "PredictionTime", "PolydetPreprocessMs",
          "PolydetInferenceMs", "PolydetPostprocessMs", "PolydetBatchSize")


def scrape(metrics_url: str) -> dict[str, float]:
    """TorchServe's Prometheus metrics, summed over label sets: {name: value}."""
    import requests

    out: dict[str, float] = {}
    for line in requests.get(f"{metrics_url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
    return out


class Sampler:
    """``fetch()`` once on entering (``first``), every ``period`` s from a thread while inside (``pages``; a
    failed call is skipped) and once on leaving (``last``): the window of a measurement."""

    def __init__(self, fetch, period: float = 1.0):
        self.fetch, self.period, self.pages = fetch, period, []

    def __enter__(self):
        import threading

        self.first, self._stop = self.fetch(), threading.Event()

        def sample():
            while not self._stop.wait(self.period):
                try:
                    self.pages.append(self.fetch())
                except Exception:  # noqa: BLE001 - a missed sample only widens the average
                    pass

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.last = self.fetch()
        return False


class ServerProbe(Sampler):
    """Where a served run's time and CPU go, over one measurement window.

    Counters (per-request means: frontend latency, queue time) come from the difference of two scrapes;
    gauges (the last batch's HandlerTime, stage times, batch size...) are sampled every ``period`` s and
    averaged (each scrape costs the frontend some CPU: keep the period long). CPU seconds of the Java frontend, of its Python workers and of this (client) process
    come from psutil over the same window.
    """

    def __init__(self, ts, period: float = 1.0):
        import psutil

        super().__init__(lambda: scrape(ts.metrics_url), period)
        self.ts = ts
        self.java = psutil.Process(ts.pid)
        self.me = psutil.Process()

    def _cpu(self):
        w = sum(sum(c.cpu_times()[:2]) for c in self.java.children(recursive=True))
        return {"frontend": sum(self.java.cpu_times()[:2]), "workers": w, "client": sum(self.me.cpu_times()[:2])}

    def __enter__(self):
        super().__enter__()
        self._cpu0 = self._cpu()
        return self

    def __exit__(self, *exc):
        super().__exit__(*exc)
        c1, cpu1 = self.last, self._cpu()
        d = {k: c1.get(k, 0.0) - self.first.get(k, 0.0) for k in COUNTERS}
        n = max(d["ts_inference_requests_total"], 1.0)
        self.result = {"served_requests": int(d["ts_inference_requests_total"]),
                       "frontend_latency_ms": d["ts_inference_latency_microseconds"] / n / 1e3,
                       "queue_ms": d["ts_queue_latency_microseconds"] / n / 1e3}
        for g in GAUGES:
            vals = [s[g] for s in self.pages if g in s]
            self.result[f"{g}_avg"] = sum(vals) / len(vals) if vals else float("nan")
        for k in cpu1:
            self.result[f"cpu_{k}_ms_per_req"] = (cpu1[k] - self._cpu0[k]) * 1e3 / n
        return False



def warm_up(ts, seconds: float, concurrency: int, grpc: bool = False) -> int:
    """Small JPEGs at ``concurrency`` for ``seconds`` (REST, and gRPC if asked): the JVM compiles its hot
    paths after thousands of requests, and a cold frontend spends CPU on that instead of on requests."""
    from .common import closed_loop, grpc_caller, rest_caller, sample_jpegs

    small = sample_jpegs(8, sizes=(320,))
    token = ts.tokens.inference
    n = closed_loop(rest_caller(ts.inference_url, token, small), concurrency, seconds, warmup_s=0)["requests"]
    if grpc:
        n += closed_loop(grpc_caller(ts.grpc_inference_target, token, small), concurrency, seconds / 2,
                         warmup_s=0)["requests"]
    return n
