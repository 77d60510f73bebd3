"""Logs at a rate a production server keeps, rolled over by size without losing lines.

Against a real TorchServe with the shipped log config: per request only the access log grows (TorchServe
0.12.0's own per-request INFO lines and the echo of every metric line are filtered out, the metrics still
reach Prometheus), and with a small size limit the access log rolls over several times in one day into
numbered files (the file pattern has %i: without it a second roll-over on one day would reuse the first's
name), holding every request's line.
"""

from __future__ import annotations

import gzip
import time

import pytest
import requests
from bad_inputs import OCTET, jpeg, page
from reliability_helpers import start_server
from serving_helpers import auth

N = 60


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory, store):
    mp = pytest.MonkeyPatch()
    mp.setenv("POLYDET_LOG_MAX_SIZE", "1 KB")  # read by log4j at start: ~11 access lines a file
    mp.setenv("POLYDET_LOG_FILES", "100")
    try:
        ts = start_server(tmp_path_factory, store)
    finally:
        mp.undo()
    yield ts
    ts.stop()


def _sizes(ts) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in ts.log_dir.glob("*.log")}


def test_per_request_logging_is_one_access_line_and_rolls_over_by_size(small_logs):
    ts = small_logs
    body = jpeg(page())
    headers = {**OCTET, **auth(ts.tokens.inference)}
    assert requests.post(f"{ts.inference_url}/predictions/polydet", data=body, headers=headers, timeout=60).ok
    time.sleep(1.0)
    before = _sizes(ts)
    for _ in range(N):
        r = requests.post(f"{ts.inference_url}/predictions/polydet", data=body, headers=headers, timeout=60)
        assert r.status_code == 200
    time.sleep(2.0)  # log4j flushes asynchronously to the files
    after = _sizes(ts)
    for name in ("ts_log.log", "model_log.log", "metrics.log"):
        # a new file after a roll-over starts from 0: growth is what it holds now beyond what it held
        grown = after.get(name, 0) - before.get(name, 0)
        assert grown <= 0 or grown < 200, (name, grown)  # nothing per request (a stray startup line at most)
    rolled = sorted(ts.log_dir.glob("access_log.*.log.gz"))
    assert len(rolled) >= 3, [p.name for p in ts.log_dir.iterdir()]
    indices = sorted(int(p.name.split(".")[-3]) for p in rolled)
    assert indices == list(range(1, len(rolled) + 1))  # one day, numbered roll-overs, none overwritten
    lines = [ln for p in rolled for ln in gzip.decompress(p.read_bytes()).decode().splitlines()]
    lines += (ts.log_dir / "access_log.log").read_text().splitlines()
    posts = [ln for ln in lines if '"POST /predictions/polydet HTTP/1.1" 200' in ln]
    assert len(posts) == N + 1  # every request's line, the first one included


def test_metrics_still_reach_prometheus_with_the_lines_filtered(small_logs):
    text = requests.get(f"{small_logs.metrics_url}/metrics", timeout=30).text
    assert "PolydetInferenceMs" in text and "ts_inference_requests_total" in text
