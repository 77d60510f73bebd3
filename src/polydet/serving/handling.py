"""Transport-independent parts of the TorchServe handler: config, request parsing, batch answering.

``handlers/polydet_handler.py`` is only the TorchServe skin over :class:`BatchAnswerer`; everything here
is testable without a server. A request is one of (as TorchServe hands it to the handler):

- raw image bytes (REST body with Content-Type application/octet-stream or image/*: key ``body``);
- a multipart form with one field, any name (key = the field name);
- a JSON object ``{"image": "<base64>", "conf": 0.4, ..., "dewarp": true}`` (REST: already parsed into a
  dict under ``body``; gRPC or text/plain: the same JSON as bytes/str);
- gRPC: input map key ``data`` (or any single key), holding image bytes or the JSON object.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
from dataclasses import dataclass

from ..errors import ConfigError, InvalidInputError, PolydetError

log = logging.getLogger(__name__)

# Names declared in polydet/serving/metrics.yaml (TorchServe drops undeclared handler metrics).
METRICS = {"preprocess": "PolydetPreprocessMs", "inference": "PolydetInferenceMs",
           "postprocess": "PolydetPostprocessMs", "detections": "PolydetDetectionsPerImage",
           "batch": "PolydetBatchSize", "bad": "PolydetBadRequests", "handler": "HandlerTime"}
PAYLOAD_KEYS = ("body", "data")  # preferred when a request carries several inputs
JSON_ONLY_KEYS = ("image", "dewarp")  # keys of a JSON request that are not DetectOptions


@dataclass(frozen=True)
class HandlerConfig:
    """The ``handler:`` section of an archive's model-config.yaml (thresholds are server defaults)."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 100
    multi_label: bool = False
    agnostic: bool = False
    max_pixels: int = 50_000_000  # decompression-bomb guard; the header is checked before decoding
    dewarp_max_side: int = 1024  # longer side of a dewarped crop, bounds the response size
    dewarp_jpeg_quality: int = 90
    # intra-op threads of torch in each worker; None leaves torch's default (all cores). With one
    # worker per core, 1 avoids oversubscription (measured in BENCHMARKS.md: 2 threads per worker on
    # 2 shared cores cost up to 10x throughput).
    torch_threads: int | None = None
    # run the model at batch 1, 1 and batchSize on blank images while the worker starts, so the first
    # requests do not pay TorchScript's profiling runs (Detector.warmup: ~0.3 s once per worker here)
    warmup: bool = True

    @classmethod
    def from_yaml_section(cls, section) -> "HandlerConfig":
        """Validate the section: unknown keys and bad values are a ConfigError (the model fails to load)."""
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ConfigError(f"model-config.yaml: `handler:` must be a mapping, got {type(section).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"model-config.yaml: unknown key(s) {unknown} in `handler:`; allowed: {sorted(known)}")
        for key in ("max_pixels", "dewarp_max_side", "dewarp_jpeg_quality"):
            v = section.get(key, getattr(cls, key))
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"model-config.yaml: handler.{key} must be a positive integer, got {v!r}")
        threads = section.get("torch_threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"model-config.yaml: handler.torch_threads must be a positive integer, got {threads!r}")
        if not isinstance(section.get("warmup", True), bool):
            raise ConfigError(f"model-config.yaml: handler.warmup must be true or false, got {section['warmup']!r}")
        if not 1 <= section.get("dewarp_jpeg_quality", 90) <= 100:
            raise ConfigError("model-config.yaml: handler.dewarp_jpeg_quality must be in [1, 100]")
        cfg = cls(**section)
        cfg.options()  # validate thresholds with the pipeline's own rules
        return cfg

    def options(self):
        from ..pipeline import DetectOptions

        d = {k: getattr(self, k) for k in ("conf", "iou", "max_det", "multi_label", "agnostic")}
        try:
            return DetectOptions.from_dict(d)
        except InvalidInputError as e:
            raise ConfigError(f"model-config.yaml: handler: {e}") from e


@dataclass
class Request:
    """One parsed request: image bytes plus per-request option overrides."""

    image: bytes
    options: dict
    dewarp: bool = False


def _payload(req: dict):
    if not isinstance(req, dict) or not req:
        raise InvalidInputError("empty request: send an image as the body, a form field or JSON {\"image\": ...}")
    for key in PAYLOAD_KEYS:
        if key in req:
            return req[key]
    if len(req) == 1:
        return next(iter(req.values()))
    raise InvalidInputError(f"expected one input (an image or a JSON object), got fields {sorted(req)}")


def parse_request(req: dict) -> Request:
    """TorchServe's per-request dict -> Request. Raises InvalidInputError (HTTP 400) with the reason."""
    value = _payload(req)
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)) and bytes(value[:1]) == b"{":  # JSON sent as bytes (gRPC)
        try:
            value = json.loads(bytes(value))
        except ValueError as e:
            raise InvalidInputError(f"body starts with '{{' but is not valid JSON: {e}") from e
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
        raise InvalidInputError(f"\"image\" is not valid base64: {e}") from e
    dewarp = value.get("dewarp", False)
    if not isinstance(dewarp, bool):
        raise InvalidInputError(f"\"dewarp\" must be true or false, got {dewarp!r}")
    return Request(data, {k: v for k, v in value.items() if k not in JSON_ONLY_KEYS}, dewarp)


