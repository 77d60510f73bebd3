"""The Open Inference Protocol (KServe v2) tensor layout every polydet front shares: protocol-neutral data
and two conversions, numpy only (no kserve, tritonclient, grpc or TorchServe types).

Inputs (:data:`INPUTS`):
  ``images``  BYTES [N]  encoded image files (JPEG, PNG, WebP, BMP), N >= 1 (a batch is several images).
                         An element is the file's bytes, or a str holding its base64 (how BYTES travel in
                         v2 JSON, and how TorchServe's OIP frontend hands them over).
  ``options`` BYTES [1]  optional: one JSON object of detect options, the keys a REST JSON body takes
                         (conf, iou, max_det, multi_label, agnostic): its JSON text as bytes or str, or a
                         str of base64 of that text (how TorchServe's OIP frontend hands BYTES over).
Outputs (:data:`OUTPUTS`), ragged: every image's detections concatenated in image order, and
``counts`` saying how many rows each image owns (image i: rows sum(counts[:i]) .. + counts[i]):
  ``polygons``  FP32 [T,4,2]  corners TL, TR, BR, BL in original-image pixels
  ``scores``    FP32 [T]
  ``class_ids`` INT32 [T]
  ``counts``    INT32 [N]     detections per image
  ``status``    INT32 [N]     200, or the HTTP status of that image's error (400, 413, 415, 500)
  ``results``   BYTES [N]     per image the JSON the REST API answers: the output contract, or
                              ``{"error": reason, "code": status}``
Errors (:func:`request_error`): bad ``options`` or malformed inputs fail the whole request
(:func:`decode_inputs` raises InvalidInputError: the protocol's 400-class error with the reason); a
request whose every image failed fails with the first image's status and reason; otherwise the answer is a
success with each image's error in its place (``status``/``results``; its ``counts`` entry is 0).

A front: ``images, overrides = decode_inputs(tensors)``; ``results, stats =
service.detect_images(images, overrides)``; ``error = request_error(results)`` (answer it as the
protocol's error) else ``encode_outputs(results)`` (name -> array, in OUTPUTS order).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidInputError, quote
from ..results import Detections, ImageError
from .parse import RequestTooLargeError  # noqa: F401 - one owner (413); oip.RequestTooLargeError stays a name

# Datatype names of the protocol and the numpy dtype of each (BYTES: an object array of bytes).
NUMPY_DTYPES = {"BYTES": np.dtype(object), "FP32": np.dtype(np.float32), "INT32": np.dtype(np.int32)}
PLATFORM = "polydet"  # no backend of a server's own: polydet's pipeline behind the front
# An options tensor is one small JSON object; a bound keeps a hostile one from costing more than its parse.
MAX_OPTIONS_BYTES = 65536
LAYOUT = ("ragged: polygons FP32 [T,4,2] (original-image pixels, corners TL,TR,BR,BL), scores FP32 [T] and "
          "class_ids INT32 [T] hold every image's detections concatenated in image order; counts INT32 [N] "
          "says how many rows image i owns (rows sum(counts[:i]) .. +counts[i]); status INT32 [N] is 200 or "
          "that image's error status; results BYTES [N] is the REST API's JSON per image (the output "
          "contract or {\"error\", \"code\"})")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the layout. ``shape``: -1 marks a variable dimension (the v2 metadata convention)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    @property
    def dtype(self) -> np.dtype:
        return NUMPY_DTYPES[self.datatype]

    def metadata(self) -> dict:
        """The v2 metadata of this tensor: ``{"name", "datatype", "shape"}``."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


INPUTS = (TensorSpec("images", "BYTES", (-1,)), TensorSpec("options", "BYTES", (1,), optional=True))
OUTPUTS = (TensorSpec("polygons", "FP32", (-1, 4, 2)), TensorSpec("scores", "FP32", (-1,)),
           TensorSpec("class_ids", "INT32", (-1,)), TensorSpec("counts", "INT32", (-1,)),
           TensorSpec("status", "INT32", (-1,)), TensorSpec("results", "BYTES", (-1,)))
