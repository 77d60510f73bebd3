"""TorchServe 0.12.0's side of the Open Inference Protocol: what its frontend hands a handler and what it
must get back, over :mod:`polydet.serving.oip`'s layout and DetectionService. Knows no ts types (the
handler passes its context in); read from TorchServe 0.12.0's source, frontend/server/.../grpcimpl/
OpenInferenceProtocolImpl.java and job/GRPCJob.java:

- ``ts_open_inference_protocol=true`` adds the service ``org.pytorch.serve.grpc.openinference.
  GRPCInferenceService`` to the gRPC inference port, behind the same token check as the rest of that port
  (metadata ``authorization: Bearer <inference key>``, else PERMISSION_DENIED). An environment variable
  ``TS_OPEN_INFERENCE_PROTOCOL`` overrides the setting: ``oip`` turns it on, any other value off.
- ``ModelInfer`` becomes one request whose key ``body`` holds JSON ``{"id", "model_name", "inputs":
  [{"name", "shape", "datatype", "data"}]}``; BYTES ``contents.bytes_contents`` arrive as base64 strings.
  ``raw_input_contents`` and request ``parameters`` are dropped by the frontend: send ``contents``.
- The handler's answer must be JSON ``{"id", "model_name", "model_version", "outputs": [{"name",
  "datatype", "shape", "data"}]}``: GRPCJob reads each field without a check, and a missing one throws in
  the worker thread, which is killed and restarted. A BYTES element reaches the client as the JSON text
  of that element, so ``results`` elements are JSON objects (the client receives the REST JSON itself).
- GRPCJob ignores a per-request status: only a failed *batch* (PredictionException) becomes a gRPC
  error (400 INVALID_ARGUMENT, 413 RESOURCE_EXHAUSTED, other 4xx FAILED_PRECONDITION, 5xx INTERNAL) for
  every request in it. So a whole-request failure (bad options or inputs, every image bad) is a gRPC
  error when every request of its TorchServe batch is an OIP request failing with the same status and
  reason (a lone request always is); batched with others it is an OIP answer whose ``status``/``results``
  carry the error, and the others are answered normally.
- ``ModelMetadata`` is answered by the frontend alone (name, versions, platform "", no inputs or
  outputs): a handler cannot change it. polydet publishes the true metadata (:func:`oip.model_metadata`)
  where TorchServe asks the handler: the management API's describe with ``customized=true``
  (``customizedMetadata``). ``ServerMetadata`` is not implemented (UNIMPLEMENTED). ``ModelReady`` is true
  when the model's healthy workers reach its minWorkers.

The kservev2 envelope (``service_envelope=kservev2``, :mod:`polydet.serving.kserve_layout`) rewrites
requests before the handler: it keeps only the first request of a batch and only the first element of a
BYTES tensor, hands over a list of input tensors, and names the outputs after the inputs. Under it a
request is one image; the answer is one output, named after the first input, holding the REST JSON.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import InvalidInputError, PolydetError, quote
from ..preprocess import error_of
from ..results import Detections, ImageError, Timings
from . import oip
from .service import BatchStats, DetectionService, parse_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """One request's answer: the handler returns ``body``; ``status``/``reason`` go to TorchServe (REST
    honours them; gRPC does not, so the error is in the body too). ``oip_error``: the whole-request error
    of an OIP request (a batch made only of identical ones is failed as a batch: :func:`batch_error`)."""

    status: int
    body: str
    reason: str = ""
    oip_error: ImageError | None = None


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def is_envelope_batch(data: Sequence[Any]) -> bool:
    """True when TorchServe's kservev2 envelope has turned the batch into a list of input tensors."""
    return bool(data) and all(isinstance(d, Mapping) and "datatype" in d and "name" in d for d in data)


def parsed_body(req: Any) -> dict | None:
    """A request's ``body`` as a JSON object (an OIP ModelInfer from the OIP frontend, or a REST JSON body),
    else None (not JSON, malformed JSON: the REST path answers it with its reason, or not an object)."""
    value = req.get("body") if isinstance(req, Mapping) else None
    if isinstance(value, (bytes, bytearray)) and bytes(value[:64]).lstrip()[:1] == b"{":
        try:
            value = parse_json(bytes(value), quiet=True)  # the REST path parses it again, answers and logs it
        except InvalidInputError:
            return None
    return value if isinstance(value, dict) else None


def is_oip(value: Any) -> bool:
    """An OIP ModelInfer request (``inputs``), not a polydet REST JSON body (``image``)."""
    return isinstance(value, dict) and "inputs" in value and not {"image", "images"} & set(value)


def tensors_of(inputs: Any, take_first: bool = False) -> tuple[dict, dict]:
    """OIP JSON input tensors -> ({name: data}, {name: datatype}), checked: names unique, shape matching
    the data. ``take_first``: the envelope kept only a BYTES tensor's first element (one image a request)."""
    if not isinstance(inputs, list) or not all(isinstance(t, Mapping) for t in inputs):
        raise InvalidInputError(f"\"inputs\" must be a list of tensors, got {quote(inputs)}")
    tensors, datatypes = {}, {}
    for t in inputs:
        name, data, shape = t.get("name"), t.get("data"), t.get("shape")
        if not isinstance(name, str) or name in tensors:
            raise InvalidInputError(f"input names must be unique strings, got {quote(name)}")
        if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
            raise InvalidInputError(f"input {name!r}: shape must be a list of integers, got {quote(shape)}")
        count = math.prod(shape)
        if take_first and t.get("datatype") == "BYTES":
            if count != 1:
                raise InvalidInputError(f"input {name!r} has shape {shape}: TorchServe's kservev2 envelope passes "
                                        "on only the first element of a BYTES tensor, so send one image per request")
            data = [data]
        if not isinstance(data, list) or len(data) != count:
            raise InvalidInputError(f"input {name!r}: shape {shape} does not match its {quote(data)} data")
        tensors[name], datatypes[name] = data, t.get("datatype")
    return tensors, datatypes


