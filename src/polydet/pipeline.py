"""Detector: images (bytes or arrays) -> Preprocessor -> backend -> NMS -> typed results.

Knows nothing of TorchServe or HTTP. ``Detector.detect`` takes a batch of inputs of any sizes and returns
a :class:`~polydet.results.BatchResult`: per input its :class:`~polydet.results.Detections` or its
:class:`~polydet.results.ImageError`, and the batch's stage timings. Bad inputs fail only themselves.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .backends import Backend, load_backend
from .imageio import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, decode_image
from .meta import ModelInfo
from .options import DetectOptions
from .ops.letterbox import PAD_VALUE
from .ops.nms import MAX_CANDIDATES, polygon_nms, polygon_nms_logits
from .ops.nms import warmup as nms_warmup
from .preprocess import RGB, CpuPreprocessor, Frame, ImageInput, Preprocessor, error_of
from .results import BatchResult, Detections, Result, Timings

__all__ = ["DetectOptions", "Detector", "decode_image"]

log = logging.getLogger(__name__)


def default_preprocessor(backend: Backend, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                         max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES, gpu_decode: bool = True,
                         decoder: str = "torchvision") -> Preprocessor:
    """The decode + letterbox stage for ``backend``: on a CUDA device, unless ``gpu_decode`` is False, the
    GPU one (:mod:`polydet.gpu_preprocess`) where its decoder runs there (probed; logged when not); else
    the CPU one. Both take the same limits and answer bad images the same way."""
    args = (backend.info, backend.device, backend.input_dtype, max_pixels, max_decode_bytes)
    # an artifact taking uint8 (graph pass "fuse-preprocess") is fed the CPU path's uint8 batch as it is
    if gpu_decode and backend.device.type == "cuda" and not backend.info.uint8_input:
        from .gpu_preprocess import gpu_preprocessor

        gpu = gpu_preprocessor(*args, decoder=decoder)
        if gpu is not None:
            return gpu
    return CpuPreprocessor(*args)


class Detector:
    """Polygon detection over any backend. ``detect`` takes a batch of images of any sizes.

    Building one calls :meth:`warmup` (``warmup=False`` leaves it to the first ``detect``).
    ``preprocessor``: the decode + letterbox stage; by default :func:`default_preprocessor`'s for the backend.
    ``max_candidates``: per image, the highest-scored candidates NMS considers (polygon_nms's own bound).
    ``gpu_decode``: with no ``preprocessor`` given and a CUDA backend, decode JPEGs and letterbox on the GPU
    (:func:`default_preprocessor`); False keeps the CPU path.
    """

    def __init__(self, backend: Backend, options: DetectOptions | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, warmup: bool = True,
                 preprocessor: Preprocessor | None = None, max_candidates: int = MAX_CANDIDATES,
                 gpu_decode: bool = True):
        self.backend = backend
        self.options = options or DetectOptions()
        self.max_pixels = max_pixels
        # the highest-scored candidates per image that NMS considers: bounds its cost whatever the options
        self.max_candidates = max_candidates
        self.preprocessor = preprocessor or default_preprocessor(backend, max_pixels, gpu_decode=gpu_decode)
        # the model facts images are prepared for (the backend's, unless a preprocessor says otherwise,
        # e.g. an eager model run at another input size)
        self.info: ModelInfo = self.preprocessor.info
        self.nms_backend: str | None = None  # the NMS path found by warmup(): "numba" or "torch"
        self.nms_on_cpu = False  # predictions on a GPU are copied to the CPU for the numba kernel
        if warmup:
            self.warmup()

    @classmethod
    def from_artifact(cls, path: str | Path, device: str | torch.device = "cpu", precision=None,
                      options: DetectOptions | None = None, **kw) -> "Detector":
        return cls(load_backend(path, device=device, precision=precision), options=options, **kw)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def warmup(self, batch_sizes: tuple[int, ...] = ()) -> str:
        """Load the NMS path this detector's predictions will take, so that the first request does not:
        the numba kernel for CPU predictions (from numba's cache, or compiled, once per process).
        Returns "numba" or "torch". Where numba cannot load, "torch", as polygon_nms would fall back
        (logged once); an invalid ``$POLYDET_NMS``, or ``POLYDET_NMS=numba`` where it cannot run, raises
        here rather than failing every request later.

        ``batch_sizes``: then run the whole pipeline once per entry on blank (pad-grey) images of the
        model's input size, in that order: a TorchScript artifact's first calls go through the profiling
        executor and a new batch size costs once more; the TorchServe handler warms with (1, 1, batchSize)
        while its worker starts.
        """
        self._warm_nms()
        blank = RGB(np.full((self.info.imgsz, self.info.imgsz, 3), PAD_VALUE, dtype=np.uint8))
        for n in batch_sizes:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"warm-up batch sizes must be positive integers, got {n!r}")
            self.detect([blank] * n)
        return self.nms_backend

    def _warm_nms(self) -> None:
        device = torch.device(self.backend.output_device)
        if device.type == "cpu":
            self.nms_backend = nms_warmup(device, torch.float32)  # every backend returns float32 predictions
            self.nms_on_cpu = False
        else:
            # Predictions on a GPU: one copy of B x N x (9+nc) floats to the CPU and the numba kernel there
            # beat the torch path on the GPU (its per-image loop of small kernels; BENCHMARKS.md, H100),
            # unless $POLYDET_NMS=torch or numba cannot load: then the torch path, on the GPU.
            self.nms_backend = nms_warmup("cpu", torch.float32)
            self.nms_on_cpu = self.nms_backend == "numba"

    def detect(self, images: Sequence[ImageInput],
               options: DetectOptions | Sequence[DetectOptions | None] | None = None) -> BatchResult:
        """Detect in a batch of images: encoded files (bytes), arrays in cv2's BGR order, or arrays whose
        order is declared (``preprocess.RGB``/``BGR``). One result per input, in order."""
        opts = self._options(options, len(images))
        if not images:
            return BatchResult(())
        t0 = time.perf_counter()
        prepared = self.preprocessor(images)
        t = Timings(preprocess=(time.perf_counter() - t0) * 1e3)
        good = [i for i, item in enumerate(prepared.items) if isinstance(item, Frame)]
        out: list[Result] = list(prepared.items)
        if good:
            found, t2 = self._run(prepared.batch, [prepared.items[i] for i in good], [opts[i] for i in good])
            t = t + t2
            for i, r in zip(good, found):
                out[i] = r
        pixels = tuple(item.rgb if isinstance(item, Frame) else None for item in prepared.items)
        return BatchResult(tuple(out), t, pixels)

    def _options(self, options, n: int) -> list[DetectOptions]:
        if options is None or isinstance(options, DetectOptions):
            return [options or self.options] * n
        opts = [o or self.options for o in options]
        if len(opts) != n:
            raise ValueError(f"{len(opts)} option sets for {n} images")
        return opts

    def _run(self, x: torch.Tensor, frames: list[Frame], opts: list[DetectOptions]) -> tuple[list[Result], Timings]:
        """Model + NMS on the good images; if that fails, image by image, so only a culprit gets the error."""
        try:
            return self._infer(x, frames, opts)
        except Exception as e:  # noqa: BLE001
            if len(frames) == 1:
                log.exception("detection failed")
                return [error_of(e)], Timings()
            log.warning("batch of %d failed; retrying one by one", len(frames), exc_info=True)
        results, total = [], Timings()
        for k in range(len(frames)):
            r, t = self._run(x[k : k + 1], frames[k : k + 1], opts[k : k + 1])
            results += r
            total = total + t
        return results, total

    def _infer(self, x, frames, opts) -> tuple[list[Result], Timings]:
        t0 = time.perf_counter()
        # logit scores (graph pass "drop-sigmoid") stay logits: _nms thresholds them in logit space
        pred = self.backend.raw(x) if self.backend.info.logit_scores else self.backend(x)
        if pred.device.type == "cuda":
            torch.cuda.synchronize(pred.device)
        t1 = time.perf_counter()
        results = self.postprocess(pred, frames, opts)
        return results, Timings(inference=(t1 - t0) * 1e3, postprocess=(time.perf_counter() - t1) * 1e3)

    def postprocess(self, pred: torch.Tensor, frames: list[Frame], opts: list[DetectOptions]) -> list[Detections]:
        """Head output (B,N,9+nc) of ``frames`` (obj/cls as logits where ``backend.info.logit_scores``) -> NMS ->
        polygons in each original image."""
        if self.nms_backend is None:  # built with warmup=False: decide now, once
            self._warm_nms()
        if self.nms_on_cpu and pred.device.type != "cpu":
            pred = pred.cpu()
        names = tuple(self.info.names)
        same = all(o == opts[0] for o in opts)
        kept_all = self._nms(pred, opts[0]) if same else None
        results = []
        for i, frame in enumerate(frames):
            kept = (kept_all[i] if same else self._nms(pred[i : i + 1], opts[i])[0]).cpu()
            polys = frame.letterbox.unmap(kept[:, :8].reshape(-1, 4, 2).double()).numpy()
            h, w = frame.size
            results.append(Detections(w, h, polys, kept[:, 8].numpy().astype(np.float32),
                                      kept[:, 9].numpy().astype(np.int64), names))
        return results

    def _nms(self, pred: torch.Tensor, o: DetectOptions) -> list[torch.Tensor]:
        nms = polygon_nms_logits if self.backend.info.logit_scores else polygon_nms
        return nms(pred, conf=o.conf, iou=o.iou, max_det=o.max_det, multi_label=o.multi_label,
                           agnostic=o.agnostic, max_candidates=self.max_candidates)

    def __call__(self, images, options=None) -> BatchResult:
        return self.detect(list(images), options)
