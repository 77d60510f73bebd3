"""The protocol-neutral detection service: one archive's Detector, and requests -> (status, body).

A front (the TorchServe handler, an Open Inference Protocol server, a PyTriton binding) hands over a
batch of requests, each a mapping of named inputs as its transport delivers them, and gets back one
:class:`Reply` per request plus the batch's numbers for its metrics. What a request may be (one image as
raw bytes, a form field or JSON; several as a JSON "images" list or several inputs) is
:mod:`polydet.serving.parse`'s. Every image of every request in the batch goes through the Detector as
one batch: a request of N images pays the transport's per-request cost once.

Bad requests get their own 4xx reply and bad images their own error in place; the rest of the batch is
answered normally. A multi-image request is answered ``{"results": [...]}`` (each entry an output-contract
object or ``{"error", "code"}``), 200 when at least one image succeeded; when all failed, with the first
image's status, and ``"error"``/``"code"`` beside the results.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..backends import load_backend
from ..errors import InvalidInputError, PolydetError, bounded
from ..pipeline import Detector, default_preprocessor
from ..options import DetectOptions
from ..preprocess import error_of, to_rgb
from ..results import Detections, ImageError, Timings
from .affinity import claim_cpu
from .config import ServiceConfig
from .parse import (BODY_KEY, JSON_ONLY_KEYS, MAX_JSON_DEPTH, Request, RequestTooLargeError,  # noqa: F401
                    json_depth, parse_json, parse_request)

log = logging.getLogger(__name__)

# Names of the per-batch metrics, declared in polydet/serving/metrics.yaml (TorchServe drops undeclared
# handler metrics); other fronts may reuse them. They count images: a request of N images is N.
METRICS = {"preprocess": "PolydetPreprocessMs", "inference": "PolydetInferenceMs",
           "postprocess": "PolydetPostprocessMs", "detections": "PolydetDetectionsPerImage",
           "batch": "PolydetBatchSize", "bad": "PolydetBadRequests", "handler": "HandlerTime",
           "images": "PolydetImages"}
# Recorded only by workers on a GPU, with the others' Device dimension (cuda:N): the CUDA caching allocator's
# memory reserved by this worker, and the GPU's utilisation (NVML, at most once a second; absent without pynvml).
GPU_METRICS = {"memory": "PolydetGpuMemoryMB", "utilization": "PolydetGpuUtilization"}


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict


@dataclass(frozen=True)
class BatchStats:
    """Per-batch numbers for a front's metrics, in images (a request of N images counts N; a request refused
    whole counts 1). ``batch``: images the batch carried; ``images``: those handed to the Detector; ``bad``:
    images answered with a 4xx; ``detections``: mean per answered image (None if none)."""

    timings: Timings
    batch: int
    images: int
    bad: int
    detections: float | None


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
        self.started = ""  # what from_artifact did at start (CPU pinning, warm-up), for describe()

    @classmethod
    def from_artifact(cls, artifact: str, section: Mapping | None = None, device: str = "cpu",
                      batch_size: int = 1) -> "DetectionService":
        """Build from an archive: its artifact and the ``handler:`` section of its model-config.yaml.
        Sets torch's threads, builds the Detector (which loads the NMS kernel) and, unless the section says
        ``warmup: false``, loads the JPEG scan check's kernel and runs the model at batch 1, 1 and
        ``batch_size`` so requests never pay the first calls' profiling."""
        config = ServiceConfig.from_section(section)
        pinned = claim_cpu() if config.pin_cpu and device == "cpu" else None
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        backend = load_backend(artifact, device=device)
        # the preprocessor Detector would build, with the archive's decode budget
        pre = default_preprocessor(backend, config.max_pixels, config.max_decode_bytes, config.gpu_decode)
        detector = Detector(backend, options=config.options, max_pixels=config.max_pixels, preprocessor=pre,
                            max_candidates=config.max_candidates)
        service = cls(detector, config)
        if pinned is not None:
            service.started = f", pinned to CPU {pinned}"
        if config.warmup:
            from ..jpegcheck import warmup as load_jpeg_check

            t0 = time.perf_counter()
            load_jpeg_check()  # the first JPEG would pay for it otherwise
            detector.warmup((1, 1, max(1, batch_size)))
            service.started += f", warmed up at batch {(1, 1, max(1, batch_size))} in {time.perf_counter() - t0:.2f} s"
        return service

    def describe(self) -> str:
        d = self.detector
        return (f"{d.backend.path.name} on {d.device}, classes {d.info.names}, imgsz {d.info.imgsz}, "
                f"NMS {d.nms_backend}, preprocess {type(d.preprocessor).__name__}{self.started}, {self.config}")

    def answer(self, requests: Sequence[Mapping[str, Any]]) -> tuple[list[Reply], BatchStats]:
        """One Reply per request, in order; all good images of all requests through the Detector as one batch."""
        t0 = time.perf_counter()
        parsed: list = []  # (Request, DetectOptions) or the ImageError of a request refused whole
        for raw in requests:
            try:
                req = parse_request(raw, self.config)
                parsed.append((req, self.options_for(req.options)))
            except Exception as e:  # noqa: BLE001 - every failure becomes this request's answer
                parsed.append(error_of(e))
        # per request, its images' results: an image refused while parsing is already its ImageError
        results = [list(p[0].images) if isinstance(p, tuple) else [p] for p in parsed]
        slots = [(k, j) for k, p in enumerate(parsed) if isinstance(p, tuple)
                 for j, img in enumerate(p[0].images) if not isinstance(img, ImageError)]
        parse_ms = (time.perf_counter() - t0) * 1e3
        batch = self.detector.detect([results[k][j] for k, j in slots], [parsed[k][1] for k, _ in slots])
        t1 = time.perf_counter()
        for (k, j), res, rgb in zip(slots, batch, batch.pixels):
            req = parsed[k][0]
            results[k][j] = self._reply_body(res, req.dewarp, rgb, req.images[j])
        replies = [self._reply(p, r) for p, r in zip(parsed, results)]
        flat = [r for rs in results for r in rs]
        ndet = [len(r["detections"]) for r in flat if isinstance(r, dict)]
        t = batch.timings
        timings = Timings(t.preprocess + parse_ms, t.inference, t.postprocess + (time.perf_counter() - t1) * 1e3)
        stats = BatchStats(timings, len(flat), len(slots),
                           sum(isinstance(r, ImageError) and 400 <= r.status < 500 for r in flat),
                           sum(ndet) / len(ndet) if ndet else None)
        return replies, stats

    @staticmethod
    def _reply(parsed, results: list) -> Reply:
        """A request's Reply: one image as the output contract (or its error), several as {"results": [...]}:
        200 if any image succeeded, else the first image's status with its reason beside the results."""
        if not isinstance(parsed, tuple) or not parsed[0].multi:
            r = results[0]
            return Reply(r.status, r.to_dict()) if isinstance(r, ImageError) else Reply(200, r)
        body = {"results": [r.to_dict() if isinstance(r, ImageError) else r for r in results]}
        if any(not isinstance(r, ImageError) for r in results):
            return Reply(200, body)
        first = results[0]
        reason = bounded(f"all {len(results)} images failed; the first: {first.reason}")
        return Reply(first.status, {"error": reason, "code": first.status, **body})

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

    def _reply_body(self, res, dewarp: bool, rgb, image: bytes) -> dict | ImageError:
        if isinstance(res, ImageError):
            return res
        try:
            body = res.to_dict()
            if dewarp:
                if rgb is None:  # decoded on the GPU, no host pixels: this one again on the CPU
                    c = self.config
                    rgb = to_rgb(image, c.max_pixels, c.max_decode_bytes, self.detector.info.imgsz).pixels
                body["dewarp"] = dewarp_field(rgb, res, self.config.dewarp_max_side, self.config.dewarp_jpeg_quality)
            return body
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, PolydetError):
                log.exception("answering a request failed")
            return error_of(e)
