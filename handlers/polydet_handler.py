"""TorchServe glue over polydet.serving.service.DetectionService: the archive builds the service; each
reply becomes a per-request status, content type and JSON body (the error is in the body too: gRPC
ignores statuses); the batch's numbers become metrics. Open Inference Protocol requests, the kservev2
envelope and the management API's describe are told apart and answered by polydet.serving.oip_torchserve.
TorchServe wants exactly one class here."""

import logging
import os
import time

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.utils.util import PredictionException

from polydet.serving import oip_torchserve
from polydet.serving.gpus import gpu_memory_mib, gpu_utilization
from polydet.serving.service import GPU_METRICS, METRICS, DetectionService

log = logging.getLogger(__name__)


class PolydetHandler:
    def __init__(self):
        self.service = None
        self.initialized = False
        self.device = "cpu"  # every metric's Device dimension: one slow or failed GPU shows on /metrics
        self._utilization_at = 0.0

    def initialize(self, context):
        props = context.system_properties
        artifact = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        self.device = "cpu" if props.get("gpu_id") is None else f"cuda:{props['gpu_id']}"
        self.service = DetectionService.from_artifact(artifact, (context.model_yaml_config or {}).get("handler"),
                                                      self.device, int(props.get("batch_size") or 1))
        self.initialized = True
        mib = gpu_memory_mib(self.device)  # after the warm-up's batches
        log.info("polydet: %s%s", self.service.describe(), "" if mib is None else
                 f", GPU memory {mib:.0f} MiB reserved by this worker (its CUDA context not counted)")

    def handle(self, data, context):
        t0 = time.perf_counter()
        answers, stats = oip_torchserve.answer(self.service, data, context)
        for i, a in enumerate(answers):
            if a.status != 200:
                context.set_response_status(a.status, a.reason[:200], idx=i)
            context.set_response_content_type(i, "application/json")
        if context.metrics is not None and self.service.config.metrics:  # ts's MockContext has none
            self._record(context, stats, (time.perf_counter() - t0) * 1e3)
        error = oip_torchserve.batch_error(answers)
        if error:  # the only way TorchServe's OIP gRPC answers an error (GRPCJob ignores per-request ones)
            raise PredictionException(error.reason, error.status)
        return [a.body for a in answers]

    def _record(self, context, stats, handler_ms):
        def dims():  # a fresh list per call: ts's metric cache keeps the one it is given; metrics.yaml's order
            return [Dimension("Device", self.device), Dimension("ModelName", context.model_name),
                    Dimension("Level", "Model")]

        # Overriding handle() drops TorchServe's own HandlerTime: recorded here. A batch of only bad
        # requests ran no model: no stage times.
        stages = ("preprocess", "inference", "postprocess") if stats.images else ()
        for key, ms in {"handler": handler_ms, **{k: getattr(stats.timings, k) for k in stages}}.items():
            context.metrics.add_time(METRICS[key], round(ms, 3), None, "ms", dims())
        # The same handler time as a histogram, in seconds (metrics.yaml: p50/p99 on the dashboard and alerts).
        context.metrics.add_metric("PolydetHandlerSeconds", handler_ms / 1e3, "s", None, dims(), MetricTypes.HISTOGRAM)
        for key, value in {"batch": stats.batch, "detections": stats.detections}.items():
            if value is not None:
                context.metrics.add_metric(METRICS[key], value, "count", None, dims(), MetricTypes.GAUGE)
        context.metrics.add_counter(METRICS["images"], stats.batch, None, dims())
        if stats.bad:
            context.metrics.add_counter(METRICS["bad"], stats.bad, None, dims())
        if self.device != "cpu":
            self._record_gpu(context, dims)

    def _record_gpu(self, context, dims):
        context.metrics.add_metric(GPU_METRICS["memory"], round(gpu_memory_mib(self.device), 1), "MB", None, dims(),
                                   MetricTypes.GAUGE)
        if time.monotonic() - self._utilization_at >= 1.0:  # an NVML query per batch would cost more than it says
            self._utilization_at = time.monotonic()
            percent = gpu_utilization(self.device)
            if percent is not None:
                context.metrics.add_metric(GPU_METRICS["utilization"], percent, "percent", None, dims(),
                                           MetricTypes.GAUGE)