INPUT_NAMES = tuple(t.name for t in INPUTS)
OUTPUT_NAMES = tuple(t.name for t in OUTPUTS)
SPECS = {t.name: t for t in INPUTS + OUTPUTS}


def model_metadata(name: str, versions: Sequence[str] = (), platform: str = PLATFORM) -> dict:
    """The v2 model metadata of a polydet model: ``{"name", "versions", "platform", "inputs", "outputs",
    "parameters": {"layout": LAYOUT}}`` (a front whose protocol has no ``parameters`` drops that key)."""
    return {"name": name, "versions": [str(v) for v in versions], "platform": platform,
            "inputs": [t.metadata() for t in INPUTS], "outputs": [t.metadata() for t in OUTPUTS],
            "parameters": {"layout": LAYOUT}}


def _elements(name: str, value: Any) -> list:
    """A BYTES tensor's elements in row-major order (any shape; a front may add a batch axis)."""
    if isinstance(value, (bytes, bytearray, str, memoryview)):
        return [value]
    try:
        return list(np.asarray(value, dtype=object).reshape(-1))
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"input {name!r} is not a BYTES tensor: {quote(value)}") from e


def _image_bytes(i: int, item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
        return bytes(item)
    if isinstance(item, str):  # v2 JSON and TorchServe's OIP frontend carry BYTES as base64 text
        text = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInputError(f"images[{i}] is a string but not base64 of an image file: {quote(item)}") from e
    raise InvalidInputError(f"images[{i}] must be bytes (an encoded image file), got {type(item).__name__}")


def _options(value: Any) -> dict:
    items = _elements("options", value)
    if len(items) != 1:
        raise InvalidInputError(f"input 'options' must hold exactly one JSON object, got {len(items)} elements")
    text = items[0]
    if isinstance(text, (bytes, bytearray, memoryview, np.bytes_)):
        text = bytes(text)
    elif not isinstance(text, str):
        raise InvalidInputError(f"input 'options' must be BYTES (JSON text), got {type(text).__name__}")
    if len(text) > MAX_OPTIONS_BYTES:
        raise InvalidInputError(f"input 'options' is {len(text)} bytes; at most {MAX_OPTIONS_BYTES}")
    if isinstance(text, str) and not text.lstrip().startswith("{"):  # base64 never holds a '{'
        try:
            text = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass  # not base64 either: the JSON error below names it
    try:
        opts = json.loads(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError(f"input 'options' is not JSON: {quote(text)}") from e
    if not isinstance(opts, dict):
        raise InvalidInputError(f"input 'options' must be a JSON object, got {quote(opts)}")
    return opts


def limits(config) -> dict:
    """A ServiceConfig's request limits (model-config.yaml's handler section) as decode_inputs takes them."""
    return {"max_images": config.max_images_per_request, "max_bytes": config.max_request_bytes}


def decode_inputs(tensors: Mapping[str, Any], datatypes: Mapping[str, str] | None = None, *,
                  max_images: int | None = None, max_bytes: int | None = None) -> tuple[list[bytes], dict]:
    """Input tensors (name -> a BYTES tensor: numpy array, list, or one bytes/str) -> (image files, option
    overrides). ``datatypes``: the datatype each input was declared with, where the protocol says.
    ``max_images`` / ``max_bytes`` (ServiceConfig's max_images_per_request / max_request_bytes): above
    them, RequestTooLargeError (413). Raises InvalidInputError (400) naming any other problem. The
    options' keys and values are checked by DetectionService.detect_images (DetectOptions), which raises
    InvalidInputError the same way."""
    unknown = sorted(set(tensors) - set(INPUT_NAMES))
    if unknown:
        raise InvalidInputError(f"unknown input(s) {quote(unknown)}; this model takes {list(INPUT_NAMES)}")
    for name, datatype in (datatypes or {}).items():
        if name in SPECS and datatype != SPECS[name].datatype:
            raise InvalidInputError(f"input {name!r} must be {SPECS[name].datatype}, got {quote(datatype)}")
    if "images" not in tensors:
        raise InvalidInputError("input 'images' (BYTES [N], encoded image files) is missing")
    items = _elements("images", tensors["images"])
    if not items:
        raise InvalidInputError("input 'images' is empty; send at least one image")
    if max_images is not None and len(items) > max_images:  # the REST path's words (polydet.serving.parse)
        raise RequestTooLargeError(f"{len(items)} images in one request; this server takes at most {max_images} "
                                   "(handler.max_images_per_request)")
    images = [_image_bytes(i, item) for i, item in enumerate(items)]
    if max_bytes is not None and (total := sum(map(len, images))) > max_bytes:
        raise RequestTooLargeError(f"the request's images total {total} bytes; this server takes at most "
                                   f"{max_bytes} per request (handler.max_request_bytes)")
    return images, (_options(tensors["options"]) if "options" in tensors else {})


def result_json(result: Detections | ImageError) -> bytes:
    """One image's REST answer as compact JSON bytes (the ``results`` element)."""
    return json.dumps(result.to_dict(), separators=(",", ":")).encode("utf-8")


def encode_outputs(results: Sequence[Detections | ImageError]) -> dict[str, np.ndarray]:
    """Typed per-image results -> the output tensors (name -> array of the spec's dtype), OUTPUTS order."""
    good = [r for r in results if isinstance(r, Detections)]
    polygons = [np.asarray(r.polygons, np.float32).reshape(-1, 4, 2) for r in good]
    out = {
        "polygons": np.concatenate(polygons) if polygons else np.zeros((0, 4, 2), np.float32),
        "scores": np.concatenate([np.asarray(r.scores, np.float32).reshape(-1) for r in good] or
                                 [np.zeros(0, np.float32)]),
        "class_ids": np.concatenate([np.asarray(r.class_ids).astype(np.int32).reshape(-1) for r in good] or
                                    [np.zeros(0, np.int32)]),
        "counts": np.array([len(r.scores) if isinstance(r, Detections) else 0 for r in results], np.int32),
        "status": np.array([200 if isinstance(r, Detections) else r.status for r in results], np.int32),
        "results": np.empty(len(results), dtype=object),
    }
    out["results"][:] = [result_json(r) for r in results]
    return {name: out[name] for name in OUTPUT_NAMES}


def request_error(results: Sequence[Detections | ImageError]) -> ImageError | None:
    """The whole request's error when every image failed (the first image's), else None."""
    if results and all(isinstance(r, ImageError) for r in results):
        return results[0]
    return None


def split_outputs(outputs: Mapping[str, Any]) -> list[dict]:
    """Output tensors -> one dict per image: ``{"status", "polygons" (K,4,2), "scores" (K,), "class_ids"
    (K,)}`` (a client's view of the ragged layout; an errored image has K = 0)."""
    counts = np.asarray(outputs["counts"], np.int64).reshape(-1)
    ends = np.cumsum(counts)
    polygons = np.asarray(outputs["polygons"], np.float32).reshape(-1, 4, 2)
    scores = np.asarray(outputs["scores"], np.float32).reshape(-1)
    class_ids = np.asarray(outputs["class_ids"], np.int32).reshape(-1)
    if not len(polygons) == len(scores) == len(class_ids) == (int(ends[-1]) if len(ends) else 0):
        raise ValueError(f"ragged outputs disagree: {len(polygons)} polygons, {len(scores)} scores, "
                         f"{len(class_ids)} class ids, counts sum to {int(ends[-1]) if len(ends) else 0}")
    status = np.asarray(outputs["status"], np.int64).reshape(-1)
    return [{"status": int(s), "polygons": polygons[e - c:e], "scores": scores[e - c:e],
             "class_ids": class_ids[e - c:e]} for s, c, e in zip(status, counts, ends)]