def response_body(request: Mapping, model_name: str, version: str, results: Sequence[Detections | ImageError]
                  ) -> str:
    """The OIP response JSON TorchServe's GRPCJob takes: every field it reads, ``results`` as objects."""
    outputs = oip.encode_outputs(results)
    rid = request.get("id")
    out = []
    for spec in oip.OUTPUTS:
        arr = outputs[spec.name]
        data = [json.loads(b) for b in arr] if spec.datatype == "BYTES" else arr.reshape(-1).tolist()
        out.append({"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape), "data": data})
    return _dumps({"id": rid if isinstance(rid, str) else "", "model_name": model_name,
                   "model_version": version, "outputs": out})


def infer(service: DetectionService, request: Mapping, model_name: str, version: str
          ) -> tuple[Answer, BatchStats | None]:
    """One OIP ModelInfer request -> its Answer, always in the OIP response shape."""
    try:
        images, overrides = oip.decode_inputs(*tensors_of(request.get("inputs")), **oip.limits(service.config))
        results, stats = service.detect_images(images, overrides)
    except Exception as e:  # noqa: BLE001 - bad inputs or options (or a fault): the whole request's answer
        if not isinstance(e, PolydetError):
            log.exception("answering an OIP request failed")
        err = error_of(e)
        return Answer(err.status, response_body(request, model_name, version, [err]), err.reason, err), None
    err = oip.request_error(results)
    body = response_body(request, model_name, version, results)
    return (Answer(err.status, body, err.reason, err) if err else Answer(200, body)), stats


def answer_envelope(service: DetectionService, data: Sequence[Mapping]) -> tuple[list[Answer], BatchStats | None]:
    """The kservev2 envelope's input tensors -> one Answer (one output: the first input's name, the REST JSON)."""
    try:
        images, overrides = oip.decode_inputs(*tensors_of(list(data), take_first=True), **oip.limits(service.config))
        (result,), stats = service.detect_images(images, overrides)
    except Exception as e:  # noqa: BLE001 - as infer()
        if not isinstance(e, PolydetError):
            log.exception("answering a kservev2 request failed")
        result, stats = error_of(e), None
    if isinstance(result, ImageError):
        return [Answer(result.status, _dumps(result.to_dict()), result.reason)], stats
    return [Answer(200, _dumps(result.to_dict()))], stats


def answer(service: DetectionService, data: Sequence[Any], context) -> tuple[list[Answer], BatchStats]:
    """A TorchServe batch -> one Answer per request (per the envelope's rules under it): OIP requests as
    above, the management API's describe with the OIP model metadata, everything else by service.answer."""
    if is_envelope_batch(data):
        answers, stats = answer_envelope(service, data)
        return answers, combine([stats] if stats else [], len(answers), sum(400 <= a.status < 500 for a in answers))
    model = context.manifest.get("model", {}) if context.manifest else {}
    version = str(model.get("modelVersion") or "")
    answers: list = [None] * len(data)
    rest: list = []
    parts: list = []
    for i, req in enumerate(data):
        if context.get_request_header(i, "describe") == "True":
            answers[i] = Answer(200, _dumps(oip.model_metadata(context.model_name, [version] if version else [])))
        elif is_oip(body := parsed_body(req)):
            answers[i], stats = infer(service, body, context.model_name, version)
            parts += [stats] if stats else []
        else:  # a REST JSON body goes on parsed (parse_request takes a dict), anything else as it came
            rest.append((i, req if body is None else {**req, "body": body}))
    if rest:
        replies, stats = service.answer([r for _, r in rest])
        parts.append(stats)
        for (i, _), r in zip(rest, replies):
            answers[i] = Answer(r.status, _dumps(r.body), r.body.get("error", "") if r.status != 200 else "")
    # PolydetBatchSize/PolydetBadRequests count images: the REST part's from service.answer (a multi-image
    # request counts its images), one per other request
    others = [a for k, a in enumerate(answers) if k not in {i for i, _ in rest}]
    batch, bad = len(others), sum(400 <= a.status < 500 for a in others)
    if rest:
        batch, bad = batch + stats.batch, bad + stats.bad
    return answers, combine(parts, batch, bad)


def combine(parts: Sequence[BatchStats], batch: int, bad: int) -> BatchStats:
    """One BatchStats for a TorchServe batch answered in several calls (timings summed)."""
    images = sum(p.images for p in parts)
    dets = sum((p.detections or 0) * p.images for p in parts)
    timings = Timings(*(sum(getattr(p.timings, k) for p in parts) for k in ("preprocess", "inference",
                                                                            "postprocess")))
    return BatchStats(timings, batch, images, bad, dets / images if images else None)


def batch_error(answers: Sequence[Answer]) -> ImageError | None:
    """The error to fail the whole TorchServe batch with (gRPC's only error path): when every request is an
    OIP request that failed whole with the same status and reason; else None."""
    errors = {a.oip_error for a in answers}
    if answers and None not in errors and len(errors) == 1:
        return errors.pop()
    return None
