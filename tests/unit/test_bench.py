"""Smoke tests of every ``polydet bench`` entry with tiny settings: each must write real rows.

No TorchServe here: ``compare`` runs with --skip-served, and ``serve`` (locust) runs against a small
stub HTTP server that answers like TorchServe (token check, output-contract bodies, a 503 now and then).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from polydet.bench import common

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_percentiles_nearest_rank():
    lat = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = common.percentiles(lat)
    assert p == pytest.approx({"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0})
    assert common.percentiles([0.004]) == pytest.approx({"p50_ms": 4.0, "p95_ms": 4.0, "p99_ms": 4.0})


def test_closed_loop_counts_successes_and_reasons():
    def make(i):
        n = [0]

        def call():
            n[0] += 1
            time.sleep(0.005)
            return None if n[0] % 3 else "HTTP 503: busy"

        return call

    r = common.closed_loop(make, concurrency=2, seconds=0.5, warmup_s=0.0)
    assert r["requests"] > 20 and r["failures"] > 5
    assert r["failures"] == pytest.approx(r["requests"] / 2, rel=0.35)
    assert r["failure_reasons"].endswith("x HTTP 503: busy")
    assert 5.0 <= r["p50_ms"] < 100 and r["req_per_s"] == pytest.approx(r["requests"] / 0.5, rel=0.3)


def test_sample_jpegs_sizes():
    import cv2
    import numpy as np

    jpegs = common.sample_jpegs(4, sizes=(320, 640))
    shapes = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).shape[:2] for b in jpegs]
    assert [max(s) for s in shapes] == [320, 640, 320, 640]
    assert jpegs == common.sample_jpegs(4, sizes=(320, 640))  # reproducible


def test_run_and_report_runs_in_a_temporary_folder_and_writes_json_and_markdown(tmp_path, capsys):
    seen = []

    def run(args, workdir):
        seen.append(workdir)
        assert workdir.is_dir() and list(workdir.iterdir()) == []
        return {"n": args.n, "rows": {"a": 1.5}}

    args = type("Args", (), {"n": 3, "out": tmp_path / "deep" / "r"})()
    assert common.run_and_report(args, run, lambda res: f"| n | {res['n']} |\n") == 0
    assert not seen[0].exists()  # removed once run returns
    assert json.loads((tmp_path / "deep" / "r.json").read_text()) == {"n": 3, "rows": {"a": 1.5}}
    assert (tmp_path / "deep" / "r.md").read_text() == "| n | 3 |\n"
    assert capsys.readouterr().out == "| n | 3 |\n\n"


def test_bench_pipeline_rows(tmp_path):
    from polydet.bench import pipeline

    out = tmp_path / "p.json"
    assert pipeline.main(["--backends", "torchscript", "--sizes", "64", "--batches", "1,2", "--seconds", "0.2",
                          "--weights", "random", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["imgsz"], r["batch"]) for r in rows] == [("torchscript", 64, 1), ("torchscript", 64, 2)]
    for r in rows:
        for k in ("decode", "letterbox", "inference", "nms", "scale_back"):
            assert r[k] > 0
        assert r["img_per_s"] > 0


def test_bench_nms_rows_and_plot(tmp_path):
    pytest.importorskip("shapely")
    from polydet.bench import nms

    assert nms.main(["--sizes", "40", "200", "--repeat", "2", "--ref-repeat", "1", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "nms.csv")
    assert [int(r["candidates"]) for r in rows] == [40, 200]
    for r in rows:
        assert 1 <= int(r["kept"]) <= int(r["candidates"])
        assert float(r["ratio"]) == pytest.approx(float(r["shapely_ms"]) / float(r["polydet_ms"]), rel=1e-6)
    assert _is_png(tmp_path / "nms.png")


def test_nms_plot_redrawn_from_the_json_labels_both_paths(tmp_path, monkeypatch):
    """``python -m polydet.bench.plots DIR`` redraws nms.png from nms.json; the legend names the path
    that ran by default (the rows' ``backend``) and the torch path."""
    pytest.importorskip("matplotlib")
    from polydet.bench import plots

    rows = [{"candidates": n, "kept": n // 20, "backend": "numba", "polydet_ms": n * 6e-4, "torch_ms": n * 1e-2,
             "shapely_ms": n * 0.4, "shapely_cached_ms": n * 0.14} for n in (100, 1000)]
    (tmp_path / "nms.json").write_text(json.dumps({"header": "2026-11-22 19:18, torch 2.13.0+cpu", "rows": rows}))
    labels = []
    real_legend = plots._plt().Axes.legend

    def spy(ax, *a, **k):
        labels.extend(ax.get_legend_handles_labels()[1])
        return real_legend(ax, *a, **k)

    monkeypatch.setattr(plots._plt().Axes, "legend", spy)
    assert plots.main([str(tmp_path)]) == 0
    assert _is_png(tmp_path / "nms.png")
    assert labels == ["polygon_nms, default (auto: numba path)", 'polygon_nms, torch path (backend="torch"; CUDA\'s)',
                      "shapely loop (the seeds' way)", "shapely loop, hulls built once"]
    assert plots.nms_title("2026-11-22 19:18, torch", rows) == "2026-11-22 19:18: polygon_nms on its numba path, 1 image"


def test_bench_compare_in_process_and_naive(tmp_path):
    pytest.importorskip("shapely")
    from polydet.bench import compare

    assert compare.main(["--skip-served", "--imgsz", "64", "--workers", "1", "--threads", "1", "--seconds", "0.5",
                         "--latency-seconds", "0.3", "--rounds", "1", "--naive", "64:0.25", "--naive-seconds", "0.3",
                         "--weights", "random", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "compare.csv")
    assert [(r["way"], r["metric"]) for r in rows] == [
        ("in-process", "throughput"), ("in-process", "latency_c1"),
        ("naive 64 c0.25", "throughput"), ("ours b1 64 c0.25", "throughput")]
    assert all(float(r["img_per_s"]) > 0 and float(r["p50_ms"]) > 0 for r in rows)
    summary = json.loads((tmp_path / "compare.json").read_text())["summary"]
    assert set(summary) == {"ours_vs_naive_64_c0.25"} and summary["ours_vs_naive_64_c0.25"] > 0
    assert _is_png(tmp_path / "compare.png")


class _StubTorchServe(BaseHTTPRequestHandler):
    """Answers POST /predictions/polydet like TorchServe: 400 without the token, every 4th request 503."""

    protocol_version = "HTTP/1.1"  # keep-alive, as TorchServe's netty
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    token = "tok"
    count = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - http.server's naming
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        with self.lock:
            type(self).count += 1
            k = self.count
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            code, body = 400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}
        elif self.path != "/predictions/polydet" or n == 0:
            code, body = 404, {"code": 404, "message": "no such model"}
        elif k % 4 == 0:
            code, body = 503, {"code": 503, "message": "Model polydet has no worker to serve inference request"}
        else:
            code, body = 200, {"width": 10, "height": 10, "detections": []}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _torchserve_metrics(n: int) -> str:
    """TorchServe's /metrics at its n-th scrape: 4(n-1) requests that took 2 ms each in the frontend and 0.1 ms
    in the queue, HandlerTime n on each of two label sets."""
    return (f"# TYPE ts_inference_requests_total counter\n"
            f'ts_inference_requests_total{{model_name="polydet",model_version="default",hostname="h",}} {4 * (n - 1)}\n'
            f'ts_inference_latency_microseconds{{model_name="polydet",hostname="h",}} {8000.0 * (n - 1)}\n'
            f'ts_queue_latency_microseconds{{model_name="polydet",hostname="h",}} {400.0 * (n - 1)}\n'
            f'HandlerTime{{Level="Model",ModelName="polydet",}} {float(n)}\n'
            f'HandlerTime{{Level="Host",ModelName="polydet",}} {float(n)}\n')


def test_server_probe_diffs_counters_and_averages_sampled_gauges_over_its_window():
    import os

    from metrics_stub import metrics_endpoint, wait_for_scrapes

    from polydet.bench.serve import ServerProbe

    with metrics_endpoint(_torchserve_metrics) as (url, served):
        ts = type("TS", (), {"pid": os.getpid(), "metrics_url": url})()  # this process stands in for the JVM's CPU
        with ServerProbe(ts, period=0.05) as probe:
            wait_for_scrapes(served, 5)
    n = len(served)  # the first on entering, n - 2 samples, the last on leaving
    assert n >= 5 and set(served) == {"/metrics"}
    r = probe.result
    assert r["served_requests"] == 4 * (n - 1)
    assert r["frontend_latency_ms"] == pytest.approx(2.0) and r["queue_ms"] == pytest.approx(0.1)
    assert r["HandlerTime_avg"] == pytest.approx(sum(2.0 * k for k in range(2, n)) / (n - 2))
    assert r["PredictionTime_avg"] != r["PredictionTime_avg"]  # never on the page: NaN, not 0
    assert {k for k in r if k.startswith("cpu_")} == {"cpu_frontend_ms_per_req", "cpu_workers_ms_per_req",
                                                      "cpu_client_ms_per_req"}


def test_bench_serve_locust_against_stub(tmp_path):
    import importlib.util

    if importlib.util.find_spec("locust") is None:  # not importorskip: importing locust here recurses
        pytest.skip("locust is not installed (pip install 'polydet[bench]')")

    _StubTorchServe.count = 0
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "tok"}, "management": {"key": "m"}, "API": {"key": "a"}}))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _StubTorchServe)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        # locust (gevent) must be imported before ssl is: in a pytest process that already imported
        # requests it recurses, so the runner goes in a fresh interpreter (as users run it).
        subprocess.run([sys.executable, "-m", "polydet.cli", "bench", "serve", "--url", url, "--key-file",
                        str(key_file), "--users", "1,2", "--seconds", "3", "--sizes", "320,640", "--out",
                        str(tmp_path / "lt")], check=True, timeout=240, capture_output=True)
    finally:
        httpd.shutdown()
        httpd.server_close()
    rows = _rows(tmp_path / "lt" / "summary.csv")
    assert [(r["protocol"], int(r["users"])) for r in rows] == [("rest", 1), ("rest", 2)]
    n, bad = sum(int(r["requests"]) for r in rows), sum(int(r["failures"]) for r in rows)
    assert n >= 4 and n <= _StubTorchServe.count <= n + 3  # all answers counted (bar those in flight at a stop)
    assert abs(bad - n / 4) <= 2  # the stub's every 4th answer is a 503, counted with its reason
    assert any("HTTP 503" in r["failure_reasons"] and "no worker" in r["failure_reasons"] for r in rows)
    # the stub answers in well under a millisecond, which locust's percentiles may round to 0
    assert all(float(r["p50_ms"]) >= 0 and float(r["req_per_s"]) > 0 for r in rows)
    assert _is_png(tmp_path / "lt" / "load.png")
    html = (tmp_path / "lt" / "restuser_u2.html").read_text()
    assert "REST 320px" in html and "REST 640px" in html  # locust's report, one line per image size
    assert (tmp_path / "lt" / "restuser_u2_stats.csv").exists()


