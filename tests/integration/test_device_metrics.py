"""Issue 18 item 2 on a real TorchServe (CPU): the handler's metrics carry the worker's Device, the names the
dashboards and alerts query are unchanged, and the images counter counts exactly what was sent."""

from __future__ import annotations

import re
import time

import requests
from serving_helpers import auth

from polydet.serving.service import GPU_METRICS, METRICS

LINE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def series(server) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample on /metrics."""
    out = []
    for line in requests.get(f"{server.metrics_url}/metrics", timeout=10).text.splitlines():
        m = LINE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def value(samples, name: str, **labels) -> float | None:
    found = [v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    return sum(found) if found else None


def test_handler_metrics_have_the_device_dimension_and_their_old_names(server, jpeg):
    head = {**auth(server.tokens.inference), "Content-Type": "application/octet-stream"}
    url = f"{server.inference_url}/predictions/polydet"
    before = series(server)
    codes = [requests.post(url, data=body, headers=head, timeout=60).status_code
             for body in (jpeg, jpeg, b"not an image", jpeg)]
    assert codes == [200, 200, 400, 200]
    images0 = value(before, METRICS["images"], ModelName="polydet") or 0.0
    bad0 = value(before, METRICS["bad"], ModelName="polydet") or 0.0
    deadline = time.monotonic() + 20  # the frontend exports what it parses from the workers' logs
    while True:
        samples = series(server)
        if value(samples, METRICS["images"], ModelName="polydet", Device="cpu") == images0 + 4:
            break
        assert time.monotonic() < deadline, [s for s in samples if s[0] == METRICS["images"]]
        time.sleep(0.5)
    assert value(samples, METRICS["bad"], ModelName="polydet", Device="cpu") == bad0 + 1
    for name in METRICS.values():  # every old name, now with Device="cpu" (histograms as _bucket/_sum/_count)
        got = [lab for n, lab, _ in samples if n in (name, f"{name}_count") and lab.get("ModelName") == "polydet"]
        assert got, f"{name} missing from /metrics"
        assert {lab.get("Device") for lab in got} == {"cpu"}, (name, got)
    hist0 = value(before, "PolydetHandlerSeconds_count", ModelName="polydet") or 0.0
    # one per batch: each of the 4 sequential requests was a batch of its own
    assert value(samples, "PolydetHandlerSeconds_count", ModelName="polydet", Device="cpu") == hist0 + 4
    # TorchServe's own metrics keep their labels (the adapter and alert queries use them)
    assert value(samples, "ts_inference_requests_total", model_name="polydet") >= 4
    assert not [n for n, _, _ in samples if n in GPU_METRICS.values()], "GPU metrics from a CPU worker"
