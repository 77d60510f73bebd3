"""Letterbox resize (keep aspect, pad with 114) and its inverse for polygons."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """What letterbox did: ``out = in * scale + pad``. ``unmap`` inverts it for polygons."""

    scale: float  # same factor on both axes
    pad: tuple[float, float]  # (left, top) padding in output pixels
    in_shape: tuple[int, int]  # (h, w) of the original image
    out_shape: tuple[int, int]  # (h, w) of the letterboxed image

    def map(self, pts):
        """Original-image pixels -> letterboxed pixels. ``pts``: (..., 2) array or tensor."""
        return pts * self.scale + _like(pts, self.pad)

    def unmap(self, pts, clamp: bool = True):
        """Letterboxed pixels -> original-image pixels, each coordinate clamped to the image unless told
        not to (as the seeds do). ``pts``: (..., 2) (e.g. (K, 4, 2) polygons), array or tensor."""
        out = (pts - _like(pts, self.pad)) / self.scale
        if clamp:
            h, w = self.in_shape
            if isinstance(out, torch.Tensor):
                out = torch.stack((out[..., 0].clamp(0, w), out[..., 1].clamp(0, h)), -1)
            else:
                out = np.stack((out[..., 0].clip(0, w), out[..., 1].clip(0, h)), -1)
        return out


def _like(pts, values):
    if isinstance(pts, torch.Tensor):
        return torch.tensor(values, dtype=pts.dtype, device=pts.device)
    return np.asarray(values, dtype=pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float64)


def letterbox_shape(in_shape: tuple[int, int], size: int, stride: int = 32, auto: bool = False,
                    scaleup: bool = True) -> tuple[tuple[int, int], float, tuple[int, int]]:
    """Output (h, w), scale, and resized (h, w) for an image of ``in_shape`` (h, w).

    ``auto=False``: fixed ``size x size`` square (what a fixed-shape export needs).
    ``auto=True``: the long side becomes ``size`` and the short side is padded only up to a multiple of
    ``stride`` (the minimum rectangle; needs a dynamic-shape model).
    """
    h, w = in_shape
    if h <= 0 or w <= 0:
        raise ValueError(f"image shape must be positive, got {in_shape}")
    if size % stride:
        raise ValueError(f"size {size} must be a multiple of stride {stride}")
    r = size / max(h, w)
    if not scaleup:
        r = min(r, 1.0)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    if auto:
        out = (math.ceil(nh / stride) * stride, math.ceil(nw / stride) * stride)
    else:
        out = (size, size)
    return out, r, (nh, nw)


def letterbox(img: np.ndarray, size: int, stride: int = 32, auto: bool = False,
              scaleup: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize ``img`` (H, W, C) with cv2 INTER_LINEAR keeping aspect, centre it on a 114-grey canvas."""
    (oh, ow), r, (nh, nw) = letterbox_shape(img.shape[:2], size, stride, auto, scaleup)
    resized = img if (nh, nw) == img.shape[:2] else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (oh - nh) // 2, (ow - nw) // 2
    out = cv2.copyMakeBorder(resized, top, oh - nh - top, left, ow - nw - left, cv2.BORDER_CONSTANT,
                             value=(PAD_VALUE,) * (img.shape[2] if img.ndim == 3 else 1))
    if out.ndim == 2 and img.ndim == 3:  # cv2 drops a trailing 1-channel axis
        out = out[..., None]
    # The scale actually applied per axis differs from r by rounding; use r (what the seeds use) so the
    # inverse is exact up to that sub-pixel rounding.
    return out, Letterbox(scale=r, pad=(float(left), float(top)), in_shape=img.shape[:2], out_shape=(oh, ow))
