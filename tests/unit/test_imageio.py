import io
import zlib

import numpy as np
import pytest
from PIL import Image

from polydet.errors import ImageTooLargeError, InvalidInputError
from polydet.imageio import UnsupportedFormatError, decode_image
from polydet.preprocess import validate_array


def encode(arr, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def rgb():
    a = np.zeros((40, 60, 3), np.uint8)
    a[..., 0] = 200  # red in RGB
    a[10:20, 5:15] = (0, 255, 0)
    return a


@pytest.mark.parametrize("fmt,kw,tol", [("PNG", {}, 0), ("BMP", {}, 0), ("WEBP", {"lossless": True}, 0),
                                         ("JPEG", {"quality": 95, "subsampling": 0}, 20)])
def test_formats_decode_to_bgr(rgb, fmt, kw, tol):
    out = decode_image(encode(rgb, fmt, **kw))
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb[..., ::-1]).max() <= tol
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(encode(rgb, fmt, **kw))).convert("RGB"))[..., ::-1])
    assert np.array_equal(decode_image(encode(rgb, "PNG"), rgb=True), rgb)


def test_grayscale_rgba_palette_16bit():
    g = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    assert np.array_equal(decode_image(encode(g, "PNG")), np.repeat(g[..., None], 3, 2))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    rgba[0, 0] = (10, 20, 30, 255)
    out = decode_image(encode(rgba, "PNG"), rgb=True)
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [10, 20, 30]
    g16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out[..., 0].tolist() == (g16 * (255 / 65535)).astype(np.uint8).tolist()
    p = Image.fromarray(np.full((5, 5, 3), 9, np.uint8)).convert("P")
    buf = io.BytesIO()
    p.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).shape == (5, 5, 3)


def test_exif_orientation_applied():
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=100)
    out = decode_image(buf.getvalue())
    assert out.shape == (40, 20, 3)
    assert out[:18].mean() > 240 and out[22:].mean() < 15  # white half now on top


def test_bad_inputs_raise_typed_errors(rgb):
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidInputError, match="cannot decode"):
        decode_image(b"\x00")
    jpg = encode(rgb, "JPEG")
    with pytest.raises(InvalidInputError, match="corrupt.* JPEG"):
        decode_image(jpg[: len(jpg) // 2])
    png = bytearray(encode(rgb, "PNG"))
    png[-20] ^= 0xFF  # inside the IDAT / CRC
    with pytest.raises(InvalidInputError):
        decode_image(bytes(png))
    with pytest.raises(UnsupportedFormatError, match="GIF") as e:
        decode_image(encode(rgb, "GIF"))
    assert e.value.http_status == 415
    with pytest.raises(UnsupportedFormatError, match="PDF"):
        decode_image(b"%PDF-1.4 hello")
    with pytest.raises(InvalidInputError):
        decode_image("not bytes")


def _bomb_png(w, h):
    """A tiny PNG whose header declares w x h pixels (data is a short, valid-looking zlib stream)."""
    def chunk(t, d):
        return len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big")
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def test_pixel_cap_checked_before_decoding():
    with pytest.raises(ImageTooLargeError, match="900000000 pixels") as e:
        decode_image(_bomb_png(30000, 30000), max_pixels=50_000_000)
    assert e.value.http_status == 413
    with pytest.raises(ImageTooLargeError):
        decode_image(encode(np.zeros((100, 100, 3), np.uint8), "PNG"), max_pixels=9999)


def test_validate_array():
    assert validate_array(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
    assert validate_array(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4, 3)
    four = np.zeros((3, 4, 4), np.uint8)
    four[..., 3] = 99
    assert (validate_array(four) == 0).all()
    assert validate_array(np.full((2, 2, 3), 65535, np.uint16)).max() == 255
    for bad in (np.zeros((3, 4, 2), np.uint8), np.zeros((3, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(InvalidInputError):
            validate_array(bad)
