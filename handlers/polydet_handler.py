"""TorchServe handler for polydet: the transport skin over polydet.pipeline.Detector.

initialize: the archive's serialized file picks the backend (.pt/.torchscript, .onnx, .engine), gpu_id
the device (CPU when None), the ``handler:`` section of model-config.yaml the thresholds (unknown keys
fail the load); the NMS kernel is loaded and the model run on blank batches there too (Detector.warmup,
``handler.warmup``). handle: one answer per request; a bad request gets its own 4xx status and a JSON
body ``{"error", "code"}`` (also over gRPC, which ignores per-request statuses), the rest of the batch is
answered normally. Request formats: see polydet.serving.handling.

TorchServe requires exactly one class in this module (and no module-level ``handle``).
"""

import json
import logging
import os
import time

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

from polydet.pipeline import Detector
from polydet.serving.handling import METRICS, BatchAnswerer, HandlerConfig

log = logging.getLogger(__name__)


class PolydetHandler:
    def __init__(self):
        self.answerer = None
        self.initialized = False

    def initialize(self, context):
        props = context.system_properties
        artifact = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        gpu = props.get("gpu_id")
        device = "cpu" if gpu is None else f"cuda:{gpu}"
        config = HandlerConfig.from_yaml_section((context.model_yaml_config or {}).get("handler"))
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        # Building the Detector also warms NMS up (Detector.warmup: the numba kernel is loaded or
        # compiled here, while the worker starts, not on the first request).
        detector = Detector.from_artifact(artifact, device=device, options=config.options(),
                                          max_pixels=config.max_pixels)
        warm = ""
        if config.warmup:  # TorchScript's first calls profile the graph: pay them here, not on requests
            sizes = (1, 1, max(1, int(props.get("batch_size") or 1)))
            t0 = time.perf_counter()
            detector.warmup(sizes)
            warm = f", warmed up at batch {sizes} in {time.perf_counter() - t0:.2f} s"
        self.answerer = BatchAnswerer(detector, config)
        self.initialized = True
        log.info("polydet: %s on %s, classes %s, imgsz %d, NMS %s%s, %s", os.path.basename(artifact), device,
                 detector.info.names, detector.info.imgsz, detector.nms_backend, warm, config)

    def handle(self, data, context):
        t0 = time.perf_counter()
        bodies, statuses, stats = self.answerer.answer(data)
        out = []
        for i, (body, status) in enumerate(zip(bodies, statuses)):
            if status != 200:
                context.set_response_status(status, body["error"][:200], idx=i)
            context.set_response_content_type(i, "application/json")
            out.append(json.dumps(body, separators=(",", ":")))
        self._record(context, stats, (time.perf_counter() - t0) * 1e3)
        return out

    @staticmethod
    def _record(context, stats, handler_ms):
        metrics = context.metrics
        if metrics is None:
            return

        def dims():  # a fresh list per call: ts's metric cache appends to the list it is given
            return [Dimension("ModelName", context.model_name), Dimension("Level", "Model")]

        # Overriding handle() drops TorchServe's own HandlerTime, so it is recorded here.
        metrics.add_time(METRICS["handler"], round(handler_ms, 3), None, "ms", dims())
        metrics.add_metric(METRICS["batch"], stats["batch"], "count", None, dims(), MetricTypes.GAUGE)
        if stats["images"]:  # a batch of only bad requests ran no model: no stage times to report
            for key in ("preprocess", "inference", "postprocess"):
                metrics.add_time(METRICS[key], round(stats[key], 3), None, "ms", dims())
        if stats["detections"] is not None:
            metrics.add_metric(METRICS["detections"], stats["detections"], "count", None, dims(), MetricTypes.GAUGE)
        if stats["bad"]:
            metrics.add_counter(METRICS["bad"], stats["bad"], None, dims())
