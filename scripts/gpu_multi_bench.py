"""Several GPUs on one host (issue 18), run by scripts/gpu_multi_bench.sh on the device.

``serve``: builds the GPU archive (`polydet archive --gpu`'s TorchScript and batching) on the device and, per
row (1, 2, 4 GPUs: ``--gpus``), starts one TorchServe with number_of_gpu = the row's GPUs and the one-GPU
worker count x GPUs (polydet.serving.gpus, as `polydet serve --gpus N`), drives it with closed-loop REST
clients sending JPEG bytes (scripts/gpu_serving_bench.py's load), and records served img/s, p50/p99 and where
the time goes: the frontend (TorchServe's latency minus the handler, its CPU per request), the queue, and per
GPU the handler's decode / model / NMS times, batch fill, img/s (the PolydetImages counter), memory and
utilisation, all read from /metrics by the Device label. ``--fault``: on the largest row, one GPU's workers
are killed under load; the timeline shows the other GPUs answering and the killed ones coming back.
JSON to --out, a plot beside it (``plot`` redraws it). The non-GPU logic is importable (tests/unit/test_multi_gpu.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "src"), str(HERE)]  # polydet from src: the device has no install

from polydet.bench.serve import Sampler

# the per-device figures of a row: metric -> column (gauges averaged over the row's samples)
STAGES = {"PolydetPreprocessMs": "decode_ms", "PolydetInferenceMs": "model_ms", "PolydetPostprocessMs": "nms_ms",
          "HandlerTime": "handler_ms", "PolydetBatchSize": "batch_fill", "PolydetGpuMemoryMB": "gpu_mem_mb",
          "PolydetGpuUtilization": "gpu_util"}
COLS = ["gpus", "workers", "clients", "img_per_s", "speedup", "p50_ms", "p99_ms", "failures", "frontend_ms",
        "queue_ms", "decode_ms", "model_ms", "nms_ms", "batch_fill", "cpu_frontend_ms_per_req",
        "cpu_workers_ms_per_req", "img_per_s_by_gpu", "gpu_mem_mb", "gpu_util"]
TARGETS = {2: 1.8, 4: 3.5}  # the issue's: speed-up over one GPU
P99_TARGET_MS = 100.0
_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def parse_counts(spec: str) -> list[int]:
    """``--gpus 1,2,4``: the GPU counts of the rows, each >= 1, no repeats, in the given order."""
    try:
        counts = [int(c) for c in spec.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--gpus {spec!r}: expected GPU counts like 1,2,4") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise SystemExit(f"--gpus {spec!r}: expected distinct GPU counts >= 1 like 1,2,4")
    return counts


def gpu_sets(counts: list[int], visible: int) -> tuple[list, list[dict]]:
    """The rows' placements (the first N visible GPUs, as `polydet serve --gpus N`) and a skipped row for each
    count above ``visible`` (so the table says what could not run rather than leaving it out)."""
    from polydet.serving.gpus import parse_gpus

    run, skipped = [], []
    for n in counts:
        if n <= visible:
            run.append(parse_gpus(str(n), visible))
        else:
            skipped.append({"gpus": n, "skipped": f"only {visible} GPU(s) visible"})
    return run, skipped


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of each sample of a Prometheus text page."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            try:
                out.append((m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))))
            except ValueError:
                continue
    return out


def by_device(samples, name: str) -> dict[str, float]:
    """{Device: value} of one handler metric (summed over its other labels)."""
    out: dict[str, float] = {}
    for n, labels, v in samples:
        if n == name and "Device" in labels:
            out[labels["Device"]] = out.get(labels["Device"], 0.0) + v
    return out


def device_summary(pages: list, first, last, seconds: float) -> dict[str, dict]:
    """Per device: img/s from the PolydetImages counter between ``first`` and ``last`` (parsed pages), and each
    STAGES gauge averaged over ``pages`` (gauges hold the last batch's value: sampling averages them)."""
    c0, c1 = by_device(first, "PolydetImages"), by_device(last, "PolydetImages")
    out: dict[str, dict] = {d: {"img_per_s": (c1[d] - c0.get(d, 0.0)) / seconds} for d in c1}
    for metric, col in STAGES.items():
        vals: dict[str, list] = {}
        for page in pages:
            for d, v in by_device(page, metric).items():
                vals.setdefault(d, []).append(v)
        for d, vs in vals.items():
            out.setdefault(d, {})[col] = sum(vs) / len(vs)
    return out


def summarize(row: dict, devices: dict[str, dict]) -> dict:
    """A row's per-device figures as columns: stage times averaged over the GPUs (equal weights: each GPU
    serves about the same share), img/s, memory and utilisation listed per GPU."""
    gpus = sorted(d for d in devices if d != "cpu")
    out = dict(row)
    for col in ("decode_ms", "model_ms", "nms_ms", "handler_ms", "batch_fill"):
        vals = [devices[d][col] for d in gpus if col in devices[d]]
        out[col] = sum(vals) / len(vals) if vals else float("nan")
    for col in ("img_per_s", "gpu_mem_mb", "gpu_util"):
        key = "img_per_s_by_gpu" if col == "img_per_s" else col
        out[key] = " ".join(f"{devices[d][col]:.0f}" if col in devices[d] else "-" for d in gpus)
    return out


def with_speedup(rows: list[dict]) -> list[dict]:
    """Each measured row's img/s over the 1-GPU row's, and whether it meets the issue's targets."""
    one = next((r["img_per_s"] for r in rows if r.get("gpus") == 1 and "img_per_s" in r), None)
    out = []
    for r in rows:
        r = dict(r)
        if "img_per_s" in r and one:
            r["speedup"] = r["img_per_s"] / one
            r["meets_target"] = (r["speedup"] >= TARGETS.get(r["gpus"], 0.0)) and r["p99_ms"] <= P99_TARGET_MS
        out.append(r)
    return out


def pids_on_gpu(apps_csv: str, gpus_csv: str, physical: int) -> list[int]:
    """PIDs of the compute processes on GPU ``physical`` (nvidia-smi's index, which ignores CUDA_VISIBLE_DEVICES)
    from `nvidia-smi --query-compute-apps=pid,gpu_bus_id` and `--query-gpu=index,pci.bus_id` (csv, noheader)."""
    bus = {int(i): b.strip() for i, b in (line.split(",") for line in gpus_csv.strip().splitlines())}
    want = bus.get(physical)
    return [int(p) for p, b in (line.split(",") for line in apps_csv.strip().splitlines()) if b.strip() == want]


def physical_index(visible_index: int, environ=None) -> int:
    """nvidia-smi's index of the GPU CUDA calls ``cuda:visible_index`` (CUDA_VISIBLE_DEVICES maps them)."""
    env = os.environ if environ is None else environ
    ids = [e.strip() for e in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    return int(ids[visible_index]) if ids else visible_index


def rows_table(rows: list[dict]) -> str:
    from polydet.bench.common import table

    return table(rows, [c for c in ["skipped", *COLS, "meets_target"] if any(c in r for r in rows)])


# -- on the device ----------------------------------------------------------------------------------------
class DeviceProbe(Sampler):
    """Samples /metrics every ``period`` s over a measurement window: ``first``, ``pages`` and ``last`` (parsed
    pages) for device_summary."""

    def __init__(self, metrics_url: str, period: float = 1.0):
        super().__init__(self.scrape, period)
        self.url = metrics_url

    def scrape(self):
        import requests

        return parse_metrics(requests.get(f"{self.url}/metrics", timeout=10).text)


def build_store(work: Path, weights: str, base) -> Path:
    """polydet.mar as `polydet archive --gpu` builds it (TorchScript exported on the GPU); the workers and
    batching of each row are set when it is registered."""
    from polydet.serving.archive import GPU_FORMATS, ArchiveJob, build_archives

    job = ArchiveJob(work / "store", work / "build", weights=weights, formats=GPU_FORMATS, batching=base, device="cuda")
    build_archives(job)
    return job.store


def measure_row(store: Path, placement, args, pool: Path, vm: str) -> dict:
    """One TorchServe on the row's GPUs, loaded at ``args.clients_per_gpu`` x GPUs closed-loop clients."""
    from gpu_serving_bench import load

    from polydet.bench.serve import ServerProbe, ServeSettings, served

    workers = placement.workers(args.per_gpu)
    settings = ServeSettings(batch_size=args.batch_size, max_batch_delay=args.delay, workers=workers, threads=1,
                             job_queue_size=4096, gpu=True)
    clients = args.clients_per_gpu * placement.count
    with served(store, settings, properties={**placement.properties(), "vmargs": vm}, timeout=600) as ts:
        load(ts, "polydet", min(clients, 32), 3.0, args.per_request, args.procs, pool)  # warm the JVM and workers
        with ServerProbe(ts) as probe, DeviceProbe(ts.metrics_url) as dev:
            r = load(ts, "polydet", clients, args.seconds, args.per_request, args.procs, pool)
        devices = device_summary(dev.pages, dev.first, dev.last, args.seconds)
    pr = probe.result  # its gauge averages sum over the Device label: the per-device ones replace them
    row = {"gpus": placement.count, "devices": " ".join(placement.devices()), "workers": workers, **r,
           "frontend_ms": pr["frontend_latency_ms"], "queue_ms": pr["queue_ms"],
           **{k: v for k, v in pr.items() if k.startswith("cpu_")}, "by_device": devices}
    return summarize(row, devices)


def fault_step(store: Path, placement, args, pool: Path, vm: str) -> dict:
    """Under load on ``placement``, SIGKILL every worker of its last GPU at 1/3 of the window; a timeline of
    each GPU's img/s (PolydetImages) every 0.5 s, the clients' failures, and when the killed GPU serves again."""
    import signal
    import subprocess

    from gpu_serving_bench import load

    from polydet.bench.serve import ServeSettings, served

    victim = placement.device_ids[-1]
    settings = ServeSettings(batch_size=args.batch_size, max_batch_delay=args.delay,
                             workers=placement.workers(args.per_gpu), threads=1, job_queue_size=4096, gpu=True)
    with served(store, settings, properties={**placement.properties(), "vmargs": vm}, timeout=600) as ts:
        seconds, got = max(args.seconds * 2, 30.0), {}  # the kill at a third, the restart inside the window
        t = threading.Thread(target=lambda: got.update(load(ts, "polydet", args.clients_per_gpu * placement.count,
                                                            seconds, args.per_request, args.procs, pool)))
        t.start()
        probe, timeline, killed, t0 = DeviceProbe(ts.metrics_url), [], [], time.monotonic()
        prev = by_device(probe.scrape(), "PolydetImages")
        while t.is_alive():
            time.sleep(0.5)
            now = by_device(probe.scrape(), "PolydetImages")
            timeline.append({"t": round(time.monotonic() - t0, 2), **{d: (now[d] - prev.get(d, 0)) * 2 for d in now}})
            prev = now
            if not killed and time.monotonic() - t0 > 2.0 + seconds / 3:  # 2 s: the clients' warm-up
                q = lambda *a: subprocess.run(["nvidia-smi", *a, "--format=csv,noheader"],  # noqa: E731
                                              capture_output=True, text=True).stdout
                killed = pids_on_gpu(q("--query-compute-apps=pid,gpu_bus_id"), q("--query-gpu=index,pci.bus_id"),
                                     physical_index(victim))
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
                timeline[-1]["killed"] = killed
        t.join()
    return fault_verdict(timeline, f"cuda:{victim}", got)


def fault_verdict(timeline: list[dict], victim: str, load_result: dict) -> dict:
    """Did the other GPUs answer between the kill and the victim's return, and did the victim come back?"""
    k = next((i for i, s in enumerate(timeline) if "killed" in s), None)
    after = timeline[k + 1:] if k is not None else []
    back = next((s["t"] for s in after if s.get(victim, 0) > 0), None)
    outage = [s for s in after if back is None or s["t"] < back]
    others = sorted({d for s in timeline for d in s if d.startswith("cuda:") and d != victim})
    return {"victim": victim, "killed_pids": timeline[k]["killed"] if k is not None else [],
            "killed_at_s": timeline[k]["t"] if k is not None else None, "victim_back_at_s": back,
            "others_answered_in_outage": bool(outage) and all(all(s.get(d, 0) > 0 for d in others) for s in outage),
            "failures": load_result.get("failures"), "failure_reasons": load_result.get("failure_reasons", ""),
            "timeline": timeline}


def plot(rows: list[dict], out: Path, title: str) -> None:
    """Served img/s (with the linear ideal from one GPU) and p99 against GPUs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = sorted((r for r in rows if "img_per_s" in r), key=lambda r: r["gpus"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    g = [r["gpus"] for r in rs]
    a.plot(g, [r["img_per_s"] for r in rs], "o-", label="served")
    if rs and rs[0]["gpus"] == 1:
        a.plot(g, [rs[0]["img_per_s"] * n for n in g], "k:", label="linear from 1 GPU")
    a.set(xlabel="GPUs", ylabel="images/s", title=title, xticks=g)
    a.legend(fontsize=8)
    b.plot(g, [r["p99_ms"] for r in rs], "o-")
    b.axhline(P99_TARGET_MS, color="r", ls=":", label=f"target {P99_TARGET_MS:.0f} ms")
    b.set(xlabel="GPUs", ylabel="p99 per request (ms)", xticks=g)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def make_parser() -> argparse.ArgumentParser:
    from polydet.serving.archive import GPU_BATCHING

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["serve", "plot"], help="plot: --out JSON -> PNG beside it")
    p.add_argument("--gpus", default="1,2,4", help="GPU counts, one row each (default %(default)s)")
    p.add_argument("--per-gpu", type=int, default=GPU_BATCHING.min_workers, help="workers per GPU (default: "
                   "`polydet archive --gpu`'s, %(default)s)")
    p.add_argument("--batch-size", type=int, default=GPU_BATCHING.batch_size)
    p.add_argument("--delay", type=int, default=GPU_BATCHING.max_batch_delay, help="maxBatchDelay, ms")
    p.add_argument("--clients-per-gpu", type=int, default=128, help="closed-loop clients per GPU of the row")
    p.add_argument("--per-request", type=int, default=1, help="JPEGs per request (1: raw bytes)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--procs", type=int, default=8, help="client processes")
    p.add_argument("--fault", action="store_true", help="then the fault step on the largest row")
    p.add_argument("--weights", default=str(ROOT / "weights/polydet_main_area.pt"))
    p.add_argument("--work", default="/tmp/gm")
    p.add_argument("--out", required=True, help="JSON: {rows, fault}")
    p.add_argument("--title", default="polydet served on several GPUs")
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    out = Path(args.out)
    if args.what == "plot":
        plot(json.loads(out.read_text())["rows"], out.with_suffix(".png"), args.title)
        return 0
    import base64

    from gpu_serving_bench import photos

    from polydet.serving.archive import GPU_BATCHING
    from polydet.serving.gpus import visible_gpus

    counts = parse_counts(args.gpus)
    run, skipped = gpu_sets(counts, visible_gpus())
    if not run:
        print(f"gpu_multi_bench: {skipped}", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "pool.json"
    pool.write_text(json.dumps([base64.b64encode(j).decode() for j in photos(16, seed=1)]))
    store = build_store(work, args.weights, GPU_BATCHING)
    vm = f"-Xmx8g -XX:+ExitOnOutOfMemoryError -Dlog4j.configurationFile={ROOT / 'src/polydet/serving/log4j2.xml'}"
    result: dict = {"host": host(), "rows": list(skipped), "fault": None}
    for placement in run:
        result["rows"] = with_speedup([*result["rows"], measure_row(store, placement, args, pool, vm)])
        out.write_text(json.dumps(result, indent=1))
        print(result["rows"][-1], flush=True)
    if args.fault:
        largest = max(run, key=lambda p: p.count)
        result["fault"] = fault_step(store, largest, args, pool, vm) if largest.count > 1 else "needs 2 GPUs"
        out.write_text(json.dumps(result, indent=1))
    plot(result["rows"], out.with_suffix(".png"), args.title)
    print(rows_table(result["rows"]))
    if isinstance(result["fault"], dict):
        print({k: v for k, v in result["fault"].items() if k != "timeline"})
    return 0


def host() -> dict:
    import torch

    n = torch.cuda.device_count()
    return {"gpus": [torch.cuda.get_device_name(i) for i in range(n)], "cpus": os.cpu_count(),
            "torch": torch.__version__, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}


if __name__ == "__main__":
    sys.exit(main())