def error_body(exc: BaseException) -> tuple[int, dict]:
    """(HTTP status, JSON body) for an exception: PolydetError keeps its status, anything else is 500."""
    code = exc.http_status if isinstance(exc, PolydetError) else 500
    msg = str(exc) if isinstance(exc, PolydetError) else f"internal error: {type(exc).__name__}"
    return code, {"error": msg, "code": code}


def dewarp_field(img, result: dict, max_side: int, quality: int) -> dict | None:
    """{"index", "width", "height", "jpeg_base64"}: the rectified crop of the best-scored detection whose
    quad has an area (a degenerate quad clamped to the image edge cannot be rectified); None if none."""
    import cv2

    from ..ops.warp import dewarp

    for index, det in enumerate(result["detections"]):
        try:
            crop = dewarp(img, det["polygon"], max_side=max_side)
        except InvalidInputError:  # no area: try the next one
            continue
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding of the dewarped crop failed")
        return {"index": index, "width": int(crop.shape[1]), "height": int(crop.shape[0]),
                "jpeg_base64": base64.b64encode(buf.tobytes()).decode("ascii")}
    return None


class BatchAnswerer:
    """Answers a TorchServe batch: one result or one error per request, never an exception.

    ``answer(requests) -> (bodies, statuses, stats)``: bodies are dicts, statuses HTTP codes, stats the
    per-batch numbers for metrics. One bad request only fails itself; if the model fails on a batch the
    good requests are retried one by one so only the culprit gets the error.
    """

    def __init__(self, detector, config: HandlerConfig):
        self.detector = detector
        self.config = config
        self.options = config.options()

    def answer(self, requests: list) -> tuple[list[dict], list[int], dict]:
        from ..imageio import decode_image

        n = len(requests)
        bodies: list = [None] * n
        statuses = [200] * n
        t0 = time.perf_counter()
        good, images, opts, dewarps = [], [], [], []
        for i, raw in enumerate(requests):
            try:
                req = parse_request(raw)
                o = self.options.replace(**req.options) if req.options else self.options
                images.append(decode_image(req.image, self.config.max_pixels, rgb=True))
                good.append(i)
                opts.append(o)
                dewarps.append(req.dewarp)
            except Exception as e:  # noqa: BLE001 - every failure becomes this request's answer
                statuses[i], bodies[i] = error_body(e)
        decode_ms = (time.perf_counter() - t0) * 1e3
        timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        results = self._detect(images, opts, timings)
        t1 = time.perf_counter()
        ndet = []
        for k, i in enumerate(good):
            res = results[k]
            try:
                if isinstance(res, BaseException):
                    raise res
                if dewarps[k]:
                    res["dewarp"] = dewarp_field(images[k][..., ::-1], res, self.config.dewarp_max_side,
                                                 self.config.dewarp_jpeg_quality)
                bodies[i] = res
                ndet.append(len(res["detections"]))
            except Exception as e:  # noqa: BLE001
                if not isinstance(e, PolydetError):
                    log.exception("request %d of the batch failed", i)
                statuses[i], bodies[i] = error_body(e)
        stats = {"preprocess": decode_ms + timings["preprocess"], "inference": timings["inference"],
                 "postprocess": timings["postprocess"] + (time.perf_counter() - t1) * 1e3,
                 "batch": n, "images": len(good), "bad": sum(400 <= s < 500 for s in statuses),
                 "detections": sum(ndet) / len(ndet) if ndet else None}
        return bodies, statuses, stats

    def _detect(self, images, opts, timings) -> list:
        """Detector.detect on the batch; on failure, image by image (an exception stands for its result)."""
        if not images:
            return []
        try:
            results = self.detector.detect(images, opts, rgb=True)  # decoded once, straight to RGB
            for k, v in self.detector.last_timings.items():
                timings[k] += v
            return results
        except Exception as e:  # noqa: BLE001
            if len(images) == 1:
                log.exception("detection failed")
                return [e]
            log.warning("batch of %d failed; retrying one by one", len(images), exc_info=True)
            out = []
            for img, o in zip(images, opts):
                out.extend(self._detect([img], [o], timings))
            return out
