"""JPEG decode and letterbox on a CUDA GPU: the :class:`~polydet.preprocess.Preprocessor` for CUDA backends.

Each input is routed first (:func:`route`, on the CPU, headers only plus the JPEG scan walk of
:mod:`polydet.jpegcheck`): a baseline JPEG (RGB or grey, EXIF orientation 1 or none, within the pixel cap,
the decode budget and ``imageio.REDUCE_ABOVE_PIXELS``, its scan data exactly what its header declares) is
decoded on the GPU with the rest of its batch; everything else (PNG, WebP, BMP, progressive or CMYK JPEGs,
EXIF-rotated ones, JPEGs to be decoded reduced, arrays, and any file the checks refuse) takes
:class:`~polydet.preprocess.CpuPreprocessor`'s path, so a bad file gets exactly the CPU path's 400/413/415
and reason while its neighbours succeed. A JPEG the GPU decoder refuses after the checks passed is retried
on the CPU path too.

Decoders (``decoder=``): ``"torchvision"`` (``torchvision.io.decode_jpeg(device="cuda")``: nvJPEG, batched)
or ``"nvimgcodec"`` (NVIDIA nvImageCodec, the hardware JPEG decoders where the GPU has them). torchvision's
CUDA decode writes into memory that the caller's stream may still be reading (pytorch/vision PR #9606, seen
on H100) and decodes on a private stream: the device is synchronised before and after every decode call,
so no freed block is reused while queued work reads it and no output is read before it is written.

Letterbox (:func:`letterbox_tensor`): bilinear resize (``F.interpolate``, half-pixel centres, no
antialias: cv2 INTER_LINEAR's geometry), rounded to uint8 as the CPU path's cv2 result is, on a 114-grey
canvas with the same placement and :class:`~polydet.ops.letterbox.Letterbox` as ``ops.letterbox``. From the
same pixels it differs from cv2 by at most 1 grey level (cv2 rounds its weights to 11 bits; unit-tested);
the GPU JPEG decoders upsample chroma differently from libjpeg-turbo, so from the same file pixels differ
a little more (measured on the device: tests/gpu/test_cuda_preprocess.py, BENCHMARKS.md).

Frames of GPU-decoded images carry no host pixels (``Frame.rgb`` is None): copying every image back would
cost more than the decode saved.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .imageio import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, REDUCE_ABOVE_PIXELS, decode_cost
from .meta import ModelInfo
from .ops.letterbox import PAD_VALUE, Letterbox, letterbox_shape
from .preprocess import CpuPreprocessor, Frame, ImageError, ImageInput, Prepared, Preprocessor, error_of

log = logging.getLogger(__name__)

DECODERS = ("torchvision", "nvimgcodec")
_ORIENTATION = 0x0112
def route(data: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES) -> str | None:
    """None when ``data`` can be decoded on the GPU at full size; else why it takes the CPU path.
    Never raises: a file the checks refuse goes to the CPU path, which answers it as it always does."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return "not encoded bytes"
    if bytes(data[:3]) != b"\xff\xd8\xff":
        return "not a JPEG"
    from PIL import Image

    from .jpegcheck import check_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a corrupt EXIF: the CPU path refuses it with its reason
            img = Image.open(io.BytesIO(bytes(data)))
            w, h = img.size
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return f"{img.format} {img.mode}"
            if img.info.get("progressive") or img.info.get("progression"):
                return "progressive JPEG"
            if img.getexif().get(_ORIENTATION, 1) != 1:
                return "EXIF orientation"
    except Exception as e:  # noqa: BLE001
        return f"unreadable header ({type(e).__name__})"
    if w < 1 or h < 1 or (max_pixels is not None and w * h > max_pixels):
        return "pixel cap"
    if w * h > REDUCE_ABOVE_PIXELS or (max_bytes is not None and decode_cost("JPEG", "RGB", (w, h)) > max_bytes):
        return "decoded reduced or over the decode budget"
    try:
        check_jpeg(bytes(data))
    except Exception as e:  # noqa: BLE001
        return f"scan check ({type(e).__name__})"
    return None


