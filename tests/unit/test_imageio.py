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


# -- corrupt files the codecs decode silently (issue 17.4/17.7), the decode budget, DCT-reduced JPEGs --------

def page(w, h, seed=0):
    """Smooth content (noise upscaled): JPEG-like sizes, quick to encode at many megapixels."""
    small = np.random.default_rng(seed).integers(0, 255, (max(1, h // 40), max(1, w // 40), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def declaring(data: bytes, w: int, h: int) -> bytes:
    """A JPEG with its frame header patched to say w x h over the scan it has."""
    out, i = bytearray(data), 2
    while out[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(out[i + 2:i + 4], "big")
    out[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(out)


@pytest.mark.parametrize("kw", [{}, {"subsampling": 0}, {"subsampling": 1}, {"optimize": True}, {"quality": 100},
                                {"quality": 5}, {"progressive": True}, {"restart_marker_blocks": 3},
                                {"progressive": True, "restart_marker_rows": 1}])
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_the_scan_check_accepts_valid_jpegs_and_refuses_a_header_that_disagrees(kw, mode):
    from polydet.jpegcheck import check_jpeg

    img = Image.fromarray(page(300, 200, seed=1)).convert(mode)
    data = encode(np.asarray(img), "JPEG", **kw) if mode != "CMYK" else _pil(img, "JPEG", **kw)
    check_jpeg(data)
    assert decode_image(data).shape == (200, 300, 3)
    for w, h, reason in ((300, 232, "the scan data ends after"), (300, 160, "extraneous scan data"),
                         (7000, 7000, "the scan data ends after")):
        with pytest.raises(InvalidInputError, match=f"corrupt JPEG image: {reason}"):
            decode_image(declaring(data, w, h))


def _pil(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("flags", [[], [2, 1], [3, 1], [4, 5], [7, 4264209]])  # progressive, optimize, RST, 4:1:1
def test_the_scan_check_accepts_opencv_jpegs(flags):
    import cv2

    from polydet.jpegcheck import check_jpeg

    ok, buf = cv2.imencode(".jpg", page(333, 250, seed=2), flags)
    check_jpeg(buf.tobytes())


def test_corrupt_files_are_refused_with_the_codecs_reason():
    """What PIL decodes without a word: a scan cut short by a marker (grey padding), a header that
    disagrees with the scan, a PNG cut before IEND, restart markers out of order."""
    data = encode(page(480, 360), "JPEG", quality=90)
    png = encode(page(64, 48), "PNG")
    cases = {
        declaring(data, 480, 720): "the scan data ends after 690 of the 1350 MCUs the frame header declares",
        declaring(data, 240, 360): "extraneous scan data after MCU 345 of 345",
        data[:-2]: "no end-of-image marker",
        png[:-12]: "corrupt PNG image: no IEND chunk",
    }
    rst = bytearray(_pil(Image.fromarray(page(480, 360)), "JPEG", restart_marker_rows=1))
    first = rst.index(b"\xff\xd0")
    rst[first + 1] = 0xD3
    cases[bytes(rst)] = "restart markers out of order"
    for bad, reason in cases.items():
        with pytest.raises(InvalidInputError, match=reason):
            decode_image(bad)


def test_a_large_jpeg_is_decoded_reduced_and_says_by_how_much():
    """Above REDUCE_ABOVE_PIXELS, the smallest DCT scale whose long side is still >= min_side; the pixels are
    libjpeg's own DCT-scaled decode (oracle: PIL's draft, called here directly); the size stays the original's."""
    from polydet.imageio import REDUCE_ABOVE_PIXELS, decode

    w, h = 5000, 3600
    assert w * h > REDUCE_ABOVE_PIXELS
    data = encode(page(w, h), "JPEG", quality=85)
    for min_side, scale in ((224, 8), (640, 4), (1024, 4), (2000, 2), (4000, 1)):
        d = decode(data, min_side=min_side)
        assert (d.scale, d.size) == (scale, (w, h))
        assert d.pixels.shape == (-(-h // scale), -(-w // scale), 3)
        oracle = Image.open(io.BytesIO(data))
        if scale > 1:
            oracle.draft("RGB", (w // scale, h // scale))
        assert np.array_equal(d.pixels, np.asarray(oracle.convert("RGB")))
    # EXIF Orientation 6: the reduced pixels are turned, the size is the upright original's
    exif = Image.Exif()
    exif[0x0112] = 6
    d = decode(_pil(Image.fromarray(page(w, h)), "JPEG", exif=exif.tobytes()), min_side=224)
    assert (d.scale, d.size, d.pixels.shape) == (8, (h, w), (-(-w // 8), -(-h // 8), 3))


def test_normal_images_keep_their_exact_pixels():
    """A 12 MP photo (4032x3024) is decoded in full with or without min_side: the same pixels as before."""
    from polydet.imageio import decode

    data = encode(page(4032, 3024), "JPEG", quality=90)
    d = decode(data, min_side=224)
    assert d.scale == 1 and np.array_equal(d.pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_the_decode_budget_refuses_before_decoding():
    """The 47 KB PNG of 7000x7000 zeros (49 MP, under the pixel cap) is refused from its header; a budget
    that fits it decodes it; a JPEG over budget is reduced instead of refused."""
    from polydet.imageio import DEFAULT_MAX_DECODE_BYTES, decode, decode_cost

    bomb = _pil(Image.new("L", (7000, 7000), 0), "PNG")
    assert len(bomb) < 50_000
    assert decode_cost("PNG", "L", (7000, 7000)) > DEFAULT_MAX_DECODE_BYTES
    with pytest.raises(ImageTooLargeError, match=r"PNG image of 7000x7000 \(L\): decoding it needs ~\d+ MiB, above "
                                                 r"the decode budget of 192 MiB"):
        decode_image(bomb)
    small = _pil(Image.new("L", (3000, 2000), 0), "PNG")
    with pytest.raises(ImageTooLargeError, match="above the decode budget of 8 MiB"):
        decode_image(small, max_bytes=8 * 2**20)
    assert decode_image(small, max_bytes=None).shape == (2000, 3000, 3)
    jpeg = encode(page(3000, 2000), "JPEG")  # 6 MP: 57 MiB in full, over a 16 MiB budget -> reduced
    d = decode(jpeg, max_bytes=16 * 2**20, min_side=224)
    assert (d.scale, d.size) == (8, (3000, 2000))
    with pytest.raises(ImageTooLargeError):  # without min_side nothing may be reduced
        decode(jpeg, max_bytes=16 * 2**20)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG")])
def test_the_cost_estimate_covers_the_measured_peak(tmp_path, mode, fmt):
    """decode's peak RSS (sampled every ms in a fresh process) stays under decode_cost's estimate."""
    import json
    import subprocess
    import sys

    arr = page(3000, 2000, seed=3)
    img = Image.fromarray(arr).convert(mode) if mode != "RGBA" else Image.fromarray(np.dstack([arr, arr[..., 0]]))
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt)
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True)
    peak, estimate = json.loads(out.stdout.splitlines()[-1])
    assert 0 < peak <= estimate, (mode, fmt, peak / 6e6, estimate / 6e6)


PEAK = """
import io, json, sys, threading, time
import psutil
from PIL import Image
from polydet.imageio import decode, decode_cost
data = open(sys.argv[1], "rb").read()
decode(_tiny := (lambda b: (Image.new("RGB", (64, 64)).save(b, "JPEG"), b.getvalue())[1])(io.BytesIO()))
proc, peak, stop = psutil.Process(), [0], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)
before = proc.memory_info().rss
t = threading.Thread(target=sample)
t.start()
d = decode(data, max_bytes=None)
stop.set()
t.join()
img = Image.open(io.BytesIO(data))
print(json.dumps([peak[0] - before, decode_cost(img.format, img.mode, img.size)]))
"""


def test_polygons_of_a_reduced_jpeg_come_back_in_original_pixels():
    """The pipeline on a 5000x3600 JPEG decoded at 1/8: width/height are the original's and each polygon is
    the letterboxed rows mapped back through the reduced image's letterbox, times 8 (oracle computed here from
    the reduced size, independently of Letterbox), bit for bit."""
    import torch

    from polydet.backends.base import Backend
    from polydet.meta import ModelInfo
    from polydet.pipeline import Detector

    rows = torch.tensor([[20, 40, 200, 40, 200, 180, 20, 180, 0.9, 0.8, 0.1],
                         [1, 30, 223, 30, 223, 190, 1, 190, 0.8, 0.1, 0.9]], dtype=torch.float32)

    class Fixed(Backend):
        def __init__(self):
            super().__init__("fixed")
            self.info = ModelInfo(names=["page", "photo"], imgsz=224)

        def forward(self, x):
            return rows.expand(x.shape[0], *rows.shape).clone()

    w, h = 5000, 3600
    res = Detector(Fixed()).detect([encode(page(w, h), "JPEG", quality=85)])[0]
    assert (res.width, res.height) == (w, h)
    rw, rh = -(-w // 8), -(-h // 8)  # the decoded size: 625 x 450
    r = 224 / max(rw, rh)
    nw, nh = round(rw * r), round(rh * r)
    pad = np.array([(224 - nw) // 2, (224 - nh) // 2], np.float64)
    want = (rows[:, :8].double().numpy().reshape(-1, 4, 2) - pad) / r * 8
    want = np.stack([want[..., 0].clip(0, w), want[..., 1].clip(0, h)], -1)
    order = np.argsort(-(rows[:, 8] * rows[:, 9:].max(1).values).numpy(), kind="stable")
    assert np.array_equal(res.polygons, want[order])


# -- what the client sent comes back in errors at most as a short prefix (issue 17.5) --------------------------

def test_quote_bounds_every_kind_of_value():
    from polydet.errors import QUOTE_LIMIT, quote

    assert quote("abc") == "'abc'" and quote(5) == "5" and quote(["colour"]) == "['colour']"
    for value in ("x" * 300_000, ["y" * 300_000], {str(i): i for i in range(50_000)}, 10 ** 5000,
                  [[[[[[1]]]]]], b"\xff" * 100_000):
        assert len(quote(value)) <= QUOTE_LIMIT
    assert quote(10 ** 5000) == "<int>"


@pytest.mark.parametrize("options,reason", [
    ({"conf": "x" * 300_000}, "conf must be a number in [0, 1], got 'xxx"),
    ({"y" * 300_000: 1}, "unknown option(s) ['yyy"),
    ({"max_det": [[[[[1]]]]]}, "max_det must be an integer in [1, 10000], got [[[...]]]"),
    ({"agnostic": "z" * 300_000}, "agnostic must be true or false, got 'zzz"),
])
def test_option_errors_quote_a_prefix(options, reason):
    from polydet.options import DetectOptions

    with pytest.raises(InvalidInputError) as e:
        DetectOptions.from_dict(options)
    assert str(e.value).startswith(reason) and len(str(e.value)) < 200


def test_request_errors_quote_a_prefix_and_deep_json_is_a_400():
    from polydet.serving.service import MAX_JSON_DEPTH, json_depth, parse_request

    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "b": [1, [2, {"c": []}]]}') == 5
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000
    cases = {
        b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}": "JSON nested 100001 levels deep",
        b'{"image": "aGk=", "dewarp": "' + b"d" * 300_000 + b'"}': "\"dewarp\" must be true or false, got 'ddd",
        b'{"image": "abc': "not valid JSON",
        b' \n {"image": 1}': "\"image\" must be a base64 string",  # whitespace before the object is still JSON
    }
    for body, reason in cases.items():
        with pytest.raises(InvalidInputError) as e:
            parse_request({"body": bytearray(body)})
        assert reason in str(e.value) and len(str(e.value)) < 200
    reason = parse_request({"a" * 300_000: 1, "b": b"y"}).images[0].reason  # several inputs: multi-image
    assert reason.startswith("input 'aaa") and len(reason) < 200
    assert MAX_JSON_DEPTH >= 2  # {"image": ..., "conf": ...} is depth 1


def test_truncated_files_are_refused_even_if_someone_sets_load_truncated_images(monkeypatch):
    """PIL's LOAD_TRUNCATED_IMAGES is process-wide: another library may turn it on. The structure checks
    (EOI, IEND) refuse a truncated JPEG or PNG before PIL sees the pixels, whatever it says."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    jpeg, png = encode(page(480, 360), "JPEG"), encode(page(480, 360), "PNG")
    for bad in (jpeg[: len(jpeg) // 2], jpeg[:-2], png[: len(png) // 2], png[:-12]):
        with pytest.raises(InvalidInputError, match="corrupt"):
            decode_image(bad)
