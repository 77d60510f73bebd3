"""Post-processing options: one owner of the thresholds' defaults and their validation.

A light module (no torch): the CLI's parsers, the archive builder and model-config.yaml's reader take the
defaults from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import InvalidInputError, quote


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
            raise InvalidInputError(f"unknown option(s) {quote(unknown)}; allowed: {sorted(fields)}")
        for k, v in d.items():
            if k in ("conf", "iou"):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise InvalidInputError(f"{k} must be a number in [0, 1], got {quote(v)}")
            elif k == "max_det":
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10000:
                    raise InvalidInputError(f"max_det must be an integer in [1, 10000], got {quote(v)}")
            elif not isinstance(v, bool):
                raise InvalidInputError(f"{k} must be true or false, got {quote(v)}")
        return dataclasses.replace(base or cls(), **{k: (float(v) if k in ("conf", "iou") else v)
                                                     for k, v in d.items()})

    def replace(self, **kw) -> "DetectOptions":
        return self.from_dict(kw, base=self)
