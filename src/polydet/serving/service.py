"""The protocol-neutral detection service: one archive's Detector, and requests -> (status, body).

A front (the TorchServe handler, an Open Inference Protocol server, a PyTriton binding) hands over a
batch of requests, each a mapping of named inputs as its transport delivers them, and gets back one
:class:`Reply` per request plus the batch's numbers for its metrics. A request is one of:

- raw image bytes (REST body with Content-Type application/octet-stream or image/*; key ``body``);
- a multipart form with one field, any name (key = the field name);
- a JSON object ``{"image": "<base64>", "conf": 0.4, ..., "dewarp": true}``, parsed already (a dict) or
  as bytes/str (gRPC, text/plain);
- gRPC: input map key ``data`` (or any single key), holding image bytes or the JSON object.

Bad requests get their own 4xx reply; the rest of the batch is answered normally.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..backends import load_backend
from ..errors import InvalidInputError, PolydetError, bounded, quote
from ..pipeline import Detector
from ..options import DetectOptions
from ..preprocess import CpuPreprocessor, error_of
from ..results import Detections, ImageError, Timings
from .config import ServiceConfig

log = logging.getLogger(__name__)

# Names of the per-batch metrics, declared in polydet/serving/metrics.yaml (TorchServe drops undeclared
# handler metrics); other fronts may reuse them.
METRICS = {"preprocess": "PolydetPreprocessMs", "inference": "PolydetInferenceMs",
           "postprocess": "PolydetPostprocessMs", "detections": "PolydetDetectionsPerImage",
           "batch": "PolydetBatchSize", "bad": "PolydetBadRequests", "handler": "HandlerTime"}
PAYLOAD_KEYS = ("body", "data")  # preferred when a request carries several inputs
JSON_ONLY_KEYS = ("image", "dewarp")  # keys of a JSON request that are not DetectOptions
# A request is one flat object; json.loads recurses once per level (100,000 levels: a RecursionError, which
# was answered 500 with a traceback per request), so nesting is measured before parsing.
MAX_JSON_DEPTH = 16
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


@dataclass(frozen=True)
class Request:
    """One parsed request: image bytes plus per-request option overrides."""

    image: bytes
    options: dict
    dewarp: bool = False


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict


@dataclass(frozen=True)
class BatchStats:
    """Per-batch numbers for a front's metrics. ``detections``: mean per answered image (None if none)."""

    timings: Timings
    batch: int
    images: int
    bad: int
    detections: float | None


def _payload(req: Mapping[str, Any]):
    if not isinstance(req, Mapping) or not req:
        raise InvalidInputError("empty request: send an image as the body, a form field or JSON {\"image\": ...}")
    for key in PAYLOAD_KEYS:
        if key in req:
            return req[key]
    if len(req) == 1:
        return next(iter(req.values()))
    raise InvalidInputError(f"expected one input (an image or a JSON object), got fields {quote(sorted(req))}")


def json_depth(text: bytes) -> int:
    """How deep objects and arrays nest in JSON ``text`` (brackets inside strings do not count); an upper
    bound for malformed text. Vectorised: a 16 MB body takes milliseconds."""
    import numpy as np

    if text.count(b"[") + text.count(b"{") <= MAX_JSON_DEPTH:  # the usual request: no need to look closer
        return text.count(b"[") + text.count(b"{")
    a = np.frombuffer(_JSON_STRING.sub(b'""', text), np.uint8)
    step = (a == ord("{")).astype(np.int64) + (a == ord("[")) - (a == ord("}")) - (a == ord("]"))
    return int(np.cumsum(step).max(initial=0))


def parse_json(text: bytes):
    """JSON body -> its value. Too deep or malformed: InvalidInputError (400), with one log line."""
    depth = json_depth(text)
    try:
        if depth > MAX_JSON_DEPTH:
            raise InvalidInputError(f"JSON nested {depth} levels deep; a request is one object (at most "
                                    f"{MAX_JSON_DEPTH} levels)")
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as e:  # RecursionError: belt and braces, depth is checked above
            raise InvalidInputError(f"body starts with '{{' but is not valid JSON: {bounded(str(e))}") from e
    except InvalidInputError as e:
        log.info("polydet: refused a JSON body of %d bytes: %s", len(text), e)
        raise


