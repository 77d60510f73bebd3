"""The image path's first stage: decode and letterbox a batch of inputs into one model batch.

Inputs are encoded files (``bytes``), arrays in cv2's convention (``np.ndarray``: BGR/BGRA/gray,
uint8 or uint16), or arrays whose channel order is declared by their type (:class:`RGB`). A
:class:`Preprocessor` turns a batch of them into a float tensor for the backend plus one
:class:`Frame` per good input, and an :class:`~polydet.results.ImageError` for each bad one: one bad
image never sinks the batch. :class:`CpuPreprocessor` is the cv2/PIL path; a GPU decoder is another
implementation of the same interface.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from .errors import InvalidInputError, PolydetError, bounded
from .imageio import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, Decoded, decode
from .meta import ModelInfo
from .ops.letterbox import PAD_VALUE, Letterbox, letterbox
from .results import ImageError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RGB:
    """An array whose channels are R, G, B (PIL, torchvision, ``decode_image(..., rgb=True)``)."""

    array: np.ndarray


@dataclass(frozen=True)
class BGR:
    """An array whose channels are B, G, R (cv2). A plain ``np.ndarray`` input means the same."""

    array: np.ndarray


ImageInput = Union[bytes, bytearray, memoryview, np.ndarray, RGB, BGR]


@dataclass(frozen=True, eq=False)
class Frame:
    """One good input after preprocessing: its decoded pixels (HxWx3 uint8 RGB; None where a preprocessor
    keeps them elsewhere, e.g. on a GPU) and the letterbox that maps the original image to the model.

    The pixels are the original's size, except for a large JPEG decoded reduced (``imageio.decode``): then
    they are ``ceil(size / s)`` for its DCT scale s, and ``letterbox`` still maps *original* pixels (its
    scale divided by s, exactly: s is a power of two), so polygons and ``size`` are the original's."""

    rgb: np.ndarray | None
    letterbox: Letterbox

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image."""
        return self.letterbox.in_shape


@dataclass(frozen=True, eq=False)
class Prepared:
    """A preprocessed batch: ``batch`` (G, 3, H, W) holds the good inputs in order (None if there are none);
    ``items`` has one Frame or ImageError per input."""

    batch: torch.Tensor | None
    items: tuple[Frame | ImageError, ...]

    @property
    def frames(self) -> list[Frame]:
        return [f for f in self.items if isinstance(f, Frame)]


class Preprocessor(ABC):
    """Decode + letterbox for one model (``info``: its input size, stride, letterbox mode) on one device."""

    info: ModelInfo

    @abstractmethod
    def __call__(self, images: Sequence[ImageInput]) -> Prepared:
        ...


def error_of(exc: BaseException) -> ImageError:
    """The ImageError for an exception: a PolydetError keeps its status and reason; anything else is a 500
    that names only the exception's type (its message may hold internals)."""
    if isinstance(exc, PolydetError):
        return ImageError(exc.http_status, bounded(str(exc)))
    return ImageError(500, f"internal error: {type(exc).__name__}")


def validate_array(img: np.ndarray) -> np.ndarray:
    """A caller's array (HxW, HxWx1, HxWx3, HxWx4; uint8 or uint16) -> HxWx3 uint8, channel order kept."""
    if not isinstance(img, np.ndarray):
        raise InvalidInputError(f"expected bytes or a numpy array, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)) or min(img.shape[:2]) < 1:
        raise InvalidInputError(f"array must be HxW, HxWx1, HxWx3 or HxWx4 with H, W >= 1, got {img.shape}")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InvalidInputError(f"array dtype must be uint8 or uint16, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return img


def to_rgb(image: ImageInput, max_pixels: int | None, max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
           min_side: int | None = None) -> Decoded:
    """Any input -> its HxWx3 uint8 RGB pixels, reduced only where ``imageio.decode`` may (an encoded JPEG
    and ``min_side``). Raises InvalidInputError / ImageTooLargeError with the reason."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode(image, max_pixels, max_bytes, min_side)
    if isinstance(image, RGB):
        rgb = validate_array(image.array)
    else:
        rgb = validate_array(image.array if isinstance(image, BGR) else image)[..., ::-1]
    return Decoded(rgb, 1, (rgb.shape[1], rgb.shape[0]))


class CpuPreprocessor(Preprocessor):
    """PIL decoding (EXIF, odd modes, a pixel cap read from the header, a decode budget, large JPEGs decoded
    reduced by DCT scaling to no less than the model's input), cv2 letterbox, one uint8 copy into the padded
    batch, then the float conversion on the backend's device. ``max_decode_bytes``: the most memory one
    image's decode may take (``imageio.DEFAULT_MAX_DECODE_BYTES``; None: no limit)."""

    def __init__(self, info: ModelInfo, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES):
        self.info = info
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_pixels = max_pixels
        self.max_decode_bytes = max_decode_bytes
        self.auto = info.letterbox == "auto" and info.dynamic

    def frame(self, image: ImageInput) -> tuple[Frame, np.ndarray]:
        d = to_rgb(image, self.max_pixels, self.max_decode_bytes, self.info.imgsz)
        out, lb = letterbox(np.ascontiguousarray(d.pixels), self.info.imgsz, self.info.stride, auto=self.auto)
        if d.scale != 1:  # letterboxed from reduced pixels: map from the original's (scale / 2**k is exact)
            lb = Letterbox(lb.scale / d.scale, lb.pad, (d.size[1], d.size[0]), lb.out_shape)
        return Frame(d.pixels, lb), out

    def __call__(self, images: Sequence[ImageInput]) -> Prepared:
        items, boxed = [], []
        for image in images:
            try:
                frame, out = self.frame(image)
            except Exception as e:  # noqa: BLE001 - one bad input fails only itself
                if not isinstance(e, PolydetError):
                    log.exception("preprocessing an input failed")
                items.append(error_of(e))
                continue
            items.append(frame)
            boxed.append(out)
        if not boxed:
            return Prepared(None, tuple(items))
        h = max(b.shape[0] for b in boxed)
        w = max(b.shape[1] for b in boxed)
        batch = np.full((len(boxed), h, w, 3), PAD_VALUE, dtype=np.uint8)
        for i, im in enumerate(boxed):  # rectangles of different sizes: pad right/bottom
            batch[i, : im.shape[0], : im.shape[1]] = im
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.info.uint8_input:  # the artifact converts inside its graph (graph pass "fuse-preprocess")
            return Prepared(x, tuple(items))
        return Prepared(x.permute(0, 3, 1, 2).to(self.dtype).div_(255.0), tuple(items))


def to_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """A batch for an artifact that takes uint8: ``(B, H, W, 3)`` uint8 RGB as it is, or ``(B, 3, H, W)``
    float in [0, 1] rounded to the 1/255 steps the artifact takes (exact for what ``CpuPreprocessor``
    or a GPU preprocessor makes from 8-bit pixels)."""
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[3] != 3:
            raise InvalidInputError(f"a uint8 batch must be (B, H, W, 3), got {tuple(x.shape)}")
        return x
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise InvalidInputError(f"expected a (B, 3, H, W) float or (B, H, W, 3) uint8 batch, got "
                                f"{tuple(x.shape)} {x.dtype}")
    return (x.float() * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
