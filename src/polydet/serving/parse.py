"""A request's named inputs, as a transport delivers them -> :class:`Request`: its images and options.

One image (answered with one output-contract object, as always):

- raw image bytes (REST body; key ``body``), or a multipart form with one field (any name);
- a JSON object ``{"image": "<base64>", "conf": 0.4, ..., "dewarp": true}``, parsed already (a dict) or as
  bytes/str (gRPC, and REST: config.properties' decode_input_request=false leaves JSON to us);
- gRPC: input map key ``data`` (or any single key), holding image bytes or the JSON object.

Several images (answered ``{"results": [...]}``, one entry per image, in order):

- a JSON object ``{"images": ["<base64>", ...], "conf": ..., "dewarp": ...}``: the options apply to all;
- several inputs (multipart files, gRPC input keys), each holding image bytes, in the natural order of
  their names (``image2`` before ``image10``): a gRPC input map has no order, and one rule serves every
  transport. TorchServe 0.12.0 keeps only the last of several form fields that share a name.

``body`` is the whole REST body: other keys beside it are query-string parameters, ignored as before.
A bad base64 string is that image's 400 in its place; the whole request is refused (400, or 413 above
ServiceConfig's max_images_per_request / max_request_bytes) only for what concerns all its images.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import InvalidInputError, bounded, quote
from ..results import ImageError
from .config import ServiceConfig

log = logging.getLogger(__name__)

BODY_KEY = "body"  # TorchServe's key for a whole REST body; other keys beside it are query parameters
JSON_ONLY_KEYS = ("image", "images", "dewarp")  # keys of a JSON request that are not DetectOptions
# A request is one flat object; json.loads recurses once per level (100,000 levels: a RecursionError, which
# was answered 500 with a traceback per request), so nesting is measured before parsing.
MAX_JSON_DEPTH = 16
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class RequestTooLargeError(InvalidInputError):
    """A request carries more images or image bytes than the server takes. HTTP 413."""

    http_status = 413


@dataclass(frozen=True)
class Request:
    """One parsed request: its images (bytes, or the ImageError of one refused while parsing, such as bad
    base64), the option overrides for all of them, and whether it is answered as a list (``multi``)."""

    images: tuple
    options: dict
    dewarp: bool = False
    multi: bool = False

    @property
    def image(self) -> bytes:
        """A single-image request's bytes."""
        if self.multi:
            raise ValueError("a multi-image request has no single image: use .images")
        return self.images[0]


def json_depth(text: bytes) -> int:
    """How deep objects and arrays nest in JSON ``text`` (brackets inside strings do not count); an upper
    bound for malformed text. Vectorised: a 16 MB body takes milliseconds."""
    import numpy as np

    if text.count(b"[") + text.count(b"{") <= MAX_JSON_DEPTH:  # the usual request: no need to look closer
        return text.count(b"[") + text.count(b"{")
    a = np.frombuffer(_JSON_STRING.sub(b'""', text), np.uint8)
    step = (a == ord("{")).astype(np.int64) + (a == ord("[")) - (a == ord("}")) - (a == ord("]"))
    return int(np.cumsum(step).max(initial=0))


def parse_json(text: bytes, quiet: bool = False):
    """JSON body -> its value. Too deep or malformed: InvalidInputError (400), with one log line unless
    ``quiet`` (a caller that only peeks, and leaves the answer to the parse that follows)."""
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
        if not quiet:
            log.info("polydet: refused a JSON body of %d bytes: %s", len(text), e)
        raise


def natural_key(name: str) -> list:
    """Sort key of an input's name: digit runs compare as numbers (``image2`` < ``image10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def parse_request(req: Mapping[str, Any], config: ServiceConfig | None = None) -> Request:
    """A request's named inputs -> Request. Raises InvalidInputError (HTTP 400) or RequestTooLargeError
    (413, above ``config``'s limits; default ServiceConfig()) with the reason."""
    config = config or ServiceConfig()
    if not isinstance(req, Mapping) or not req:
        raise InvalidInputError("empty request: send an image as the body, a form field or JSON {\"image\": ...}")
    if BODY_KEY in req or len(req) == 1:
        value = req[BODY_KEY] if BODY_KEY in req else next(iter(req.values()))
        return _limited(_parse_one(value, config), config)
    names = sorted(req, key=lambda k: natural_key(str(k)))
    _check_count(len(names), config)
    images = tuple(bytes(v) if isinstance(v, (bytes, bytearray)) else
                   ImageError(400, f"input {quote(name)} is not image bytes (got {type(v).__name__}); several "
                                   "inputs carry one image each, options need the JSON form")
                   for name, v in ((n, req[n]) for n in names))
    return _limited(Request(images, {}, multi=True), config)


def _parse_one(value, config: ServiceConfig) -> Request:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)) and bytes(value[:64]).lstrip()[:1] == b"{":
        value = parse_json(bytes(value))
    if isinstance(value, (bytes, bytearray)):
        return Request((bytes(value),), {})
    if not isinstance(value, dict):
        raise InvalidInputError(f"JSON body must be an object with an \"image\" key, got {type(value).__name__}")
    dewarp = value.get("dewarp", False)
    if not isinstance(dewarp, bool):
        raise InvalidInputError(f"\"dewarp\" must be true or false, got {quote(dewarp)}")
    options = {k: v for k, v in value.items() if k not in JSON_ONLY_KEYS}
    if "images" in value:
        if "image" in value:
            raise InvalidInputError("JSON body has both \"image\" and \"images\": send one image or a list")
        return Request(_b64_list(value["images"], config), options, dewarp, multi=True)
    if "image" not in value:
        raise InvalidInputError("JSON body has no \"image\" key (base64 of the image file) nor \"images\" (a list)")
    b64 = value["image"]
    if not isinstance(b64, str):
        raise InvalidInputError("\"image\" must be a base64 string")
    return Request((_b64decode(b64, "\"image\""),), options, dewarp)


def _b64decode(b64: str, what: str) -> bytes:
    try:
        return base64.b64decode(b64.split(",", 1)[1] if b64.startswith("data:") else b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInputError(f"{what} is not valid base64: {bounded(str(e))}") from e


def _b64_list(items, config: ServiceConfig) -> tuple:
    """``"images"``: a non-empty list; each entry's bytes, or its 400 in its place (counted before decoding)."""
    if not isinstance(items, list) or not items:
        raise InvalidInputError(f"\"images\" must be a non-empty list of base64 strings, got {quote(items)}")
    _check_count(len(items), config)
    out = []
    for i, b64 in enumerate(items):
        if not isinstance(b64, str):
            out.append(ImageError(400, f"\"images\"[{i}] must be a base64 string, got {type(b64).__name__}"))
            continue
        try:
            out.append(_b64decode(b64, f"\"images\"[{i}]"))
        except InvalidInputError as e:
            out.append(ImageError(400, str(e)))
    return tuple(out)


def _check_count(n: int, config: ServiceConfig) -> None:
    if n > config.max_images_per_request:
        raise RequestTooLargeError(f"{n} images in one request; this server takes at most "
                                   f"{config.max_images_per_request} (handler.max_images_per_request)")


def _limited(req: Request, config: ServiceConfig) -> Request:
    """``req`` if within the server's limits, else RequestTooLargeError (413) naming the limit."""
    _check_count(len(req.images), config)
    total = sum(len(b) for b in req.images if isinstance(b, bytes))
    if total > config.max_request_bytes:
        raise RequestTooLargeError(f"the request's images total {total} bytes; this server takes at most "
                                   f"{config.max_request_bytes} per request (handler.max_request_bytes)")
    return req