def parse_request(req: Mapping[str, Any]) -> Request:
    """A request's named inputs -> Request. Raises InvalidInputError (HTTP 400) with the reason."""
    value = _payload(req)
    if isinstance(value, str):
        value = value.encode("utf-8")
    # JSON as bytes: gRPC, and REST too (config.properties' decode_input_request=false leaves JSON to us)
    if isinstance(value, (bytes, bytearray)) and bytes(value[:64]).lstrip()[:1] == b"{":
        value = parse_json(bytes(value))
    if isinstance(value, (bytes, bytearray)):
        return Request(bytes(value), {})
    if not isinstance(value, dict):
        raise InvalidInputError(f"JSON body must be an object with an \"image\" key, got {type(value).__name__}")
    if "image" not in value:
        raise InvalidInputError("JSON body has no \"image\" key (base64 of the image file)")
    b64 = value["image"]
    if not isinstance(b64, str):
        raise InvalidInputError("\"image\" must be a base64 string")
    try:
        data = base64.b64decode(b64.split(",", 1)[1] if b64.startswith("data:") else b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInputError(f"\"image\" is not valid base64: {bounded(str(e))}") from e
    dewarp = value.get("dewarp", False)
    if not isinstance(dewarp, bool):
        raise InvalidInputError(f"\"dewarp\" must be true or false, got {quote(dewarp)}")
    return Request(data, {k: v for k, v in value.items() if k not in JSON_ONLY_KEYS}, dewarp)


def dewarp_field(rgb, dets: Detections, max_side: int, quality: int) -> dict | None:
    """{"index", "width", "height", "jpeg_base64"}: the rectified crop of the best-scored detection whose
    quad has an area (a degenerate quad clamped to the image edge cannot be rectified); None if none.
    ``rgb`` may be a large JPEG's reduced decode: polygons (original pixels) are scaled to it."""
    import cv2

    from ..ops.warp import dewarp

    for index, polygon in enumerate(dets.polygons_for(rgb.shape)):
        try:
            crop = dewarp(rgb, polygon, max_side=max_side)
        except InvalidInputError:  # no area: try the next one
            continue
        ok, buf = cv2.imencode(".jpg", crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])  # cv2 writes BGR
        if not ok:
            raise RuntimeError("JPEG encoding of the dewarped crop failed")
        return {"index": index, "width": int(crop.shape[1]), "height": int(crop.shape[0]),
                "jpeg_base64": base64.b64encode(buf.tobytes()).decode("ascii")}
    return None


