"""Helpers the unit and integration tests share (tests/ is on sys.path through tests/conftest.py): artifacts
exported the ways users export them, and one run's detections held against another's."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from polydet.backends.base import META_KEY

MIXED_SHAPES = ((300, 500, 3), (640, 200, 3), (128, 128, 3))  # landscape, tall, square: letterboxing differs


class TupleOut(torch.nn.Module):
    """``model``'s predictions and a second output the pipeline must ignore (``extra(predictions)``), as
    YOLOv5's (pred, train_out) exports return."""

    def __init__(self, model, extra=lambda out: out[..., 8]):
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, x):
        out = self.model(x)
        return out, self.extra(out)


def seed_onnx(model, path: Path, imgsz: int, batch: int = 1) -> Path:
    """Exported as the seed's export.py does it (no --dynamic): a fixed (batch, 3, imgsz, imgsz) input, no
    polydet metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(batch, 3, imgsz, imgsz),), str(path), opset_version=17,
                          input_names=["images"], output_names=["output"], dynamo=False)
    return path


def tuple_torchscript(model, info, path: Path, extra=lambda out: out[..., 8]) -> Path:
    """``TupleOut(model, extra)`` traced at batch 1 and ``info``'s size, polydet's metadata inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(TupleOut(model, extra), torch.zeros(1, 3, info.imgsz, info.imgsz), strict=False)
    ts.save(str(path), _extra_files={META_KEY: info.to_json()})
    return path


def mixed_images(seed: int = 0, shapes=MIXED_SHAPES) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, s, dtype=np.uint8) for s in shapes]


def assert_same_detections(got: list[dict], want: list[dict], px: float, score: float | None = None) -> None:
    """Per image (``to_dict()`` form): the same class ids in the same order, polygons within ``px`` and, when
    ``score`` is given, scores within it."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        np.testing.assert_allclose([d["polygon"] for d in a["detections"]], [d["polygon"] for d in b["detections"]],
                                   atol=px)
        if score is not None:
            np.testing.assert_allclose([d["score"] for d in a["detections"]], [d["score"] for d in b["detections"]],
                                       atol=score)


def assert_detects_like(path: Path, ref: Path, options, px: float, score: float | None = None, images=None) -> None:
    """A Detector on ``path`` finds what one on ``ref`` finds (and ``ref`` finds something) on ``images``
    (default: ``mixed_images()``)."""
    from polydet.pipeline import Detector

    imgs = mixed_images() if images is None else images
    got = [r.to_dict() for r in Detector.from_artifact(path, options=options).detect(imgs)]
    want = [r.to_dict() for r in Detector.from_artifact(ref, options=options).detect(imgs)]
    assert sum(len(w["detections"]) for w in want) > 0
    assert_same_detections(got, want, px, score)
