"""`polydet bench compare` against the real TorchServe it starts: every way measured, nothing failed, the
latency paired by image and TorchServe's own round trip at batchSize 1 and under the served batching."""

from __future__ import annotations

import csv
import json
import math


def test_bench_compare_measures_in_process_rest_and_both_noop_round_trips(tmp_path):
    from polydet.bench import compare

    assert compare.main(["--weights", "random", "--imgsz", "64", "--protocols", "REST", "--naive", "",
                         "--rounds", "1", "--seconds", "2", "--latency-seconds", "2", "--warmup-seconds", "2",
                         "--pin-cpu", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert {(r["way"], r["metric"]) for r in rows} == {
        ("in-process", "throughput"), ("REST", "throughput"), ("in-process", "latency_c1"), ("REST", "latency_c1"),
        ("no-op REST", "latency_c1"), ("no-op REST batched", "latency_c1")}
    assert all(float(r["img_per_s"]) > 0 and r["failures"] == "0" for r in rows)
    by = {(r["way"], r["metric"]): r for r in rows}
    # the served model's batching (batchSize 4, maxBatchDelay 1 ms) makes a lone request wait for company
    assert float(by["no-op REST batched", "latency_c1"]["queue_ms"]) >= 0.9
    assert math.isfinite(float(by["REST", "latency_c1"]["added_paired_ms"]))
    summary = json.loads((tmp_path / "compare.json").read_text())["summary"]
    for key in ("REST_over_inprocess", "REST_added_paired_ms", "REST_added_paired_beyond_noop_ms",
                "REST_added_paired_beyond_batched_noop_ms", "noop_batched_REST_p50_ms"):
        assert math.isfinite(summary[key]), key
    assert "workers pinned one per CPU" in json.loads((tmp_path / "compare.json").read_text())["header"]
