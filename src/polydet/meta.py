"""What an artifact says about itself. Written into every export, read back by every backend."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .errors import ModelLoadError

LAYOUT = "polygon-yolov5/v1: (B, N, 9+nc) rows [x1,y1,x2,y2,x3,y3,x4,y4,obj,cls...] in letterboxed pixels"


@dataclass
class ModelInfo:
    names: list[str] = field(default_factory=lambda: ["page", "photo"])
    imgsz: int = 224  # square input side the model was trained for / a fixed-shape export expects
    stride: int = 32  # max stride: letterboxed sides must be multiples of it
    letterbox: str = "square"  # "square": fixed imgsz x imgsz; "auto": minimum stride-aligned rectangle
    dynamic: bool = False  # True when the artifact accepts any stride-aligned HxW and batch
    half: bool = False  # True when the artifact expects fp16 input
    layout: str = LAYOUT

    @property
    def nc(self) -> int:
        return len(self.names)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelInfo":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ModelLoadError(f"artifact metadata is not valid JSON: {e}") from e
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelLoadError(f"artifact metadata has unknown keys {sorted(unknown)}")
        if d.get("letterbox", "square") not in ("square", "auto"):
            raise ModelLoadError(f"artifact metadata: letterbox must be 'square' or 'auto', got {d['letterbox']!r}")
        return cls(**d)
