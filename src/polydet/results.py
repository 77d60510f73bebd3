"""Typed results of the pipeline: per image either its detections or its error, plus the batch's timings.

Arrays stay arrays (unrounded, original-image pixels); :meth:`Detections.to_dict` is the output contract
(README) and is called only where a transport serialises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence, Union

import numpy as np

# Decimals of the output contract: corners to 0.01 px, scores to 1e-5.
POLYGON_DECIMALS = 2
SCORE_DECIMALS = 5


@dataclass(frozen=True, eq=False)
class Detections:
    """One image's detections, sorted by score (highest first).

    polygons: float64 (K, 4, 2) corners TL, TR, BR, BL in original-image pixels (after EXIF orientation);
    scores: float32 (K,); class_ids: int64 (K,); names: the model's class names.
    """

    width: int
    height: int
    polygons: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: tuple[str, ...]

    ok = True  # ImageError.ok is False: `if r.ok` tells the two apart

    def polygons_for(self, shape: tuple[int, ...]) -> np.ndarray:
        """The polygons in the pixels of an image of shape (h, w[, c]) of the same scene: the original's
        (no change) or a reduced decode (BatchResult.pixels of a large JPEG)."""
        return self.polygons * (shape[1] / self.width, shape[0] / self.height)

    def __len__(self) -> int:
        return len(self.scores)

    def class_name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else str(class_id)

    @property
    def class_names(self) -> list[str]:
        return [self.class_name(int(c)) for c in self.class_ids]

    def to_dict(self) -> dict:
        """The output contract: ``{"width", "height", "detections": [{class_id, class_name, score, polygon}]}``."""
        dets = [{"class_id": int(c), "class_name": self.class_name(int(c)), "score": round(float(s), SCORE_DECIMALS),
                 "polygon": [[round(float(x), POLYGON_DECIMALS), round(float(y), POLYGON_DECIMALS)] for x, y in p]}
                for p, s, c in zip(self.polygons, self.scores, self.class_ids)]
        return {"width": int(self.width), "height": int(self.height), "detections": dets}


@dataclass(frozen=True)
class ImageError:
    """Why one image of a batch got no detections, with the HTTP status a transport should answer."""

    status: int
    reason: str
    ok = False

    def to_dict(self) -> dict:
        return {"error": self.reason, "code": self.status}


Result = Union[Detections, ImageError]


@dataclass(frozen=True)
class Timings:
    """Milliseconds the batch spent in each stage (decode + letterbox, model, NMS + unmapping)."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0

    def __add__(self, other: "Timings") -> "Timings":
        return Timings(self.preprocess + other.preprocess, self.inference + other.inference,
                       self.postprocess + other.postprocess)


@dataclass(frozen=True)
class BatchResult(Sequence):
    """What :meth:`polydet.pipeline.Detector.detect` returns: one result per input, in order, and the timings."""

    results: tuple[Result, ...]
    timings: Timings = field(default_factory=Timings)
    # each good input's decoded pixels (HxWx3 uint8 RGB; None for an error), for callers that crop or draw:
    # nothing is decoded twice. Original size, except a large JPEG decoded reduced (an exact 1/2, 1/4 or
    # 1/8): map polygons onto them with Detections.polygons_for(pixels.shape)
    pixels: tuple[np.ndarray | None, ...] = ()

    def __getitem__(self, i):
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    @property
    def errors(self) -> list[tuple[int, ImageError]]:
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, ImageError)]