def test_the_naive_baseline_finds_what_the_pipeline_finds_and_answers_plain_json():
    """The seeds' way (PIL, one image, shapely NMS) on the bundled weights: the same detection as the pipeline
    on a sample (letterbox differs: PIL centred vs cv2, so a few px), and a body json.dumps can write, as
    benchmarks/naive_handler.py does (it did not: numpy float32 corners, found on the GPU run)."""
    from polydet.backends import load_backend
    from polydet.bench.naive import NaiveDetector
    from polydet.pipeline import Detector

    repo = Path(__file__).resolve().parents[2]
    weights = repo / "weights" / "polydet_main_area.pt"
    if not weights.is_file():
        pytest.skip("bundled weights not in this checkout")
    backend = load_backend(weights)
    body = (repo / "examples" / "sample_0.jpg").read_bytes()
    naive = json.loads(json.dumps(NaiveDetector(backend).detect_one(body)))
    ours = Detector(backend).detect([body])[0].to_dict()
    assert (naive["width"], naive["height"]) == (ours["width"], ours["height"])
    assert [d["class_name"] for d in naive["detections"]] == [d["class_name"] for d in ours["detections"]] != []
    for a, b in zip(naive["detections"], ours["detections"]):
        assert abs(a["score"] - b["score"]) < 0.05
        assert max(abs(p - q) for pa, pb in zip(a["polygon"], b["polygon"]) for p, q in zip(pa, pb)) < 8
