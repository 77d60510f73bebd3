"""What an artifact says about itself. Written into every export, read back by every backend."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum

from .errors import ModelLoadError

LAYOUT = "polygon-yolov5/v1: (B, N, 9+nc) rows [x1,y1,x2,y2,x3,y3,x4,y4,obj,cls...] in letterboxed pixels"
# The same rows with obj and cls as logits: the graph pass "drop-sigmoid" removed the final sigmoids. A layout of
# its own, so that a reader that does not know the pass refuses the artifact instead of thresholding logits.
LAYOUT_LOGITS = ("polygon-yolov5/v1-logits: (B, N, 9+nc) rows [x1,y1,x2,y2,x3,y3,x4,y4,obj,cls...] in "
                 "letterboxed pixels, obj and cls as logits (no sigmoid)")
UINT8_INPUT_PASS = "fuse-preprocess"  # the graph takes (B, H, W, 3) uint8 RGB; /255 and NCHW are inside it
LOGITS_PASS = "drop-sigmoid"  # the graph outputs LAYOUT_LOGITS


def layout_for(passes) -> str:
    """The output layout of an artifact that ran ``passes``."""
    return LAYOUT_LOGITS if LOGITS_PASS in passes else LAYOUT


class Precision(str, Enum):
    """Numeric precision of an artifact's weights and input (a ``str`` so it serialises as its value)."""

    FP32 = "fp32"
    FP16 = "fp16"  # fp16 input and weights (GPU runtimes)
    INT8 = "int8"  # quantized weights/activations; the input stays fp32

    @property
    def input_half(self) -> bool:
        return self is Precision.FP16


@dataclass(frozen=True)
class ModelInfo:
    names: list[str] = field(default_factory=lambda: ["page", "photo"])
    imgsz: int = 224  # square input side the model was trained for / a fixed-shape export expects
    stride: int = 32  # max stride: letterboxed sides must be multiples of it
    letterbox: str = "square"  # "square": fixed imgsz x imgsz; "auto": minimum stride-aligned rectangle
    dynamic: bool = False  # True when the artifact accepts any stride-aligned HxW and batch
    precision: Precision = Precision.FP32
    passes: tuple[str, ...] = ()  # graph passes the export ran, in order (polydet.export.FORMATS)
    layout: str = LAYOUT

    def __post_init__(self):  # values from JSON: the enum and a tuple, whatever was given
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "passes", tuple(self.passes))
        object.__setattr__(self, "names", list(self.names))

    @property
    def half(self) -> bool:
        """The artifact expects fp16 input."""
        return self.precision.input_half

    @property
    def uint8_input(self) -> bool:
        """The artifact takes letterboxed (B, H, W, 3) uint8 RGB images, not (B, 3, H, W) float in [0, 1]."""
        return UINT8_INPUT_PASS in self.passes

    @property
    def logit_scores(self) -> bool:
        """The artifact's obj/cls columns are logits (LAYOUT_LOGITS): NMS thresholds them in logit space."""
        return LOGITS_PASS in self.passes

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
        if "half" in d:  # artifacts exported before the precision field: half: bool
            d["precision"] = Precision.FP16.value if d.pop("half") else d.get("precision", Precision.FP32.value)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelLoadError(f"artifact metadata has unknown keys {sorted(unknown)}")
        if d.get("letterbox", "square") not in ("square", "auto"):
            raise ModelLoadError(f"artifact metadata: letterbox must be 'square' or 'auto', got {d['letterbox']!r}")
        try:
            return cls(**d)
        except ValueError as e:
            raise ModelLoadError(f"artifact metadata: {e}") from e
