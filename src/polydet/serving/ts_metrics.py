"""A batch's numbers as TorchServe metrics (the handler's half that is not glue): stage times, the handler
time as a histogram, batch fill, detections, images, bad requests, and on a GPU its memory and utilisation.
Every metric carries a ``Device`` dimension (cuda:N or cpu) so one slow or failed GPU shows on /metrics;
metrics.yaml declares them with the dimensions in this order.

A metric reaches /metrics as one line on the worker's stdout, which the frontend parses. TorchServe 0.12.0's
``context.metrics.add_*`` builds that line through per-call objects (dimension validation, a host name
lookup, a logging call each: ~0.3 ms of worker CPU per batch for our 8 lines, measured in BENCHMARKS.md).
:class:`MetricsRecorder` writes the very same lines itself, from the declared metric's unit, type and
dimension names read once from the worker's metrics cache, through the logger ts writes them with; a
metric the cache does not hold as declared goes through ``add_*`` as before. ``ts`` is imported only when
recording."""

from __future__ import annotations

import logging
import socket
import time

from .gpus import gpu_memory_mib, gpu_utilization
from .service import GPU_METRICS, METRICS, BatchStats

# TorchServe 0.12.0's ts/metrics/caching_metric.py logs each metric line on this logger: same handlers, level
TS_METRICS_LOG = logging.getLogger("ts.metrics.caching_metric")
DIMENSIONS = ("Device", "ModelName", "Level")  # metrics.yaml's order for every handler metric


class _NotPerBatch(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == TS_PER_BATCH_LINE and record.name == "root")


TS_PER_BATCH_LINE = "Backend received inference at: %d"  # ts/protocol/otf_message_handler.py, on the root logger


def drop_ts_per_batch_line() -> None:
    """Drop, in this worker, the line TorchServe 0.12.0 logs for every batch it reads ("Backend received
    inference at: <seconds>"), which polydet's log4j2.xml denies anyway once the frontend has read and
    matched it: no write on the worker's stdout, no line for the frontend to scan. Other lines are untouched."""
    root = logging.getLogger()
    if not any(isinstance(f, _NotPerBatch) for f in root.filters):
        root.addFilter(_NotPerBatch())


class MetricsRecorder:
    def __init__(self, device: str):
        self.device = device
        self._utilization_at = 0.0
        self._host = socket.gethostname()  # ts looks it up for every line; a worker's host does not change
        self._heads: dict = {}  # (id of the cache, name, type) -> (line head, line middle) or None: use add_*

    def record(self, context, stats: BatchStats, handler_ms: float) -> None:
        from ts.metrics.metric_type_enum import MetricTypes

        if not TS_METRICS_LOG.isEnabledFor(logging.INFO):
            return  # ts would build each line and log nothing
        lines: list = []
        gauge, counter = MetricTypes.GAUGE, MetricTypes.COUNTER
        # Overriding handle() drops TorchServe's own HandlerTime: recorded here. A batch of only bad
        # requests ran no model: no stage times.
        stages = ("preprocess", "inference", "postprocess") if stats.images else ()
        for key, ms in {"handler": handler_ms, **{k: getattr(stats.timings, k) for k in stages}}.items():
            self._add(context, lines, METRICS[key], round(ms, 3), "ms", gauge)
        # The same handler time as a histogram, in seconds (metrics.yaml: p50/p99 on the dashboard and alerts).
        self._add(context, lines, "PolydetHandlerSeconds", handler_ms / 1e3, "s", MetricTypes.HISTOGRAM)
        for key, value in {"batch": stats.batch, "detections": stats.detections}.items():
            if value is not None:
                self._add(context, lines, METRICS[key], value, "count", gauge)
        self._add(context, lines, METRICS["images"], stats.batch, "count", counter)
        if stats.bad:
            self._add(context, lines, METRICS["bad"], stats.bad, "count", counter)
        if self.device != "cpu":
            self._record_gpu(context, lines, gauge)
        if lines:
            rid = context.metrics.request_ids  # as ts's _get_req(None): every request id of the batch
            tail = f",{int(time.time())}" + (f",{','.join(rid.values()) if isinstance(rid, dict) else rid}"
                                             if rid else "")
            for head, value, middle in lines:
                TS_METRICS_LOG.info(f"{head}{value}{middle}{tail}")

    def _add(self, context, lines: list, name: str, value, unit: str, metric_type) -> None:
        """One line into ``lines`` as (head, value, middle), or through ts's add_* if not declared as expected."""
        m = context.metrics
        key = (id(m), name, metric_type)
        if key not in self._heads:
            self._heads[key] = self._head(m, name, metric_type, context.model_name)
        if self._heads[key] is None:
            self._add_through_ts(context, name, value, unit, metric_type)
            return
        head, middle = self._heads[key]
        lines.append((head, value, middle))

    def _head(self, m, name: str, metric_type, model_name: str):
        try:
            metric = m.get_metric(name, metric_type)
        except Exception:  # noqa: BLE001 - not declared (or not ts's yaml cache): ts's own path decides
            return None
        if tuple(getattr(metric, "dimension_names", ())) != DIMENSIONS:
            return None
        dims = ",".join(f"{n}:{v}" for n, v in zip(DIMENSIONS, (self.device, model_name, "Model")))
        return (f"[METRICS]{metric.metric_name}.{metric.unit}:",
                f"|#{dims}|#type:{metric.metric_type.name}|#hostname:{self._host}")

    def _add_through_ts(self, context, name: str, value, unit: str, metric_type) -> None:
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        dims = [Dimension("Device", self.device), Dimension("ModelName", context.model_name),
                Dimension("Level", "Model")]  # a fresh list per call: ts's metric cache keeps the one it is given
        if metric_type == MetricTypes.COUNTER:
            context.metrics.add_counter(name, value, None, dims)
        elif unit in ("ms", "s") and metric_type == MetricTypes.GAUGE:
            context.metrics.add_time(name, value, None, unit, dims)
        else:
            context.metrics.add_metric(name, value, unit, None, dims, metric_type)

    def _record_gpu(self, context, lines: list, gauge) -> None:
        self._add(context, lines, GPU_METRICS["memory"], round(gpu_memory_mib(self.device), 1), "MB", gauge)
        if time.monotonic() - self._utilization_at >= 1.0:  # an NVML query per batch would cost more than it says
            self._utilization_at = time.monotonic()
            percent = gpu_utilization(self.device)
            if percent is not None:
                self._add(context, lines, GPU_METRICS["utilization"], percent, "percent", gauge)
