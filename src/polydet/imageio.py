"""Image decoding for untrusted bytes: typed errors, EXIF orientation, odd modes, a pixel cap, a decode budget.

Before any pixel is decoded: the header's size against ``max_pixels``; the file's structure (a JPEG's scan data
must hold exactly the MCUs its frame header declares, :mod:`polydet.jpegcheck`; a PNG must end with IEND); the
estimated memory of the decode (:func:`decode_cost`) against ``max_bytes``. A JPEG above
``REDUCE_ABOVE_PIXELS`` (or over the budget) is decoded reduced by libjpeg's DCT scaling when the caller says
how small it may be (``min_side``: the model's input size), and :class:`Decoded` says by how much. The codec's
warnings are errors: a file with missing or corrupt data is refused, never padded with grey.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import ImageTooLargeError, InvalidInputError, bounded

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; bigger means a bomb or a mistake, not a photo of a page
# Memory one image's decode may take (its estimate, before decoding). 192 MiB decodes a 16 MP RGB JPEG, a
# 18 MP RGB or 10 MP RGBA PNG (a 4K screenshot) in full; larger JPEGs are decoded reduced, larger PNG/BMP/WebP
# refused (413), the 49 MP grayscale PNG of 47 KB among them. A worker holds at most batchSize decoded images:
# it needs at most batchSize x this on top of its model (RELIABILITY.md).
DEFAULT_MAX_DECODE_BYTES = 192 * 2**20
# JPEGs above this are decoded reduced (DCT scaling 1/2, 1/4, 1/8) to the smallest size whose long side is
# still >= the model's input: 4032x3024 phone photos and everything smaller keep their exact pixels.
REDUCE_ABOVE_PIXELS = 16_000_000
JPEG_SCALES = (8, 4, 2)

# Bytes per pixel that decode holds at its peak, by PIL mode: PIL's own storage (4 bytes for RGB), the
# conversions of _to_rgb, and the HxWx3 result, which numpy builds from PIL's tobytes() (its chunks joined:
# 3 + 3 bytes for RGB). Measured peaks on 12 MP images, RSS sampled every ms: RGB 9.9-10.5 (10.02 on a fresh
# machine at 6 MP, over the 10 this table first said), L 4.1-5.0,
# P 10.8-11.01 (11.01 on the shared machine, over the 11 this table said), CMYK 14.0, RGBA 17.9, LA 22.0, I;16 14.0 (tests/unit/test_imageio.py keeps them above the peak).
_BYTES_PER_PIXEL = {"1": 11, "L": 6, "P": 12, "RGB": 11, "YCbCr": 14, "CMYK": 14, "LAB": 14, "HSV": 14,
                    "I;16": 14, "I;16B": 14, "I;16L": 14, "I;16N": 14, "I": 16, "F": 16,
                    "RGBA": 20, "RGBa": 20, "LA": 23, "La": 23, "PA": 23}
_STORAGE = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}  # else 4 bytes per pixel
_ORIENTATION = 0x0112


class UnsupportedFormatError(InvalidInputError):
    """A decodable file of a format we do not serve (GIF, TIFF, PDF...). HTTP 415."""

    http_status = 415


@dataclass(frozen=True, eq=False)
class Decoded:
    """Decoded pixels (HxWx3 uint8) of an image of ``size`` (width, height: the original's, upright),
    reduced by ``scale`` on each axis (1, or a JPEG's DCT scale 2, 4, 8: ``ceil(size / scale)`` pixels, a
    decoded pixel (x, y) covering original pixels [scale*x, scale*(x+1)))."""

    pixels: np.ndarray
    scale: int
    size: tuple[int, int]


def _sniff(data: bytes) -> str | None:
    """Name of a few well-known non-image or unsupported formats, for clearer error messages."""
    head = data[:16].lstrip()
    for magic, name in ((b"%PDF", "PDF"), (b"GIF8", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                        (b"<!DOCTYPE", "HTML"), (b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"<html", "HTML"),
                        (b"<HTML", "HTML"), (b"{", "JSON")):
        if head.startswith(magic):
            return name
    return None


def decode_cost(fmt: str, mode: str, size: tuple[int, int], rotated: bool = False,
                coefficients: int = 0) -> int:
    """Estimated peak bytes of decoding an image of ``size`` (the decoded size) and PIL ``mode`` to HxWx3:
    PIL's storage, the conversions, the result; ``rotated``: an EXIF transposition's extra copy;
    ``coefficients``: a progressive JPEG's whole-image coefficient buffer, which libjpeg keeps at full size
    whatever the DCT scale."""
    pixels = size[0] * size[1]
    per = _BYTES_PER_PIXEL.get(mode, 23) + (_STORAGE.get(mode, 4) if rotated else 0)
    return pixels * per + coefficients


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 rgb: bool = False, max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 array (BGR, or RGB with ``rgb=True``) at full size.

    Handles EXIF orientation, grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit.
    Raises InvalidInputError (400) with the reason (corrupt or truncated data included),
    UnsupportedFormatError (415) for GIF/TIFF/PDF..., ImageTooLargeError (413) when the header declares more
    than ``max_pixels`` or the decode is estimated above ``max_bytes`` (both checked before decoding).
    """
    return decode(data, max_pixels, max_bytes, rgb=rgb).pixels


def decode(data: bytes | bytearray | memoryview, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES, min_side: int | None = None,
           rgb: bool = True) -> Decoded:
    """:func:`decode_image` that may reduce: with ``min_side`` (the model's input size), a JPEG above
    ``REDUCE_ABOVE_PIXELS`` or over ``max_bytes`` is decoded at the smallest DCT scale whose long side is
    still >= ``min_side``. RGB unless ``rgb=False``."""
    from PIL import Image, ImageOps

    img = _open(data, max_pixels)
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidInputError(f"image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
    may_rotate = _check_structure(img.format, bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Truncated File Read", "Corrupt EXIF data"...: refused, not ignored
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is the cap
        try:
            # A JPEG's EXIF comes before its pixels; PIL reads a PNG's by decoding the whole image first.
            orientation = img.getexif().get(_ORIENTATION, 1) if img.format == "JPEG" else None
            rotated = orientation not in (None, 1) if img.format == "JPEG" else may_rotate
            coefficients = _coefficients(img)
            scale = _reduce(img, min_side, max_bytes, rotated, coefficients)
            cost = decode_cost(img.format, img.mode, img.size, rotated, coefficients)
            if max_bytes is not None and cost > max_bytes:
                raise ImageTooLargeError(
                    f"{img.format} image of {w}x{h} ({img.mode}): decoding it needs ~{cost >> 20} MiB, above "
                    f"the decode budget of {max_bytes >> 20} MiB")
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        except InvalidInputError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated files, bad CRCs, corrupt streams, codec warnings
            raise InvalidInputError(f"corrupt {img.format} image: {bounded(str(e) or type(e).__name__)}") from e
    arr = _to_rgb(img)
    if scale == 1:
        size = img.size
    else:  # a reduced JPEG: the original's size, turned as EXIF says (5-8 swap the axes)
        size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return Decoded(arr if rgb else np.ascontiguousarray(arr[..., ::-1]), scale, size)


def _open(data, max_pixels: int | None):
    """PIL's lazy open (header only) of a supported format, with the typed errors."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"image must be bytes, got {type(data).__name__}")
    if not len(data):
        raise InvalidInputError("empty image: the request body has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image too large (limit {max_pixels} pixels): {bounded(str(e))}") from e
    except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, ValueError...
        kind = _sniff(bytes(data[:16]))
        if kind in ("PDF", "HTML", "JSON"):
            raise UnsupportedFormatError(f"not an image: the bytes look like {kind}") from e
        if kind in ("JPEG", "PNG"):
            # PIL's "cannot identify image file <_io.BytesIO object at 0x...>" would hand a heap address
            # to the caller: say what failed without it.
            why = "unreadable header" if isinstance(e, UnidentifiedImageError) else bounded(str(e))
            raise InvalidInputError(f"corrupt or truncated {kind} image ({len(data)} bytes): {why}") from e
        raise InvalidInputError(f"cannot decode image ({len(data)} bytes): not a JPEG, PNG, BMP or WebP file") from e
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"unsupported image format {img.format}: send JPEG, PNG, BMP or WebP")
    return img


def _check_structure(fmt: str, data: bytes) -> bool:
    """Refuse what the codecs accept silently: a JPEG scan that disagrees with its frame header (decoded as
    grey padding or garble), a PNG cut after its last IDAT (no IEND). Returns whether a PNG carries chunks
    that may hold EXIF (eXIf, text): only then may it need turning."""
    if fmt == "JPEG":
        from .jpegcheck import check_jpeg

        check_jpeg(data)
    elif fmt == "PNG":
        pos, n, meta = 8, len(data), False
        while pos + 8 <= n:
            length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
            if kind == b"IEND":
                return meta
            meta |= kind in (b"eXIf", b"tEXt", b"zTXt", b"iTXt")
            pos += 12 + length
        raise InvalidInputError("corrupt PNG image: no IEND chunk (truncated file)")
    return fmt == "WEBP"


def _reduce(img, min_side: int | None, max_bytes: int | None, rotated: bool, coefficients: int) -> int:
    """Ask libjpeg for DCT-scaled decoding where it is wanted and allowed; the scale chosen (1 if none)."""
    w, h = img.size
    if img.format != "JPEG" or not min_side:
        return 1
    full = decode_cost("JPEG", img.mode, (w, h), rotated, coefficients)
    if w * h <= REDUCE_ABOVE_PIXELS and (max_bytes is None or full <= max_bytes):
        return 1
    scale = next((s for s in JPEG_SCALES if max(w, h) // s >= min_side), 1)
    if scale > 1:
        img.draft(img.mode, (w // scale, h // scale))
        if img.size != (-(-w // scale), -(-h // scale)):  # PIL chose another scale: never guess it
            raise RuntimeError(f"JPEG draft gave {img.size} for {w}x{h} at 1/{scale}")
    return scale


def _coefficients(img) -> int:
    """Bytes of a progressive JPEG's coefficient buffer (2 bytes per coefficient, every block of every
    component at full size, whatever the DCT scale); 0 for a sequential one (decoded a row at a time)."""
    if img.format != "JPEG" or not img.info.get("progressive"):
        return 0
    (w, h), layers = img.size, getattr(img, "layer", None) or [("", 1, 1, 0)]
    hmax, vmax = max(int(c[1]) for c in layers), max(int(c[2]) for c in layers)
    return sum(_ceil(_ceil(w * int(c[1]), hmax), 8) * _ceil(_ceil(h * int(c[2]), vmax), 8) for c in layers) * 128


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _to_rgb(img) -> np.ndarray:
    """A loaded PIL image -> HxWx3 uint8 RGB, holding as few copies at once as the mode allows."""
    mode = img.mode
    if mode == "L":  # PIL's convert("RGB") would hold a 4-byte-per-pixel copy: the same values from numpy
        return np.repeat(np.asarray(img)[..., None], 3, axis=2)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img if mode == "RGBA" else img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)
