"""TorchServe glue over polydet.serving.service.DetectionService: the archive builds the service; each
reply becomes a per-request status, content type and JSON body (the error is in the body too: gRPC
ignores statuses); the batch's numbers become metrics (polydet.serving.ts_metrics). Open Inference Protocol requests, the kservev2
envelope and the management API's describe are told apart and answered by polydet.serving.oip_torchserve.
TorchServe wants exactly one class here."""

import logging
import os
import time

from ts.utils.util import PredictionException

from polydet.serving import oip_torchserve
from polydet.serving.gpus import gpu_memory_mib
from polydet.serving.service import DetectionService
from polydet.serving.ts_metrics import MetricsRecorder, drop_ts_per_batch_line

log = logging.getLogger(__name__)


class PolydetHandler:
    def __init__(self):
        self.service = None
        self.initialized = False
        self.device = "cpu"
        self.metrics = None

    def initialize(self, context):
        props = context.system_properties
        artifact = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        self.device = "cpu" if props.get("gpu_id") is None else f"cuda:{props['gpu_id']}"
        self.service = DetectionService.from_artifact(artifact, (context.model_yaml_config or {}).get("handler"),
                                                      self.device, int(props.get("batch_size") or 1))
        self.metrics = MetricsRecorder(self.device)
        drop_ts_per_batch_line()  # a line per batch that log4j2.xml drops: not written at all
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
            self.metrics.record(context, stats, (time.perf_counter() - t0) * 1e3)
        error = oip_torchserve.batch_error(answers)
        if error:  # the only way TorchServe's OIP gRPC answers an error (GRPCJob ignores per-request ones)
            raise PredictionException(error.reason, error.status)
        return [a.body for a in answers]
