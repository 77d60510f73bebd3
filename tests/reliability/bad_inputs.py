"""The bad-input corpus, generated in memory (nothing large is committed).

Each case is a request to ``POST /predictions/<model>[/<version>]`` with the exact status it must get and
what its JSON body must say:

- handler answers (the request reached our handler): ``{"error": "...<reason>...", "code": status}``;
- TorchServe answers (it never reached the handler: unknown model, body too large...): TorchServe's own
  ``{"code", "type", "message"}`` with ``type`` and a part of ``message`` checked;
- valid images (``status == 200``): the output contract for an image of ``size`` (width, height).
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from dataclasses import dataclass, field

import numpy as np
from serving_helpers import page_image

OCTET = {"Content-Type": "application/octet-stream"}
MAX_PIXELS = 4_000_000  # handler.max_pixels of the test archive (archive.sh MAX_PIXELS): 2000x2000
MAX_REQUEST_SIZE = 16_777_216  # config.properties max_request_size


@dataclass
class Case:
    name: str
    kwargs: dict  # for requests.post: data / json / files / headers
    status: int
    reason: str = ""  # substring of the handler's "error" (or of TorchServe's "message")
    ts_type: str | None = None  # TorchServe exception type when TorchServe itself answers
    size: tuple[int, int] | None = None  # (width, height) of a valid image
    model: str = "polydet"
    version: str = ""
    batchable: bool = True  # reaches the handler, so it can share a batch with good requests
    headers: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/predictions/{self.model}" + (f"/{self.version}" if self.version else "")


# A light quad on a noisy background; encoded here by PIL, so read as RGB. serving_helpers is in
# tests/integration, put on sys.path by this suite's conftest.
page = page_image


def pil_bytes(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(arr: np.ndarray, **kw) -> bytes:
    from PIL import Image

    return pil_bytes(Image.fromarray(arr), "JPEG", quality=90, **kw)


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    return pil_bytes(Image.fromarray(arr), "PNG")


def png_declaring(w: int, h: int) -> bytes:
    """A 2x2 PNG whose IHDR (with a valid CRC) declares w x h: a decompression bomb's header."""
    data = bytearray(png(np.zeros((2, 2, 3), np.uint8)))
    data[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def png_bomb(w: int = 7000, h: int = 7000) -> bytes:
    """A valid grayscale PNG of w x h zeros: 7000x7000 is 49 MP in 47 KB (zlib's ~1000:1 on zeros), under the
    50 MP default cap: the small-file bomb of issue 17.4."""
    from PIL import Image

    return pil_bytes(Image.new("L", (w, h), 0), "PNG")


def jpeg_declaring(data: bytes, w: int, h: int) -> bytes:
    """``data`` (a JPEG) with its frame header (SOF) patched to declare w x h over the original scan."""
    out, i = bytearray(data), 2
    while out[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the segments to the frame header
        i += 2 + int.from_bytes(out[i + 2:i + 4], "big")
    out[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(out)


def png_without_iend(data: bytes) -> bytes:
    """A PNG cut before its end chunk (the last 12 bytes: length, IEND, CRC): the pixels are all there."""
    assert data[-8:-4] == b"IEND"
    return data[:-12]


def png_bad_ihdr_crc() -> bytes:
    data = bytearray(png(page(64, 48)))
    data[29] ^= 0xFF  # IHDR CRC
    return bytes(data)


def png_bad_idat() -> bytes:
    """Valid chunk structure and CRCs, but the zlib stream inside IDAT is garbage."""
    raw = png(page(64, 48))
    i = raw.index(b"IDAT")
    n = int.from_bytes(raw[i - 4:i], "big")
    body = bytes(b ^ 0x5A for b in raw[i + 4:i + 4 + n])
    crc = zlib.crc32(b"IDAT" + body).to_bytes(4, "big")
    return raw[:i + 4] + body + crc + raw[i + 8 + n:]


def exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """A JPEG whose pixels are ``upright`` turned 90 degrees counter-clockwise, with EXIF Orientation 6
    ("rotate 90 CW to display"): a viewer that honours EXIF shows ``upright``."""
    from PIL import Image

    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return pil_bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


def deep_json(levels: int = 100_000) -> bytes:
    """{"image": [[[...]]]} nested ``levels`` arrays deep: json.loads recurses once per level."""
    return b'{"image": ' + b"[" * levels + b"]" * levels + b"}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multipart_without_file() -> tuple[bytes, dict]:
    """A multipart/form-data body with zero parts."""
    boundary = "polydetboundary"
    return f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def corpus() -> list[Case]:
    from PIL import Image

    good = page()
    good_jpeg = jpeg(good)
    rng = np.random.default_rng(7)
    gray = np.asarray(Image.fromarray(good).convert("L"))
    rgba = np.dstack([good, np.full(good.shape[:2], 200, np.uint8)])
    img16 = (good[..., 0].astype(np.uint16) * 257)
    cmyk = pil_bytes(Image.fromarray(good).convert("CMYK"), "JPEG", quality=90)
    raw = lambda data, **kw: dict(data=data, headers=OCTET, **kw)  # noqa: E731
    empty_multipart, mp_headers = multipart_without_file()

    def err(name, kwargs, status, reason, **kw):
        return Case(name, kwargs, status, reason, **kw)

    def ok(name, data, size):
        return Case(name, raw(data), 200, size=size)

    return [
        # -- bytes that are not an image ----------------------------------------------------------
        err("empty body", raw(b""), 400, "empty"),
        err("one byte", raw(b"\xff"), 400, "cannot decode image"),
        err("random bytes", raw(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()), 400, "cannot decode image"),
        err("jpeg: only SOI", raw(good_jpeg[:2]), 400, "corrupt or truncated JPEG image (2 bytes): unreadable header"),
        err("jpeg truncated in the header", raw(good_jpeg[:120]), 400, "JPEG"),
        err("jpeg truncated at 50 %", raw(good_jpeg[: len(good_jpeg) // 2]), 400, "corrupt JPEG image"),
        err("jpeg truncated at 90 %", raw(good_jpeg[: len(good_jpeg) * 9 // 10]), 400, "corrupt JPEG image"),
        err("png with a broken IHDR CRC", raw(png_bad_ihdr_crc()), 400, "corrupt or truncated PNG image"),
        err("png with corrupt IDAT data", raw(png_bad_idat()), 400, "corrupt PNG image"),
        # -- corrupt files the codecs decode silently (issue 17.4/17.7; before: 200, grey or garbled) --------
        err("jpeg header declaring 1900x1900 over a 480x360 scan", raw(jpeg_declaring(good_jpeg, 1900, 1900)), 400,
            "corrupt JPEG image: the scan data ends after 690 of the 14161 MCUs the frame header declares"),
        err("jpeg frame header 480x720 over a 480x360 scan", raw(jpeg_declaring(good_jpeg, 480, 720)), 400,
            "corrupt JPEG image: the scan data ends after 690 of the 1350 MCUs"),
        err("jpeg frame header 240x360 over a 480x360 scan", raw(jpeg_declaring(good_jpeg, 240, 360)), 400,
            "corrupt JPEG image: extraneous scan data after MCU 345 of 345"),
        err("png without IEND", raw(png_without_iend(png(good))), 400, "corrupt PNG image: no IEND chunk"),
        err("plain text", raw(b"hello, this is plain text, not an image\n" * 20), 400, "cannot decode image"),
        err("html", raw(b"<!DOCTYPE html><html><body><img src=x></body></html>"), 415, "look like HTML"),
        err("pdf", raw(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"),
            415, "look like PDF"),
        err("gif", raw(pil_bytes(Image.fromarray(good).convert("P"), "GIF")), 415, "unsupported image format GIF"),
        err("tiff", raw(pil_bytes(Image.fromarray(good), "TIFF")), 415, "unsupported image format TIFF"),
        err("decompression bomb (PNG declaring 30000x30000)", raw(png_declaring(30000, 30000)), 413,
            "image too large (limit 4000000 pixels)"),
        err("bomb under PIL's own limit (PNG declaring 5000x5000)", raw(png_declaring(5000, 5000)), 413,
            "5000x5000 = 25000000 pixels, above the limit of 4000000"),
        err("above max_pixels (real 2100x2000 JPEG)", raw(jpeg(page(2100, 2000, seed=2))), 413,
            "2100x2000 = 4200000 pixels, above the limit of 4000000"),
        # -- valid images in unusual forms: answered ----------------------------------------------
        ok("just under max_pixels (1999x2000 JPEG)", jpeg(page(1999, 2000, seed=3)), (1999, 2000)),
        ok("grayscale jpeg", jpeg(gray), (480, 360)),
        ok("grayscale png", png(gray), (480, 360)),
        ok("rgba png", png(rgba), (480, 360)),
        ok("16-bit png", png(img16), (480, 360)),
        ok("cmyk jpeg", cmyk, (480, 360)),
        ok("palette png", pil_bytes(Image.fromarray(good).convert("P"), "PNG"), (480, 360)),
        ok("1x1 png", png(np.full((1, 1, 3), 200, np.uint8)), (1, 1)),
        ok("1x20000 png", png(np.full((20000, 1, 3), 200, np.uint8)), (1, 20000)),
        ok("20000x1 png", png(np.full((1, 20000, 3), 200, np.uint8)), (20000, 1)),
        ok("exif-rotated jpeg", exif_rotated_jpeg(good), (480, 360)),
        Case("png sent as image/jpeg", dict(data=png(good), headers={"Content-Type": "image/jpeg"}), 200, size=(480, 360)),
        # -- JSON requests ------------------------------------------------------------------------
        err("json: invalid base64", dict(json={"image": "***not base64***"}), 400, "not valid base64"),
        err("json: base64 of text", dict(json={"image": b64(b"just some text, not an image")}), 400,
            "cannot decode image"),
        err("json: base64 of a pdf", dict(json={"image": b64(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")}), 415,
            "look like PDF"),
        err("json: no image key", dict(json={"conf": 0.5}), 400, "no \"image\" key"),
        err("json: image is a number", dict(json={"image": 12345}), 400, "\"image\" must be a base64 string"),
        err("json: image is null", dict(json={"image": None}), 400, "\"image\" must be a base64 string"),
        err("json: conf \"abc\"", dict(json={"image": b64(good_jpeg), "conf": "abc"}), 400,
            "conf must be a number in [0, 1], got 'abc'"),
        err("json: conf 5", dict(json={"image": b64(good_jpeg), "conf": 5}), 400, "conf must be a number in [0, 1], got 5"),
        err("json: iou -0.1", dict(json={"image": b64(good_jpeg), "iou": -0.1}), 400, "iou must be a number in [0, 1]"),
        err("json: max_det -1", dict(json={"image": b64(good_jpeg), "max_det": -1}), 400,
            "max_det must be an integer in [1, 10000], got -1"),
        err("json: max_det \"10\"", dict(json={"image": b64(good_jpeg), "max_det": "10"}), 400,
            "max_det must be an integer"),
        err("json: agnostic 1", dict(json={"image": b64(good_jpeg), "agnostic": 1}), 400, "agnostic must be true or false"),
        err("json: unknown option", dict(json={"image": b64(good_jpeg), "colour": "red"}), 400, "unknown option(s) ['colour']"),
        err("json: top-level string", dict(data=json.dumps("image"), headers={"Content-Type": "application/json"}),
            400, "cannot decode image"),
        err("json: malformed", dict(data=b'{"image": "abc', headers={"Content-Type": "application/json"}), 400,
            "not valid JSON"),
        # -- values echoed in errors are cut (issue 17.5), deep JSON is a 400 (17.6) -----------------------
        err("json: conf of 300 KB", dict(json={"image": b64(good_jpeg), "conf": "x" * 300_000}), 400,
            "conf must be a number in [0, 1], got 'xxxx"),
        err("json: an option name of 300 KB", dict(json={"image": b64(good_jpeg), "y" * 300_000: 1}), 400,
            "unknown option(s) ['yyyy"),
        err("json: 50,000 unknown options", dict(json={"image": b64(good_jpeg), **{f"k{i}": i for i in range(50_000)}}),
            400, "unknown option(s) ['k0', 'k1', 'k10', 'k100', 'k1000', 'k10000', ...]"),
        err("json nested 100,000 levels (application/json)", dict(data=deep_json(), headers={
            "Content-Type": "application/json"}), 400, "JSON nested 100001 levels deep"),
        err("json nested 100,000 levels (octet-stream)", raw(deep_json()), 400, "JSON nested 100001 levels deep"),
        # -- forms --------------------------------------------------------------------------------
        # several form fields are a multi-image request (tests/integration/test_multi_image_served.py); refused
        # whole only over the server's limits or when the list itself is wrong
        err("json: 17 images (over handler.max_images_per_request)", dict(json={"images": [b64(good_jpeg)] * 17}),
            413, "17 images in one request; this server takes at most 16 (handler.max_images_per_request)"),
        err("json: images not a list", dict(json={"images": b64(good_jpeg)}), 400,
            "\"images\" must be a non-empty list of base64 strings"),
        err("multipart: only a text field", dict(files={"conf": (None, "0.5")}), 400, "cannot decode image"),
        err("multipart: no parts", dict(data=empty_multipart, headers=mp_headers), 400, "empty request"),
        err("urlencoded form", dict(data=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"}),
            400, "cannot decode image"),
        Case("jpeg without a Content-Type", dict(data=good_jpeg), 200, size=(480, 360)),
        # -- refused by TorchServe before the handler ---------------------------------------------
        # curl --data-binary sends Content-Type application/x-www-form-urlencoded by default: TorchServe's
        # form decoder fails on binary data with a 500 before the handler (a client error; documented).
        Case("binary body sent as a urlencoded form", dict(data=good_jpeg, headers={
            "Content-Type": "application/x-www-form-urlencoded"}), 500, "Bad string", ts_type="ErrorDataDecoderException",
            batchable=False),
        Case("body over max_request_size", raw(b"\0" * (MAX_REQUEST_SIZE + 1)), 413, ts_type="", batchable=False),
        Case("unknown model", raw(good_jpeg), 404, "Model not found: no_such_model", ts_type="ModelNotFoundException",
             model="no_such_model", batchable=False),
        Case("unknown version", raw(good_jpeg), 404, "Model version: 9.9 does not exist for model: polydet",
             ts_type="ModelVersionNotFoundException", version="9.9", batchable=False),
    ]