def letterbox_tensor(img: torch.Tensor, size: int, stride: int = 32, auto: bool = False
                     ) -> tuple[torch.Tensor, Letterbox]:
    """``img`` (3, H, W) uint8 on any device -> (3, oh, ow) uint8 letterboxed, and its Letterbox: the
    geometry of ``ops.letterbox.letterbox`` (bilinear, pad 114, centred)."""
    h, w = img.shape[1:]
    (oh, ow), r, (nh, nw) = letterbox_shape((h, w), size, stride, auto)
    top, left = (oh - nh) // 2, (ow - nw) // 2
    out = torch.full((3, oh, ow), PAD_VALUE, dtype=torch.uint8, device=img.device)
    out[:, top:top + nh, left:left + nw] = resized_u8(img, nh, nw)
    return out, Letterbox(scale=r, pad=(float(left), float(top)), in_shape=(h, w), out_shape=(oh, ow))


def resized_u8(img: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, nh, nw) uint8, bilinear with half-pixel centres, rounded (cv2 INTER_LINEAR)."""
    if tuple(img.shape[1:]) == (nh, nw):
        return img
    x = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


class GpuPreprocessor(Preprocessor):
    """Batched JPEG decode and letterbox on ``device`` (CUDA), the CPU path for what :func:`route` sends
    there. ``decoder``: one of ``DECODERS``. The limits are the CPU path's (same defaults, same errors)."""

    def __init__(self, info: ModelInfo, device: torch.device | str = "cuda", dtype: torch.dtype = torch.float32,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
                 decoder: str = "torchvision"):
        if decoder not in DECODERS:
            raise ValueError(f"unknown GPU decoder {decoder!r}: {', '.join(DECODERS)}")
        self.info = info
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_pixels = max_pixels
        self.max_decode_bytes = max_decode_bytes
        self.decoder = decoder
        self.cpu = CpuPreprocessor(info, self.device, dtype, max_pixels, max_decode_bytes)
        self.auto = self.cpu.auto
        self._nv = None
        self._lock = threading.Lock()  # one decode at a time per preprocessor (nvImageCodec's decoder is shared)

    def probe(self) -> "GpuPreprocessor":
        """Decode a tiny JPEG on the device and compare it with PIL's; raises if the decoder cannot run."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 8), (200, 30, 90)).save(buf, "JPEG", quality=95)
        got = self.decode_batch([buf.getvalue()])[0]
        if got is None or tuple(got.shape) != (3, 8, 16) or int((got.int() - torch.tensor([200, 30, 90], device=got.device).view(3, 1, 1)).abs().max()) > 8:
            raise RuntimeError(f"{self.decoder} could not decode a probe JPEG on {self.device}")
        return self

    def decode_batch(self, datas: list[bytes]) -> list[torch.Tensor | None]:
        """(3, H, W) uint8 RGB on the device per JPEG, None where the decoder refused one (batch first,
        then one by one)."""
        if not datas:
            return []
        try:
            return list(self._decode(datas))
        except Exception:  # noqa: BLE001 - one file the decoder refuses: find it
            if len(datas) == 1:
                log.info("GPU decode refused a JPEG: the CPU path decodes it", exc_info=True)
                return [None]
        return [self.decode_batch([d])[0] for d in datas]

    def _decode(self, datas: list[bytes]) -> list[torch.Tensor]:
        with self._lock:
            return self._decode_locked(datas)

    def _decode_locked(self, datas: list[bytes]) -> list[torch.Tensor]:
        torch.cuda.synchronize(self.device)  # PR #9606: no freed block may still be read when decode writes
        if self.decoder == "torchvision":
            from torchvision.io import ImageReadMode, decode_jpeg

            raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
            out = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
            torch.cuda.synchronize(self.device)  # decoded on torchvision's own stream: wait for it
            return out
        images = self._nvimgcodec().decode(datas)
        if any(im is None for im in images):
            raise RuntimeError("nvImageCodec refused an image of the batch")
        out = []
        for im in images:  # HWC in nvImageCodec's memory: copy out before it is freed
            t = torch.as_tensor(im, device=self.device)
            t = t.expand(*t.shape[:2], 3) if t.shape[2] == 1 else t
            out.append(t.permute(2, 0, 1).contiguous())
        torch.cuda.synchronize(self.device)
        return out

    def _nvimgcodec(self):
        if self._nv is None:
            from nvidia import nvimgcodec

            self._nv = nvimgcodec.Decoder(device_id=self.device.index or 0)
        return self._nv

    def __call__(self, images: Sequence[ImageInput]) -> Prepared:
        routes = [route(im, self.max_pixels, self.max_decode_bytes) for im in images]
        gpu_idx = [i for i, why in enumerate(routes) if why is None]
        decoded = dict(zip(gpu_idx, self.decode_batch([bytes(images[i]) for i in gpu_idx])))
        items: list[Frame | ImageError] = []
        boxed: list = []  # ((3,H,W) uint8 source, resized h, w (None: letterboxed already), Letterbox)
        for i, image in enumerate(images):
            try:
                if decoded.get(i) is not None:
                    frame, src, nh, nw = self._gpu_frame(decoded[i])
                else:
                    frame, out = self.cpu.frame(image)  # letterboxed on the CPU: placed as it is
                    src = torch.from_numpy(np.ascontiguousarray(out)).to(self.device).permute(2, 0, 1)
                    nh = nw = None
            except Exception as e:  # noqa: BLE001 - one bad input fails only itself
                items.append(error_of(e))
                continue
            items.append(frame)
            boxed.append((src, nh, nw, frame.letterbox))
        if not boxed:
            return Prepared(None, tuple(items))
        return Prepared(self._assemble(boxed), tuple(items))

    def _gpu_frame(self, img: torch.Tensor):
        h, w = img.shape[1:]
        (oh, ow), r, (nh, nw) = letterbox_shape((h, w), self.info.imgsz, self.info.stride, self.auto)
        top, left = (oh - nh) // 2, (ow - nw) // 2
        lb = Letterbox(scale=r, pad=(float(left), float(top)), in_shape=(h, w), out_shape=(oh, ow))
        return Frame(None, lb), img, nh, nw

    def _assemble(self, boxed) -> torch.Tensor:
        """One uint8 canvas of pad grey, each image resized into its letterbox's place, then the float
        conversion: the CPU path's batch, built on the device."""
        h = max(lb.out_shape[0] for *_, lb in boxed)
        w = max(lb.out_shape[1] for *_, lb in boxed)
        batch = torch.full((len(boxed), 3, h, w), PAD_VALUE, dtype=torch.uint8, device=self.device)
        for k, (src, nh, nw, lb) in enumerate(boxed):
            if nh is None:  # the CPU path's letterboxed image
                batch[k, :, : lb.out_shape[0], : lb.out_shape[1]] = src
                continue
            left, top = int(lb.pad[0]), int(lb.pad[1])
            batch[k, :, top:top + nh, left:left + nw] = resized_u8(src, nh, nw)
        return batch.to(self.dtype).div_(255.0)


def gpu_preprocessor(info: ModelInfo, device, dtype, max_pixels, max_decode_bytes,
                     decoder: str = "torchvision") -> GpuPreprocessor | None:
    """A probed GpuPreprocessor on a CUDA ``device``, or None (logged) where none can run there."""
    if torch.device(device).type != "cuda":
        return None
    try:
        return GpuPreprocessor(info, device, dtype, max_pixels, max_decode_bytes, decoder).probe()
    except Exception as e:  # noqa: BLE001 - no torchvision, no nvJPEG...: the CPU path serves
        log.warning("GPU JPEG decode unavailable on %s (%s: %s): decoding on the CPU", device, type(e).__name__, e)
        return None
