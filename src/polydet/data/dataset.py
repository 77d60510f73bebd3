"""Training / validation dataset: synthetic samples generated on the fly, or a directory of NAME.jpg +
NAME.txt. Items are letterboxed squares (as at inference) with corner-preserving augmentation.

``PolygonDataset(source, imgsz, augment, n, seed)[i] -> (img uint8 tensor (3, S, S) RGB,
targets float32 tensor (K, 9) [cls, x1, y1, ..., x4, y4] in letterboxed pixels, canonical order)``;
``collate(batch) -> (imgs (B, 3, S, S) uint8, targets (T, 10) [batch_idx, cls, x1, ..., y4])``.

Determinism: synthetic item ``i`` is rendered from ``default_rng([seed, i])`` and augmented from
``default_rng([seed, i, 1])``, whatever the worker; pass a new ``seed`` each epoch for fresh samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .camera import clip_convex, order_corners_np, poly_area
from .labels import read_labels
from .sources import extra
from .synth import SynthConfig, render_sample
from .synth import warm as synth_warm

IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PAD_VALUE = 114
# On-the-fly training images stop at 1024 px: the model sees them letterboxed to 224-320, so larger
# renders cost ~30 % more loader time for no visible difference. Written sets (validation) keep 320-1600.
TRAIN_SYNTH = SynthConfig(long_side=(320, 1024))


@dataclass
class AugConfig:
    degrees: float = 10.0  # extra in-plane rotation (the generator already covers 0-360 itself)
    translate: float = 0.08  # fraction of the image size
    scale: tuple[float, float] = (0.8, 1.15)  # zoom; > 1 can push corners out, those labels may be dropped
    shear: float = 2.0  # degrees
    fliplr: float = 0.5  # mirrored text is still text; the corner order is recomputed after a flip
    flipud: float = 0.1
    hsv: tuple[float, float, float] = (0.015, 0.5, 0.35)  # max hue (fraction of a turn), sat, value gains
    min_inside: float = 0.6  # drop a label if less than this fraction of its area stays in the image
    p: float = 1.0  # probability of the geometric part


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Square letterbox as at inference: ``polydet.ops.letterbox.letterbox(img, size, auto=False)``
    (scale r = size / long side, INTER_LINEAR, pad 114 centred); returns (img, r, (left, top))."""
    try:
        from ..ops.letterbox import letterbox as ops_letterbox
    except ImportError:  # ops not importable (partial install / being edited): same arithmetic, locally
        h, w = img.shape[:2]
        r = size / max(h, w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        out = img if (nh, nw) == (h, w) else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (size - nh) // 2, (size - nw) // 2
        out = cv2.copyMakeBorder(out, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT,
                                 value=(PAD_VALUE,) * 3)
        return out, r, (left, top)
    out, lb = ops_letterbox(img, size, stride=32, auto=False)
    return out, float(lb.scale), (int(lb.pad[0]), int(lb.pad[1]))


def augment_hsv(rng, img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    """Random hue shift and saturation/value gains through one LUT per channel (YOLOv5 style)."""
    if not any(gains):
        return img
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + [0, 1, 1]
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x + r[0] * 180) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def random_affine(rng, img: np.ndarray, quads: np.ndarray, aug: AugConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rotate/scale/shear/translate/flip a square image about its centre; ``quads`` (K, 4, 2) follow.
    Returns the image and the transformed quads (corner order not yet canonical)."""
    s = img.shape[0]
    c = np.array([[1, 0, -s / 2], [0, 1, -s / 2], [0, 0, 1]])
    a = math.radians(rng.uniform(-aug.degrees, aug.degrees))
    k = rng.uniform(*aug.scale)
    r = np.array([[k * math.cos(a), -k * math.sin(a), 0], [k * math.sin(a), k * math.cos(a), 0], [0, 0, 1]])
    sh = np.eye(3)
    sh[0, 1], sh[1, 0] = (math.tan(math.radians(rng.uniform(-aug.shear, aug.shear))) for _ in range(2))
    f = np.diag([-1.0 if rng.random() < aug.fliplr else 1.0, -1.0 if rng.random() < aug.flipud else 1.0, 1.0])
    t = np.array([[1, 0, s / 2 + rng.uniform(-aug.translate, aug.translate) * s],
                  [0, 1, s / 2 + rng.uniform(-aug.translate, aug.translate) * s], [0, 0, 1]])
    m = t @ f @ sh @ r @ c  # in pixel-edge coordinates (corner convention, like the labels)
    # cv2 samples at pixel centres: shift in by +0.5, out by -0.5 so edges map exactly.
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    mc = np.linalg.inv(half) @ m @ half
    out = cv2.warpAffine(img, mc[:2], (s, s), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    if len(quads):
        pts = np.concatenate([quads.reshape(-1, 2), np.ones((quads.size // 2, 1))], 1) @ m[:2].T
        quads = pts.reshape(-1, 4, 2)
    return out, quads


def keep_inside(quads: np.ndarray, size: int, min_inside: float) -> np.ndarray:
    """Boolean mask of quads with at least ``min_inside`` of their area inside the square image."""
    box = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    keep = np.zeros(len(quads), bool)
    for i, q in enumerate(quads):
        a = poly_area(q)
        keep[i] = a > 4 and poly_area(clip_convex(q, box)) >= min_inside * a
    return keep


_fork_hook = False


def _cv2_fork_safe() -> None:
    """Make forking loader workers safe for OpenCV (once per process, not at import).

    OpenCV's pthreads pool is not fork-safe: a pool thread that holds the pool's mutex at the moment of
    ``fork`` leaves it locked forever in the child, whose next parallel OpenCV call then hangs (seen
    here with a few % of DataLoader starts). Around each ``os.fork`` the parent drops to 1 thread (the
    pool is stopped and joined), so children start with no pool and one thread, which is what a loader
    worker wants anyway; the parent gets its thread count back right after."""
    global _fork_hook
    if _fork_hook or not hasattr(os, "register_at_fork"):
        return
    saved: list[int] = []

    def before():
        saved.append(cv2.getNumThreads())
        cv2.setNumThreads(1)

    def after_in_parent():
        if saved:
            cv2.setNumThreads(saved.pop())

    os.register_at_fork(before=before, after_in_parent=after_in_parent)
    _fork_hook = True


class PolygonDataset(torch.utils.data.Dataset):
    """See module docstring. ``source``: "synth" or a directory of images with same-stem .txt labels."""

    def __init__(self, source: str | Path = "synth", imgsz: int = 224, augment: bool = True, n: int = 10000,
                 seed: int = 0, cfg: SynthConfig | None = None, aug: AugConfig | None = None, warm: bool = True):
        self.imgsz, self.augment, self.seed = int(imgsz), bool(augment), int(seed)
        self.cfg, self.aug = cfg or TRAIN_SYNTH, aug or AugConfig()
        self.synth = str(source) == "synth"
        if self.synth:
            self.n, self.files = int(n), []
            if warm:  # load pictures, glyph sprites and noise once here, so forked workers inherit them
                synth_warm()
                extra(self.cfg.sources)  # the installed extra sources of generator 2.0, if it uses them
        else:
            root = Path(source)
            if not root.is_dir():
                raise FileNotFoundError(f"dataset source {source!r} is neither 'synth' nor a directory")
            # Only labelled images: an image without a same-stem .txt (e.g. preview.jpg) is not data;
            # an image with no objects has an empty .txt.
            self.files = sorted(p for p in root.iterdir()
                                if p.suffix.lower() in IMG_SUFFIXES and p.with_suffix(".txt").is_file())
            if not self.files:
                raise FileNotFoundError(f"no labelled images ({', '.join(IMG_SUFFIXES)} + same-stem .txt) in {root}")
            self.n = len(self.files)
        _cv2_fork_safe()

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Original image (BGR) and labels (K, 9) in its pixels."""
        if self.synth:
            return render_sample(np.random.default_rng([self.seed, i]), self.cfg)
        img = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {self.files[i]}")
        return img, read_labels(self.files[i].with_suffix(".txt"), img.shape[1], img.shape[0])

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        img, labels = self.load(i)
        img, r, (left, top) = letterbox(img, self.imgsz)
        quads = labels[:, 1:].reshape(-1, 4, 2).astype(np.float64) * r + [left, top]
        cls = labels[:, 0]
        if self.augment:
            rng = np.random.default_rng([self.seed, i, 1])
            if rng.random() < self.aug.p:
                img, quads = random_affine(rng, img, quads, self.aug)
                keep = keep_inside(quads, self.imgsz, self.aug.min_inside)
                quads, cls = quads[keep], cls[keep]
            img = augment_hsv(rng, img, self.aug.hsv)
        targets = np.zeros((len(quads), 9), np.float32)
        if len(quads):
            targets[:, 0] = cls
            targets[:, 1:] = order_corners_np(quads).reshape(-1, 8)
        rgb = np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))
        return torch.from_numpy(rgb), torch.from_numpy(targets)


def collate(batch):
    """Stack images; concatenate targets with their batch index in front -> (T, 10)."""
    imgs = torch.stack([b[0] for b in batch])
    t = [torch.cat([torch.full((len(b[1]), 1), float(i)), b[1]], 1) for i, b in enumerate(batch)]
    return imgs, torch.cat(t) if t else torch.zeros((0, 10))
