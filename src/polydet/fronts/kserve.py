"""polydet as a KServe model: v1 and v2 REST, v2 gRPC. ``python -m polydet.fronts.kserve --artifact A ...``
in the kserve venv (``polydet front kserve`` builds it and starts this).

Tensors in and out follow ``polydet.serving.oip``; v1 takes ``{"instances": [{"b64": ...} | "<base64>", ...],
"options": {...}}`` and answers ``{"predictions": [<the REST JSON of each image>]}``. What this changes in
KServe 0.21.0's behaviour:
- binds ``--host`` (default 127.0.0.1), not KServe's hard-coded 0.0.0.0 (REST) and [::] (gRPC);
- answers a v2 request without an ``id`` (KServe echoes the id into a response model that requires a string:
  a 500 otherwise);
- a v2 REST body sent with neither an ``Inference-Header-Content-Length`` header nor a JSON Content-Type
  (tritonclient's JSON mode sends no Content-Type) is read as all JSON, instead of KServe's 400 "received
  byte inputs, but the 'inference-header-content-length' header is missing";
- a failed request is answered with its own status (REST: 400, 413, 415 ...) and reason; gRPC: 400
  INVALID_ARGUMENT, 413 RESOURCE_EXHAUSTED, other 4xx FAILED_PRECONDITION, 5xx INTERNAL (as TorchServe's OIP).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import uuid

import kserve
from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ..errors import InvalidInputError
from ..serving import oip
from .common import load_service, make_parser


class ImageFailed(GrpcException):
    """A request failed as a whole (bad inputs or options, or every image bad: the first one's status and
    reason). REST: that status; gRPC: the code TorchServe's OIP service gives the same status."""

    def __init__(self, status: int, reason: str):
        code = {400: StatusCode.INVALID_ARGUMENT, 413: StatusCode.RESOURCE_EXHAUSTED}.get(
            status, StatusCode.FAILED_PRECONDITION if status < 500 else StatusCode.INTERNAL)
        super().__init__(reason, code)
        self.http_status = status


class PolydetModel(kserve.Model):
    def __init__(self, name: str, service):
        super().__init__(name)
        self.service = service
        self.lock = threading.Lock()  # one batch at a time through the Detector, off the event loop
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return oip.model_metadata(self.name)["inputs"]

    def get_output_types(self) -> list[dict]:
        return oip.model_metadata(self.name)["outputs"]

    async def predict(self, payload, headers=None, response_headers=None):
        work = self._v2 if isinstance(payload, InferRequest) else self._v1
        return await asyncio.get_running_loop().run_in_executor(None, work, payload)

    def _detect(self, tensors: dict, datatypes: dict | None = None) -> list:
        with self.lock:
            try:
                images, overrides = oip.decode_inputs(tensors, datatypes, **oip.limits(self.service.config))
                results, _ = self.service.detect_images(images, overrides)
            except InvalidInputError as e:
                raise ImageFailed(e.http_status, str(e)) from e
        error = oip.request_error(results)
        if error is not None:
            raise ImageFailed(error.status, error.reason)
        return results

    def _v2(self, req: InferRequest) -> InferResponse:
        tensors = {}
        for t in req.inputs:
            try:
                tensors[t.name] = t.as_numpy()
            except (ValueError, TypeError) as e:  # data that does not fill its declared shape, a bad datatype
                raise ImageFailed(400, f"input {t.name!r} ({t.datatype} {t.shape}): {e}") from e
        results = self._detect(tensors, {t.name: t.datatype for t in req.inputs})
        outputs = []
        for name, a in oip.encode_outputs(results).items():
            outputs.append(InferOutput(name, list(a.shape), oip.SPECS[name].datatype))
            # raw now: KServe's to_grpc tests an ndarray's truth value (a ValueError); to_rest re-encodes as asked
            outputs[-1].set_data_from_numpy(a, binary_data=True)
        return InferResponse(req.id or str(uuid.uuid4()), self.name, outputs,
                             use_binary_outputs=req.use_binary_outputs, requested_outputs=req.request_outputs)

    def _v1(self, body: dict) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or \
                set(body) - {"instances", "options"}:
            raise InvalidInput('v1 body: {"instances": [{"b64": "<base64 image>"}, ...], "options": {...} (optional)}')
        images = [i.get("b64") if isinstance(i, dict) else i for i in body["instances"]]
        tensors = {"images": images, **({"options": json.dumps(body["options"])} if "options" in body else {})}
        return {"predictions": [r.to_dict() for r in self._detect(tensors)]}


def main(argv: list[str] | None = None) -> int:
    args = make_parser("kserve", 8080, 8081).parse_args(argv)
    from . import kserve_fixes

    service = load_service(args)
    kserve_fixes.apply(args.host, ImageFailed, service.config.max_request_bytes)
    model = PolydetModel(args.name, service)
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
