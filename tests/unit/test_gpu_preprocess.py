"""The GPU preprocessor's CPU-testable core: routing, the torch letterbox against cv2's, the per-image errors.

The letterbox runs on CPU tensors here (the same torch ops as on CUDA). GpuPreprocessor's batch logic runs
with PIL as its decoder (:class:`PilDecoding`), so everything but the nvJPEG call itself is exercised; the
CUDA decoders are compared with the CPU path on the device (tests/gpu/test_cuda_preprocess.py).
"""

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from polydet.gpu_preprocess import GpuPreprocessor, gpu_preprocessor, letterbox_tensor, route
from polydet.meta import ModelInfo
from polydet.ops.letterbox import letterbox
from polydet.preprocess import CpuPreprocessor, Frame
from polydet.results import ImageError


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img.astype(np.int16) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def _encode(rgb, fmt="JPEG", **kw):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("shape,auto", [((480, 640), False), ((640, 480), False), ((100, 37), False),
                                        ((224, 224), False), ((1000, 333), False), ((480, 640), True),
                                        ((97, 301), True)])
def test_torch_letterbox_matches_cv2(shape, auto):
    rgb = _photo(*shape, seed=shape[0])
    ref, ref_lb = letterbox(rgb, 224, 32, auto=auto)
    got, lb = letterbox_tensor(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), 224, 32, auto=auto)
    assert lb == ref_lb
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
    # cv2 rounds its bilinear weights to 11 bits: at most one grey level apart (measured: 0-12 % of the
    # values of a 640x480 photo, none in the padding)
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() < 0.15


def _files():
    rgb = _photo(480, 640, seed=1)
    good = _encode(rgb, quality=90)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    rotated.save(buf, "JPEG", exif=exif.tobytes())
    return {
        "jpeg": good,
        "grey": _encode(rgb[..., 0], quality=90),
        "jpeg2": _encode(_photo(300, 200, seed=2), quality=80),
        "png": _encode(rgb, "PNG"),
        "progressive": _encode(rgb, progressive=True),
        "rotated": buf.getvalue(),
        "cmyk": _cmyk(rgb),
        "truncated": good[: len(good) // 2],
        "corrupt_header": good[:200],
        "gif": _encode(rgb, "GIF"),
        "text": b"hello, not an image",
    }


def _cmyk(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG")
    return buf.getvalue()


def test_route_sends_only_baseline_jpegs_to_the_gpu():
    files = _files()
    got = {k: route(v) for k, v in files.items()}
    assert got["jpeg"] is None and got["grey"] is None and got["jpeg2"] is None
    assert got["png"] == "not a JPEG" and got["gif"] == "not a JPEG" and got["text"] == "not a JPEG"
    assert got["progressive"] == "progressive JPEG"
    assert got["rotated"] == "EXIF orientation"
    assert got["cmyk"] == "JPEG CMYK"
    assert got["truncated"] == "scan check (InvalidInputError)"
    assert got["corrupt_header"].startswith(("scan check", "unreadable header"))
    assert route(np.zeros((4, 4, 3), np.uint8)) == "not encoded bytes"
    assert route(files["jpeg"], max_pixels=640 * 480 - 1) == "pixel cap"
    assert route(files["jpeg"], max_bytes=640 * 480 * 10) == "decoded reduced or over the decode budget"


class PilDecoding(GpuPreprocessor):
    """GpuPreprocessor with PIL as its decoder on the CPU; records what it was asked to decode and refuses
    files in ``refuse`` as a GPU decoder refusing one would (an exception for the whole batch)."""

    def __init__(self, *a, refuse=(), **kw):
        super().__init__(*a, **kw)
        self.asked, self.refuse = [], set(refuse)

    def _decode(self, datas):
        self.asked.append(len(datas))
        if any(d in self.refuse for d in datas):
            raise RuntimeError("decoder refused")
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1).contiguous()
                for d in datas]


@pytest.mark.parametrize("auto", [False, True])
def test_batch_matches_the_cpu_path_item_by_item(auto):
    files = _files()
    info = ModelInfo(imgsz=224, dynamic=auto, letterbox="auto" if auto else "square")
    order = ["jpeg", "png", "truncated", "grey", "gif", "progressive", "text", "rotated", "jpeg2", "cmyk",
             "corrupt_header"]
    images = [files[k] for k in order] + [_photo(50, 70, seed=3)]  # an array: the CPU path's letterbox
    cpu = CpuPreprocessor(info, max_pixels=50_000_000)(images)
    gpu_pre = PilDecoding(info, "cpu", torch.float32)
    gpu = gpu_pre(images)
    assert gpu_pre.asked == [3]  # jpeg, grey, jpeg2 decoded together; the rest on the CPU path
    assert len(gpu.items) == len(cpu.items) == len(images)
    for name, a, b in zip(order + ["array"], gpu.items, cpu.items):
        assert type(a) is type(b), name
        if isinstance(b, ImageError):
            assert (a.status, a.reason) == (b.status, b.reason), name
        else:
            assert a.letterbox == b.letterbox, name
    statuses = [getattr(i, "status", 200) for i in gpu.items]
    assert statuses == [200, 200, 400, 200, 415, 200, 400, 200, 200, 200, 400, 200]
    assert gpu.batch.shape == cpu.batch.shape and gpu.batch.dtype == cpu.batch.dtype
    assert float((gpu.batch - cpu.batch).abs().max()) <= 1 / 255 + 1e-6
    gpu_frames = [i for i, (k, it) in enumerate(zip(order, gpu.items)) if k in ("jpeg", "grey", "jpeg2")]
    assert all(gpu.items[i].rgb is None for i in gpu_frames)  # no host pixels for GPU-decoded images


def test_a_file_the_decoder_refuses_is_decoded_on_the_cpu_path():
    files = _files()
    info = ModelInfo(imgsz=224)
    pre = PilDecoding(info, "cpu", torch.float32, refuse={files["jpeg2"]})
    images = [files["jpeg"], files["jpeg2"], files["grey"]]
    got = pre(images)
    assert pre.asked == [3, 1, 1, 1]  # the batch, then one by one
    assert all(isinstance(i, Frame) for i in got.items)
    assert got.items[1].rgb is not None and got.items[0].rgb is None  # jpeg2 came through the CPU path
    ref = CpuPreprocessor(info)(images)
    assert float((got.batch - ref.batch).abs().max()) <= 1 / 255 + 1e-6


def test_only_bad_images_give_no_batch_and_no_decode():
    files = _files()
    pre = PilDecoding(ModelInfo(imgsz=224), "cpu", torch.float32)
    got = pre([files["truncated"], files["gif"]])
    assert got.batch is None and pre.asked == []
    assert [i.status for i in got.items] == [400, 415]


def test_no_gpu_preprocessor_off_cuda_and_unknown_decoder_refused():
    assert gpu_preprocessor(ModelInfo(), "cpu", torch.float32, None, None) is None
    with pytest.raises(ValueError, match="unknown GPU decoder"):
        GpuPreprocessor(ModelInfo(), "cpu", decoder="dali")
