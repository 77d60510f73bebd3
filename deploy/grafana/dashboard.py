"""The polydet Grafana dashboard, generated with grafanalib (pinned in pyproject's deploy extra).

    python deploy/grafana/dashboard.py            # writes deploy/grafana/polydet-dashboard.json
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON differs from this output

Every query names its metrics as ``NAME{labels}`` (tests/integration/test_autoscale_metrics.py extracts them
that way and finds each on a real TorchServe's /metrics). Metric facts (TorchServe 0.12.0 with polydet's
metrics.yaml): ``ts_*`` counters carry ``model_name``; polydet's handler metrics carry ``ModelName``;
``Requests5XX`` and ``WorkerLoadTime`` are per host (every API; a worker's name holds its model). TorchServe
exports no per-request latency distribution: p50/p99 are of the handler's time per batch
(``PolydetHandlerSeconds``, a histogram the handler records), the end-to-end figure is the exact mean from
the latency counter. Queue depth and in-flight are Little's law over TorchServe's counters
(deploy/prometheus/adapter-rules.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

OUT = Path(__file__).with_name("polydet-dashboard.json")
MODEL = "polydet"
RATE = "[$__rate_interval]"
DS = "${DS_PROMETHEUS}"


def _q(model: str) -> dict[str, list[tuple[str, str]]]:
    """Panel title -> [(PromQL, legend)]."""
    ts, m = f'{{model_name="{model}"}}', f'{{ModelName="{model}"}}'
    requests = f"sum(rate(ts_inference_requests_total{ts}{RATE}))"
    return {
        "Throughput (requests/s)": [(requests, "requests/s"),
                                    (f"sum by (pod) (rate(ts_inference_requests_total{ts}{RATE}))", "{{pod}}")],
        "Latency": [
            (f"sum(rate(ts_inference_latency_microseconds{ts}{RATE})) / {requests} / 1000",
             "mean end to end in TorchServe, ms (REST)"),
            (f"histogram_quantile(0.5, sum by (le) (rate(PolydetHandlerSeconds_bucket{m}{RATE}))) * 1000",
             "handler per batch p50, ms"),
            (f"histogram_quantile(0.99, sum by (le) (rate(PolydetHandlerSeconds_bucket{m}{RATE}))) * 1000",
             "handler per batch p99, ms")],
        "Queue": [(f"sum by (pod) (rate(ts_queue_latency_microseconds{ts}{RATE})) / 1e6", "waiting {{pod}}"),
                  (f"sum by (pod) (rate(ts_inference_latency_microseconds{ts}{RATE})) / 1e6", "in flight {{pod}}"),
                  (f"sum(rate(ts_queue_latency_microseconds{ts}{RATE})) / {requests} / 1000",
                   "mean queue wait, ms")],
        "Stage times per batch (ms)": [(f"avg(PolydetPreprocessMs{m})", "decode + letterbox"),
                                       (f"avg(PolydetInferenceMs{m})", "model"),
                                       (f"avg(PolydetPostprocessMs{m})", "NMS + scale back"),
                                       (f"avg(HandlerTime{m})", "handler")],
        "Batch fill (requests per batch)": [(f"avg(PolydetBatchSize{m})", "batch size")],
        "Bad requests and errors (share of requests)": [
            (f"sum(rate(PolydetBadRequests{m}{RATE})) / {requests}", "4xx from the handler"),
            (f'sum(rate(Requests5XX{{Level="Host"}}{RATE})) / {requests}', "5xx, every API")],
        "Worker restarts (10 min)": [
            (f'sum(changes(WorkerLoadTime{{WorkerName=~"W-.*-{model}_.*"}}[10m]))', "worker (re)loads")],
    }


UNITS = {"Throughput (requests/s)": "reqps", "Latency": "ms", "Queue": "short", "Stage times per batch (ms)": "ms",
         "Batch fill (requests per batch)": "short", "Bad requests and errors (share of requests)": "percentunit",
         "Worker restarts (10 min)": "short"}


def queries(model: str = MODEL) -> list[str]:
    return [expr for targets in _q(model).values() for expr, _ in targets]


def dashboard(model: str = MODEL) -> g.Dashboard:
    panels = []
    for i, (title, targets) in enumerate(_q(model).items()):
        panels.append(g.TimeSeries(
            title=title, dataSource=DS, unit=UNITS[title],
            targets=[g.Target(expr=e, legendFormat=legend, refId=chr(ord("A") + j))
                     for j, (e, legend) in enumerate(targets)],
            gridPos=g.GridPos(h=8, w=12, x=12 * (i % 2), y=8 * (i // 2))))
    ds = g.Template(name="DS_PROMETHEUS", label="Prometheus", type="datasource", query="prometheus", default="")
    return g.Dashboard(title=f"polydet ({model})", uid=f"polydet-{model}", tags=["polydet", "torchserve"],
                       timezone="utc", refresh="30s", panels=panels, templating=g.Templating(list=[ds])).auto_panel_ids()


def render(model: str = MODEL) -> str:
    return json.dumps(dashboard(model).to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=MODEL)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    a = p.parse_args(argv)
    text = render(a.model)
    if a.check:
        same = a.out.is_file() and a.out.read_text() == text
        print(f"{a.out}: {'up to date' if same else 'differs from the generator: regenerate it'}")
        return 0 if same else 1
    a.out.write_text(text)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
