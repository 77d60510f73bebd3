"""The ``handler:`` section of an archive's model-config.yaml: the service's settings.

model-config.yaml owns thresholds and batching (STYLE.md): ``options`` holds :class:`DetectOptions`
as they are (its fields, defaults and validation are the pipeline's own), the rest is the service's.
Unknown keys are an error, so a typo fails the model load instead of being ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import ConfigError, InvalidInputError
from ..imageio import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS
from ..options import DetectOptions


@dataclass(frozen=True)
class ServiceConfig:
    options: DetectOptions = field(default_factory=DetectOptions)  # server defaults; requests may override
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard; the header is checked before decoding
    # the memory one image's decode may take, estimated before decoding (413 above it; large JPEGs are decoded
    # reduced instead). A worker holds at most batchSize decoded images: budget batchSize x this per worker.
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    dewarp_max_side: int = 1024  # longer side of a dewarped crop, bounds the response size
    dewarp_jpeg_quality: int = 90
    # intra-op threads of torch (and ONNX Runtime) in each worker; None leaves torch's default (all
    # cores). With one worker per core, 1 avoids oversubscription (BENCHMARKS.md).
    torch_threads: int | None = None
    # run the model at batch 1, 1 and batchSize on blank images while the worker starts, so the first
    # requests do not pay TorchScript's profiling runs
    warmup: bool = True
    # per-batch stage metrics (PolydetPreprocessMs ... in metrics.yaml): each is a line the worker prints
    # and the frontend parses; false leaves TorchServe's own metrics only
    metrics: bool = True
    # The cost one request may ask for: at most max_det_limit detections (a 400 above it; each is ~120
    # bytes of JSON) and NMS over at most max_candidates of the highest scores per image, whatever its conf
    # and multi_label ask (conf 0 with multi_label makes every anchor a candidate for every class).
    max_det_limit: int = 300
    max_candidates: int = 3000
    # Multi-image requests (a JSON "images" list, several form fields or gRPC inputs): at most this many
    # images in one request (a 413 above it). All images of a TorchServe batch go through the model as one
    # batch, so a worker holds up to batchSize x this many decoded images (each within max_decode_bytes) and
    # their letterboxed tensors at once: 16 x batchSize 4 at 640 px is ~0.3 GB of float32 input.
    max_images_per_request: int = 16
    # the bytes of encoded images one request may carry in all (a 413 above it; base64 counted decoded).
    # 16 MiB is config.properties' max_request_size, which already bounds a raw body: by default this
    # refuses nothing TorchServe lets through; lower it to bound a multi-image request's decode work.
    max_request_bytes: int = 16 * 2**20
    # on a CUDA worker, decode JPEGs and letterbox on the GPU (polydet.gpu_preprocess; PNG/WebP/progressive
    # and bad files still take the CPU path); false keeps the whole decode on the CPU
    gpu_decode: bool = True
    # a CPU worker pins itself to one CPU of its allowed set that no other worker holds
    # (polydet.serving.affinity); more workers than CPUs: the rest float. GPU workers never pin.
    pin_cpu: bool = False

    @classmethod
    def from_section(cls, section: Mapping | None) -> "ServiceConfig":
        """Validate the section: unknown keys and bad values are a ConfigError (the model fails to load)."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError(f"model-config.yaml: `handler:` must be a mapping, got {type(section).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"model-config.yaml: unknown key(s) {unknown} in `handler:`; allowed: {sorted(known)}")
        for key in ("max_pixels", "max_decode_bytes", "dewarp_max_side", "dewarp_jpeg_quality", "max_det_limit",
                    "max_candidates", "max_images_per_request", "max_request_bytes"):
            _positive_int(section, key, getattr(cls, key))
        if section.get("torch_threads") is not None:
            _positive_int(section, "torch_threads", None)
        for key in ("warmup", "metrics", "gpu_decode", "pin_cpu"):
            if not isinstance(section.get(key, True), bool):
                raise ConfigError(f"model-config.yaml: handler.{key} must be true or false, got {section[key]!r}")
        if not 1 <= section.get("dewarp_jpeg_quality", 90) <= 100:
            raise ConfigError("model-config.yaml: handler.dewarp_jpeg_quality must be in [1, 100]")
        values = dict(section)
        options = section.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"model-config.yaml: handler.options must be a mapping, got {type(options).__name__}")
        try:
            values["options"] = DetectOptions.from_dict(dict(options))
        except InvalidInputError as e:
            raise ConfigError(f"model-config.yaml: handler.options: {e}") from e
        config = cls(**values)
        if config.options.max_det > config.max_det_limit:
            raise ConfigError(f"model-config.yaml: handler.options.max_det {config.options.max_det} is above "
                              f"handler.max_det_limit {config.max_det_limit}")
        return config

    def to_section(self) -> dict:
        """The inverse of from_section (what ``polydet archive`` writes)."""
        out = dataclasses.asdict(self)
        out["options"] = dataclasses.asdict(self.options)
        return out


def _positive_int(section: Mapping, key: str, default) -> None:
    v = section.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"model-config.yaml: handler.{key} must be a positive integer, got {v!r}")
