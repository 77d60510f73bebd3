"""A batch's numbers as TorchServe metrics (the handler's half that is not glue): stage times, the handler
time as a histogram, batch fill, detections, images, bad requests, and on a GPU its memory and utilisation.
Every metric carries a ``Device`` dimension (cuda:N or cpu) so one slow or failed GPU shows on /metrics;
metrics.yaml declares them with the dimensions in this order. ``ts`` is imported only when recording."""

from __future__ import annotations

import time

from .gpus import gpu_memory_mib, gpu_utilization
from .service import GPU_METRICS, METRICS, BatchStats


class MetricsRecorder:
    def __init__(self, device: str):
        self.device = device
        self._utilization_at = 0.0

    def record(self, context, stats: BatchStats, handler_ms: float) -> None:
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        def dims():  # a fresh list per call: ts's metric cache keeps the one it is given; metrics.yaml's order
            return [Dimension("Device", self.device), Dimension("ModelName", context.model_name),
                    Dimension("Level", "Model")]

        m = context.metrics
        # Overriding handle() drops TorchServe's own HandlerTime: recorded here. A batch of only bad
        # requests ran no model: no stage times.
        stages = ("preprocess", "inference", "postprocess") if stats.images else ()
        for key, ms in {"handler": handler_ms, **{k: getattr(stats.timings, k) for k in stages}}.items():
            m.add_time(METRICS[key], round(ms, 3), None, "ms", dims())
        # The same handler time as a histogram, in seconds (metrics.yaml: p50/p99 on the dashboard and alerts).
        m.add_metric("PolydetHandlerSeconds", handler_ms / 1e3, "s", None, dims(), MetricTypes.HISTOGRAM)
        for key, value in {"batch": stats.batch, "detections": stats.detections}.items():
            if value is not None:
                m.add_metric(METRICS[key], value, "count", None, dims(), MetricTypes.GAUGE)
        m.add_counter(METRICS["images"], stats.batch, None, dims())
        if stats.bad:
            m.add_counter(METRICS["bad"], stats.bad, None, dims())
        if self.device != "cpu":
            self._record_gpu(m, dims, MetricTypes.GAUGE)

    def _record_gpu(self, m, dims, gauge) -> None:
        m.add_metric(GPU_METRICS["memory"], round(gpu_memory_mib(self.device), 1), "MB", None, dims(), gauge)
        if time.monotonic() - self._utilization_at >= 1.0:  # an NVML query per batch would cost more than it says
            self._utilization_at = time.monotonic()
            percent = gpu_utilization(self.device)
            if percent is not None:
                m.add_metric(GPU_METRICS["utilization"], percent, "percent", None, dims(), gauge)
