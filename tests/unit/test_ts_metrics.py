"""MetricsRecorder writes the very lines TorchServe 0.12.0's own metrics API writes for the same batch (the
oracle: ts's MetricsCacheYamlImpl.add_* on a second cache), only the second of its timestamp may differ."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ts", reason="torchserve is not installed (pip install 'polydet[serve]')")

from ts.metrics.dimension import Dimension  # noqa: E402
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl  # noqa: E402
from ts.metrics.metric_type_enum import MetricTypes  # noqa: E402

from polydet.results import Timings  # noqa: E402
from polydet.serving.properties import METRICS_YAML  # noqa: E402
from polydet.serving.service import METRICS, BatchStats  # noqa: E402
from polydet.serving.ts_metrics import MetricsRecorder  # noqa: E402

STAMP = re.compile(r"(#hostname:[^,|]+),\d+")


class Ctx:
    """The two attributes of ts.context.Context the recorder reads."""

    def __init__(self, yaml_path: Path, request_ids):
        self.model_name = "polydet"
        self.metrics = MetricsCacheYamlImpl(str(yaml_path))
        self.metrics.initialize_cache()
        self.metrics.model_name = "polydet"
        self.metrics.request_ids = request_ids


def ts_lines(ctx: Ctx, stats: BatchStats, handler_ms: float) -> None:
    """The batch's metrics through ts's own API, as the handler recorded them before."""
    def dims():
        return [Dimension("Device", "cpu"), Dimension("ModelName", "polydet"), Dimension("Level", "Model")]

    m = ctx.metrics
    stages = ("preprocess", "inference", "postprocess") if stats.images else ()
    for key, ms in {"handler": handler_ms, **{k: getattr(stats.timings, k) for k in stages}}.items():
        m.add_time(METRICS[key], round(ms, 3), None, "ms", dims())
    m.add_metric("PolydetHandlerSeconds", handler_ms / 1e3, "s", None, dims(), MetricTypes.HISTOGRAM)
    for key, value in {"batch": stats.batch, "detections": stats.detections}.items():
        if value is not None:
            m.add_metric(METRICS[key], value, "count", None, dims(), MetricTypes.GAUGE)
    m.add_counter(METRICS["images"], stats.batch, None, dims())
    if stats.bad:
        m.add_counter(METRICS["bad"], stats.bad, None, dims())


def captured(caplog, fn) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        fn()
    return sorted(STAMP.sub(r"\1,T", r.getMessage()) for r in caplog.records if "[METRICS]" in r.getMessage())


BATCHES = [
    (BatchStats(Timings(10.1234, 30.4567, 2.7891), 3, 3, 0, 5 / 3), 45.6789),
    (BatchStats(Timings(0.5, 0.0, 0.25), 2, 0, 2, None), 0.9),  # only bad requests: no stage times
    (BatchStats(Timings(1.0, 2.0, 3.0), 4, 3, 1, 2.0), 7.0),
]


@pytest.mark.parametrize("request_ids", [{0: "a-1", 1: "b-2", 2: "c-3"}, {0: "x"}, None])
@pytest.mark.parametrize("stats,handler_ms", BATCHES)
def test_lines_equal_ts_own(caplog, stats, handler_ms, request_ids):
    ours, oracle = Ctx(METRICS_YAML, request_ids), Ctx(METRICS_YAML, request_ids)
    rec = MetricsRecorder("cpu")
    want = captured(caplog, lambda: ts_lines(oracle, stats, handler_ms))
    # handler time, histogram, batch size, images; the stage times, detections and bad requests when any
    assert len(want) == 4 + 3 * bool(stats.images) + (stats.detections is not None) + bool(stats.bad)
    for _ in range(2):  # the second batch uses the heads built by the first
        assert captured(caplog, lambda: rec.record(ours, stats, handler_ms)) == want
    assert sorted(ours.metrics.cache_keys()) == sorted(oracle.metrics.cache_keys())


def test_a_metric_the_cache_does_not_declare_goes_through_ts(tmp_path, caplog):
    """metrics.yaml without PolydetDetectionsPerImage (ts adds it to the cache as it is recorded) or with
    other dimensions for PolydetBatchSize (ts logs its error): the same lines as ts's own path."""
    spec = yaml.safe_load(METRICS_YAML.read_text())
    gauges = spec["model_metrics"]["gauge"]
    spec["model_metrics"]["gauge"] = [g for g in gauges if g["name"] != METRICS["detections"]]
    for g in spec["model_metrics"]["gauge"]:
        if g["name"] == METRICS["batch"]:
            g["dimensions"] = ["ModelName", "Level"]
    path = tmp_path / "metrics.yaml"
    path.write_text(yaml.safe_dump(spec))
    stats, handler_ms = BATCHES[0]
    ids = {0: "r0", 1: "r1"}
    ours, oracle = Ctx(path, ids), Ctx(path, ids)
    want = captured(caplog, lambda: ts_lines(oracle, stats, handler_ms))
    assert any(METRICS["detections"] in w for w in want)
    assert not any(w.startswith(f"[METRICS]{METRICS['batch']}.") for w in want)  # ts refused it (dimensions)
    got = captured(caplog, lambda: MetricsRecorder("cpu").record(ours, stats, handler_ms))
    assert got == want
    assert sorted(ours.metrics.cache_keys()) == sorted(oracle.metrics.cache_keys())


def test_the_per_batch_line_of_ts_is_dropped_and_nothing_else(caplog):
    from ts.protocol import otf_message_handler

    from polydet.serving.ts_metrics import TS_PER_BATCH_LINE, _NotPerBatch, drop_ts_per_batch_line

    # the line as TorchServe 0.12.0 logs it, read from its source so that a new ts version fails here
    assert f'logging.info("{TS_PER_BATCH_LINE}", time.time())' in Path(otf_message_handler.__file__).read_text()
    root = logging.getLogger()
    saved = list(root.filters)
    root.filters[:] = [f for f in saved if not isinstance(f, _NotPerBatch)]  # a handler test may have added it
    try:
        drop_ts_per_batch_line()
        drop_ts_per_batch_line()  # a second worker initialize adds no second filter
        assert sum(isinstance(f, _NotPerBatch) for f in root.filters) == 1
        with caplog.at_level(logging.INFO):
            logging.info(TS_PER_BATCH_LINE, 1796673639)  # noqa: LOG015 - ts logs it on the root logger
            logging.info("Backend received inference at: soon")  # noqa: LOG015
            logging.getLogger("polydet.x").info(TS_PER_BATCH_LINE, 1)
            logging.info("[PID]%d", 42)  # noqa: LOG015
        assert [(r.name, r.getMessage()) for r in caplog.records] == [
            ("root", "Backend received inference at: soon"), ("polydet.x", "Backend received inference at: 1"),
            ("root", "[PID]42")]
    finally:
        root.filters[:] = saved
