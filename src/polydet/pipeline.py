"""Detector: image bytes or arrays -> letterbox -> batch -> backend -> NMS -> original-image polygons.

Knows nothing of TorchServe or HTTP; transports call ``decode_image`` per request (to isolate bad
inputs) and ``Detector.detect`` per batch.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backends import Backend, load_backend
from .errors import InvalidInputError
from .imageio import DEFAULT_MAX_PIXELS, as_bgr_array, decode_image
from .meta import ModelInfo
from .ops.letterbox import letterbox
from .ops.nms import polygon_nms
from .ops.nms import warmup as nms_warmup

__all__ = ["DetectOptions", "Detector", "decode_image"]


@dataclass(frozen=True)
class DetectOptions:
    """Post-processing thresholds; per server in model-config.yaml, per request in JSON."""

    conf: float = 0.25  # keep detections with obj > conf and obj*cls > conf (the seeds' rule)
    iou: float = 0.45  # suppress a lower-scored quad of the same class at polygon IoU >= iou
    max_det: int = 100  # a photo holds a handful of pages; 100 bounds the response size
    multi_label: bool = False  # one row per class above conf instead of the best class only
    agnostic: bool = False  # suppress across classes (a page and a photo on the same quad)

    @classmethod
    def from_dict(cls, d: dict, base: "DetectOptions | None" = None) -> "DetectOptions":
        """Validated options from user input; unknown keys, wrong types and out-of-range values raise."""
        if not isinstance(d, dict):
            raise InvalidInputError(f"options must be an object, got {type(d).__name__}")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise InvalidInputError(f"unknown option(s) {unknown}; allowed: {sorted(fields)}")
        for k, v in d.items():
            if k in ("conf", "iou"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise InvalidInputError(f"{k} must be a number in [0, 1], got {v!r}")
            elif k == "max_det":
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10000:
                    raise InvalidInputError(f"max_det must be an integer in [1, 10000], got {v!r}")
            elif not isinstance(v, bool):
                raise InvalidInputError(f"{k} must be true or false, got {v!r}")
        return dataclasses.replace(base or cls(), **{k: (float(v) if k in ("conf", "iou") else v)
                                                     for k, v in d.items()})

    def replace(self, **kw) -> "DetectOptions":
        return self.from_dict(kw, base=self)


class Detector:
    """Polygon detection over any backend. ``detect`` takes a batch of images of any sizes.

    Building one calls :meth:`warmup` (``warmup=False`` leaves it to the first ``detect``).
    """

    def __init__(self, backend: Backend, options: DetectOptions | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, warmup: bool = True):
        self.backend = backend
        self.info: ModelInfo = backend.info
        self.options = options or DetectOptions()
        self.max_pixels = max_pixels
        self.last_timings: dict[str, float] = {}
        self.nms_backend: str | None = None  # the NMS path found by warmup(): "numba" or "torch"
        self.nms_on_cpu = False  # predictions on a GPU are copied to the CPU for the numba kernel
        if warmup:
            self.warmup()

    def warmup(self, batch_sizes: tuple[int, ...] = ()) -> str:
        """Load the NMS path this detector's predictions will take, so that the first request does not:
        the numba kernel for CPU predictions (~1 s from numba's cache, ~8 s compiling, once per process).
        Returns "numba" or "torch". Where numba cannot load, "torch", as polygon_nms would fall back
        (logged once); an invalid ``$POLYDET_NMS``, or ``POLYDET_NMS=numba`` where it cannot run, raises
        here rather than failing every request later.

        ``batch_sizes``: then run the whole pipeline once per entry on blank (pad-grey) images of the model's
        input size, in that order. A TorchScript artifact's first two calls go through the profiling
        executor (on this CPU at 224: ~200 and ~75 ms vs ~22 ms after) and a new batch size costs ~30 ms
        once more; the TorchServe handler warms with (1, 1, batchSize) while its worker starts.
        """
        self._warm_nms()
        if batch_sizes:
            blank = np.full((self.info.imgsz, self.info.imgsz, 3), 114, dtype=np.uint8)
            for n in batch_sizes:
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ValueError(f"warm-up batch sizes must be positive integers, got {n!r}")
                self.detect([blank] * n, rgb=True)
            self.last_timings = {}
        return self.nms_backend

    def _warm_nms(self) -> None:
        device = torch.device(getattr(self.backend, "output_device", None) or self.device)
        if device.type == "cpu":
            self.nms_backend = nms_warmup(device, torch.float32)  # every backend returns float32 predictions
            self.nms_on_cpu = False
        else:
            # Predictions on a GPU: one copy of B x N x (9+nc) floats to the CPU and the numba kernel there
            # beat the torch path on the GPU (its per-image loop of small kernels; BENCHMARKS.md, H100),
            # unless $POLYDET_NMS=torch or numba cannot load: then the torch path, on the GPU.
            self.nms_backend = nms_warmup("cpu", torch.float32)
            self.nms_on_cpu = self.nms_backend == "numba"

    @classmethod
    def from_artifact(cls, path: str | Path, device: str | torch.device = "cpu", half: bool = False,
                      options: DetectOptions | None = None, **kw) -> "Detector":
        return cls(load_backend(path, device=device, half=half), options=options, **kw)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def _prepare(self, image, rgb_input: bool = False) -> tuple[np.ndarray, tuple[int, int], object]:
        """-> (letterboxed RGB uint8, original (h, w), Letterbox)."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            rgb = decode_image(image, self.max_pixels, rgb=True)
        elif rgb_input:
            rgb = as_bgr_array(image)  # same validation; the channels are already R, G, B
        else:
            rgb = as_bgr_array(image)[..., ::-1]
        auto = self.info.letterbox == "auto" and self.info.dynamic
        out, lb = letterbox(np.ascontiguousarray(rgb), self.info.imgsz, self.info.stride, auto=auto)
        return out, rgb.shape[:2], lb

    def preprocess(self, images: list, rgb: bool = False) -> tuple[torch.Tensor, list]:
        """Letterbox each image and stack into a (B,3,H,W) float batch on the backend's device."""
        prepared = [self._prepare(im, rgb) for im in images]
        h = max(p[0].shape[0] for p in prepared)
        w = max(p[0].shape[1] for p in prepared)
        batch = np.full((len(prepared), h, w, 3), 114, dtype=np.uint8)
        for i, (im, _, _) in enumerate(prepared):  # rectangles of different sizes: pad right/bottom
            batch[i, : im.shape[0], : im.shape[1]] = im
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        x = x.to(self.backend.input_dtype).div_(255.0)
        return x, prepared

    def detect(self, images: list, options: DetectOptions | list[DetectOptions] | None = None,
               rgb: bool = False) -> list[dict]:
        """Detect in a batch of images (bytes, or HxW[xC] uint8/uint16 arrays in cv2's BGR order, or in
        RGB order with ``rgb=True``, e.g. from ``decode_image(data, rgb=True)``, which saves a copy).

        Returns one output-contract dict per image. Raises InvalidInputError for a bad image; callers
        that must isolate bad inputs decode each one first with ``decode_image``.
        """
        if not images:
            return []
        opts = options if isinstance(options, list) else [options or self.options] * len(images)
        if len(opts) != len(images):
            raise ValueError(f"{len(opts)} option sets for {len(images)} images")
        t0 = time.perf_counter()
        x, prepared = self.preprocess(images, rgb)
        t1 = time.perf_counter()
        pred = self.backend(x)
        if pred.device.type == "cuda":
            torch.cuda.synchronize(pred.device)
        t2 = time.perf_counter()
        results = self.postprocess(pred, prepared, opts)
        t3 = time.perf_counter()
        self.last_timings = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                             "postprocess": (t3 - t2) * 1e3}
        return results

    def postprocess(self, pred: torch.Tensor, prepared: list, opts: list[DetectOptions]) -> list[dict]:
        names = self.info.names
        if self.nms_backend is None:  # built with warmup=False: decide now, once
            self._warm_nms()
        if self.nms_on_cpu and pred.device.type != "cpu":
            pred = pred.cpu()
        results = []
        same = all(o == opts[0] for o in opts)
        kept_all = self._nms(pred, opts[0]) if same else None
        for i, (_, (h, w), lb) in enumerate(prepared):
            kept = kept_all[i] if same else self._nms(pred[i : i + 1], opts[i])[0]
            kept = kept.cpu()
            polys = lb.unmap(kept[:, :8].reshape(-1, 4, 2).double()).numpy()
            dets = [{"class_id": int(c), "class_name": names[int(c)] if int(c) < len(names) else str(int(c)),
                     "score": round(float(s), 5), "polygon": [[round(float(x), 2), round(float(y), 2)] for x, y in p]}
                    for p, s, c in zip(polys, kept[:, 8].tolist(), kept[:, 9].tolist())]
            results.append({"width": int(w), "height": int(h), "detections": dets})
        return results

    @staticmethod
    def _nms(pred: torch.Tensor, o: DetectOptions) -> list[torch.Tensor]:
        return polygon_nms(pred, conf=o.conf, iou=o.iou, max_det=o.max_det, multi_label=o.multi_label,
                           agnostic=o.agnostic)

    def __call__(self, images, options=None):
        return self.detect(list(images), options)