class DetectionService:
    """Answers batches of requests with one Detector; never raises for a request's fault."""

    def __init__(self, detector: Detector, config: ServiceConfig | None = None):
        self.detector = detector
        self.config = config or ServiceConfig()
        self.warmed = ""  # what from_artifact's warm-up did, for describe()

    @classmethod
    def from_artifact(cls, artifact: str, section: Mapping | None = None, device: str = "cpu",
                      batch_size: int = 1) -> "DetectionService":
        """Build from an archive: its artifact and the ``handler:`` section of its model-config.yaml.
        Sets torch's threads, builds the Detector (which loads the NMS kernel) and, unless the section says
        ``warmup: false``, loads the JPEG scan check's kernel and runs the model at batch 1, 1 and
        ``batch_size`` so requests never pay the first calls' profiling."""
        config = ServiceConfig.from_section(section)
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        backend = load_backend(artifact, device=device)
        # the preprocessor Detector would build, with the archive's decode budget
        pre = CpuPreprocessor(backend.info, backend.device, backend.input_dtype, config.max_pixels,
                              config.max_decode_bytes)
        detector = Detector(backend, options=config.options, max_pixels=config.max_pixels, preprocessor=pre,
                            max_candidates=config.max_candidates)
        service = cls(detector, config)
        if config.warmup:
            from ..jpegcheck import warmup as load_jpeg_check

            t0 = time.perf_counter()
            load_jpeg_check()  # the first JPEG would pay for it otherwise
            detector.warmup((1, 1, max(1, batch_size)))
            service.warmed = f", warmed up at batch {(1, 1, max(1, batch_size))} in {time.perf_counter() - t0:.2f} s"
        return service

    def describe(self) -> str:
        d = self.detector
        return (f"{d.backend.path.name} on {d.device}, classes {d.info.names}, imgsz {d.info.imgsz}, "
                f"NMS {d.nms_backend}{self.warmed}, {self.config}")

    def answer(self, requests: Sequence[Mapping[str, Any]]) -> tuple[list[Reply], BatchStats]:
        t0 = time.perf_counter()
        parsed: list = []  # (Request, DetectOptions) or ImageError
        for raw in requests:
            try:
                req = parse_request(raw)
                parsed.append((req, self.options_for(req.options)))
            except Exception as e:  # noqa: BLE001 - every failure becomes this request's answer
                parsed.append(error_of(e))
        good = [k for k, p in enumerate(parsed) if not isinstance(p, ImageError)]
        parse_ms = (time.perf_counter() - t0) * 1e3
        batch = self.detector.detect([parsed[k][0].image for k in good], [parsed[k][1] for k in good])
        t1 = time.perf_counter()
        results: list = list(parsed)
        for k, res, rgb in zip(good, batch, batch.pixels):
            results[k] = self._reply_body(res, parsed[k][0], rgb)
        replies = [Reply(r.status, r.to_dict()) if isinstance(r, ImageError) else Reply(200, r) for r in results]
        ndet = [len(r["detections"]) for r in results if isinstance(r, dict)]
        t = batch.timings
        timings = Timings(t.preprocess + parse_ms, t.inference, t.postprocess + (time.perf_counter() - t1) * 1e3)
        stats = BatchStats(timings, len(requests), len(good), sum(400 <= r.status < 500 for r in replies),
                           sum(ndet) / len(ndet) if ndet else None)
        return replies, stats

    def options_for(self, overrides: Mapping[str, Any] | None) -> DetectOptions:
        """The server's options with one request's overrides; InvalidInputError (400) names a bad one."""
        opts = self.config.options.replace(**overrides) if overrides else self.config.options
        if opts.max_det > self.config.max_det_limit:
            raise InvalidInputError(f"max_det {opts.max_det} is above this server's limit of "
                                    f"{self.config.max_det_limit} (handler.max_det_limit)")
        return opts

    def detect_images(self, images: Sequence[bytes], overrides: Mapping[str, Any] | None = None
                      ) -> tuple[list[Detections | ImageError], BatchStats]:
        """Typed results for fronts that speak tensors (OIP, KServe, Triton): one per image, in order, a bad
        image an ImageError in its place. Bad ``overrides`` raise InvalidInputError (the whole request is 400)."""
        opts = self.options_for(overrides)
        batch = self.detector.detect(list(images), [opts] * len(images))
        results = list(batch)
        ndet = [len(r.scores) for r in results if not isinstance(r, ImageError)]
        stats = BatchStats(batch.timings, len(images), len(ndet), len(images) - len(ndet),
                           sum(ndet) / len(ndet) if ndet else None)
        return results, stats

    def _reply_body(self, res, req: Request, rgb) -> dict | ImageError:
        if isinstance(res, ImageError):
            return res
        try:
            body = res.to_dict()
            if req.dewarp:
                body["dewarp"] = dewarp_field(rgb, res, self.config.dewarp_max_side, self.config.dewarp_jpeg_quality)
            return body
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, PolydetError):
                log.exception("answering a request failed")
            return error_of(e)
