"""Image decoding for untrusted bytes: typed errors, EXIF orientation, odd modes, a pixel cap."""

from __future__ import annotations

import io
import warnings

import numpy as np

from .errors import ImageTooLargeError, InvalidInputError

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; bigger means a bomb or a mistake, not a photo of a page


class UnsupportedFormatError(InvalidInputError):
    """A decodable file of a format we do not serve (GIF, TIFF, PDF...). HTTP 415."""

    http_status = 415


def _sniff(data: bytes) -> str | None:
    """Name of a few well-known non-image or unsupported formats, for clearer error messages."""
    head = data[:16].lstrip()
    for magic, name in ((b"%PDF", "PDF"), (b"GIF8", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                        (b"<!DOCTYPE", "HTML"), (b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"<html", "HTML"), (b"<HTML", "HTML"), (b"{", "JSON")):
        if head.startswith(magic):
            return name
    return None


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 rgb: bool = False) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 array (BGR, or RGB with ``rgb=True``).

    Handles EXIF orientation, grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit.
    Raises InvalidInputError (400) with the reason, UnsupportedFormatError (415) for GIF/TIFF/PDF...,
    ImageTooLargeError (413) when the header declares more than ``max_pixels`` (checked before decoding).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInputError(f"image must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise InvalidInputError("empty image: the request body has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image too large (limit {max_pixels} pixels): {e}") from e
    except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, ValueError...
        kind = _sniff(data)
        if kind in ("PDF", "HTML", "JSON"):
            raise UnsupportedFormatError(f"not an image: the bytes look like {kind}") from e
        if kind in ("JPEG", "PNG"):
            # PIL's "cannot identify image file <_io.BytesIO object at 0x...>" would hand a heap address
            # to the caller: say what failed without it.
            why = "unreadable header" if isinstance(e, UnidentifiedImageError) else str(e)
            raise InvalidInputError(f"corrupt or truncated {kind} image ({len(data)} bytes): {why}") from e
        raise InvalidInputError(f"cannot decode image ({len(data)} bytes): not a JPEG, PNG, BMP or WebP file") from e
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"unsupported image format {img.format}: send JPEG, PNG, BMP or WebP")
    w, h = img.size
    if w < 1 or h < 1:
        raise InvalidInputError(f"image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - truncated files, bad CRCs, corrupt streams
        raise InvalidInputError(f"corrupt {img.format} image: {e}") from e
    arr = _to_rgb(img)
    return arr if rgb else np.ascontiguousarray(arr[..., ::-1])


def _to_rgb(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(a * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        from PIL import Image

        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)
