"""polydet served by TorchServe on a GPU host under 64-256 local REST clients, next to a naive handler.

Run by scripts/gpu_serve_bench.sh (which installs TorchServe and Java there). The store must hold
polydet.mar (the package's handler) and, for the comparison, polydet_naive.mar
(benchmarks/naive_handler.py: PIL, one image at a time, shapely NMS), both built on the CPU from the same
artifact. Each is registered with the same workers / batchSize / maxBatchDelay and loaded by closed-loop
clients spread over several processes; TorchServe's metrics and the processes' CPU time say where the
time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.bench.common import REPO, multi_closed_loop, table  # noqa: E402
from polydet.bench.serve import ServerProbe, ServeSettings, served  # noqa: E402
from polydet.serving.client import RestClient  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--clients", default="64,128,256")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batch-delay", type=int, default=5)
    p.add_argument("--procs", type=int, default=6, help="client processes")
    p.add_argument("--naive-clients", default="64", help="'' skips the naive handler")
    p.add_argument("--cpu", action="store_true", help="CPU workers (a smoke test off the GPU host)")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    s = ServeSettings(batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, workers=args.workers,
                      threads=1, job_queue_size=2048, gpu=not args.cpu)
    vm = f"-Xmx8g -XX:+ExitOnOutOfMemoryError -Dlog4j.configurationFile={REPO / 'src/polydet/serving/log4j2.xml'}"
    rows = []

    def save():
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))

    t = time.perf_counter()
    with served(args.store, s, properties={"vmargs": vm}) as ts:
        print(f"TorchServe pid {ts.pid}, {s.label()}, READY in {time.perf_counter() - t:.0f} s", flush=True)
        token = ts.tokens.inference
        for c in [int(v) for v in args.clients.split(",")]:
            with ServerProbe(ts) as probe:
                r = multi_closed_loop(ts.inference_url, token, c, args.seconds, args.procs)
            rows.append({"handler": "polydet", **r, **probe.result})
            print(rows[-1], flush=True)
            save()
        if args.naive_clients:
            client = RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens, timeout=300)
            client.unregister("polydet")  # frees its workers' CPU and GPU memory
            client.register("polydet_naive.mar", model_name="naive", initial_workers=args.workers,
                            batch_size=args.batch_size, max_batch_delay=args.max_batch_delay, response_timeout=120)
            ts.wait_ready("naive")
            for c in [int(v) for v in args.naive_clients.split(",")]:
                with ServerProbe(ts) as probe:
                    r = multi_closed_loop(ts.inference_url, token, c, args.seconds, args.procs, model="naive")
                # The naive handler records no Polydet*/HandlerTime gauges: drop the stale ones left by polydet.
                pr = {k: v for k, v in probe.result.items() if not k.startswith(("Polydet", "HandlerTime"))}
                rows.append({"handler": "naive", **r, **pr})
                print(rows[-1], flush=True)
                save()
    import torch

    print(f"\n{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}, {os.cpu_count()} CPUs; {s.label()}; {args.seconds:g} s per step\n")
    print(table(rows, ["handler", "clients", "req_per_s", "p50_ms", "p99_ms", "failures", "queue_ms",
                       "frontend_latency_ms", "HandlerTime_avg", "PolydetPreprocessMs_avg", "PolydetInferenceMs_avg",
                       "PolydetPostprocessMs_avg", "PolydetBatchSize_avg", "cpu_frontend_ms_per_req",
                       "cpu_workers_ms_per_req", "cpu_clients_ms_per_req"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
