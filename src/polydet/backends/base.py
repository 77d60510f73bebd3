"""The backend interface: a loaded artifact that maps a float image batch to the head output.

One file per runtime subclasses :class:`Backend`, declares the file suffixes it opens and imports its
runtime only when an artifact is opened. A backend reports what the artifact can take: ``max_batch``
(None for any batch size, else the fixed batch it was exported with) and the precision it runs in;
``__call__`` runs any batch size by chunks of a fixed batch, padding the last chunk.
"""

from __future__ import annotations

import zipfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import ModelLoadError
from ..meta import LAYOUT, LAYOUT_LOGITS, ModelInfo, Precision

META_KEY = "polydet"  # TorchScript extra file name / ONNX metadata_props key holding ModelInfo JSON
SUPPORTED_LAYOUTS = (LAYOUT, LAYOUT_LOGITS)  # output layouts the pipeline decodes (logits: polygon_nms_logits)


@dataclass(frozen=True)
class Capabilities:
    """What a backend's runtime can do, declared as data (``Backend.capabilities``); what its artifacts are
    exported as (precisions, files, calibration) is its export row's (``polydet.export.FORMATS``), and
    ``Backend.manifest()`` joins the two. Callers ask these, never a backend's name."""

    devices: tuple[str, ...] = ("cpu",)  # torch device types it runs on
    # "dynamic": any batch unless the artifact was exported with a fixed one (max_batch then says it);
    # "one": one image per call, whatever the artifact (Backend.__call__ feeds a batch image by image)
    batch: str = "dynamic"
    shapes: str = "artifact"  # "artifact": the exported imgsz (any with a --dynamic export); "any": any size
    runtime: tuple[str, ...] = ()  # the distributions it imports in polydet's environment (polydet doctor)
    extra: str = ""  # polydet's extra that installs them ("": none, or not on PyPI)
    env: str = ""  # an isolated venv of polydet.envs it runs in (polydet doctor --build NAME)
    fp16_cast: bool = False  # runs an fp32 artifact in fp16 when asked at load (on CUDA)
    custom_ops: tuple[str, ...] = ()  # plugin libraries it must load: none for any polydet artifact
    # graph passes that change an artifact's input or output (export.formats.CONTRACT_PASSES) it honours;
    # an artifact that ran any other is refused at load, with the reason
    passes: tuple[str, ...] = ()


class Backend(ABC):
    """``__call__(x: (B,3,H,W) float in [0,1]) -> (B,N,9+nc) float32``, for any B; scores are probabilities
    (an artifact without its final sigmoids gets them here; :meth:`raw` gives its logits). An artifact that
    takes uint8 (``info.uint8_input``) also takes ``(B,H,W,3)`` uint8 RGB, what the pipeline feeds it.

    Subclasses set ``info`` (and ``max_batch`` for a fixed-batch artifact) in ``__init__`` and implement
    :meth:`forward` for batches the artifact takes. ``precision``: None runs the artifact as exported;
    ``Precision.FP16`` casts an fp32 artifact where the runtime can (CUDA).
    """

    name: ClassVar[str] = "base"
    suffixes: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, path: str | Path, device: str | torch.device = "cpu",
                 precision: Precision | str | None = None):
        self.path = Path(path)
        self.device = torch.device(device)
        self.requested = Precision(precision) if precision is not None else None
        if self.requested is Precision.INT8:
            raise ModelLoadError("int8 is chosen when exporting (an int8 artifact), not when loading one")
        self.info: ModelInfo = ModelInfo()
        self.max_batch: int | None = None  # None: any batch size

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether this backend opens ``path`` (by suffix; a backend may also look inside the file)."""
        return path.suffix.lower() in cls.suffixes

    @classmethod
    def manifest(cls) -> dict:
        """The backend's capabilities and its export row's facts as one JSON-able dict."""
        from ..export.formats import for_backend

        row = for_backend(cls.name)
        return {"name": cls.name, "suffixes": list(cls.suffixes), **asdict(cls.capabilities),
                "format": row.name if row else None,
                "precisions": [p.value for p in row.precisions] if row else [],
                "files": [row.suffix, *row.companions] if row else list(cls.suffixes[:1]),
                "calibration": bool(row and Precision.INT8 in row.precisions)}  # int8 export: calibration images

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One batch the artifact takes (``len(x) == max_batch`` when that is set) -> (B,N,9+nc) float32."""

    @property
    def precision(self) -> Precision:
        if self.requested is Precision.FP16 or self.info.precision is Precision.FP16:
            return Precision.FP16
        return self.info.precision

    @property
    def half(self) -> bool:
        return self.precision is Precision.FP16

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    @property
    def output_device(self) -> torch.device:
        """Where ``__call__``'s predictions are (hence where NMS runs): the backend's device unless a
        runtime hands its outputs back on the CPU."""
        return self.device

    def check(self) -> "Backend":
        """Refuse an artifact whose output this pipeline would misread (called by ``load_backend``)."""
        if self.info.layout not in SUPPORTED_LAYOUTS:
            raise ModelLoadError(f"{self.path}: output layout {self.info.layout!r} is not one polydet decodes "
                                 f"({', '.join(SUPPORTED_LAYOUTS)}); re-export with `polydet export`")
        if self.max_batch is not None and self.max_batch < 1:
            raise ModelLoadError(f"{self.path}: fixed batch size {self.max_batch} makes no sense")
        self._check_passes()
        return self

    def _check_passes(self) -> None:
        """Refuse graph passes this backend does not know or cannot honour: it would misread the artifact."""
        from ..export.formats import CONTRACT_PASSES, PASSES

        for name in self.info.passes:
            if name not in PASSES:
                raise ModelLoadError(f"{self.path}: the artifact ran graph pass {name!r}, which this polydet does "
                                     f"not know (known: {', '.join(PASSES)}); re-export it without that pass")
            if name in CONTRACT_PASSES and name not in self.capabilities.passes:
                raise ModelLoadError(f"{self.path}: the {self.name} backend cannot honour graph pass {name!r} "
                                     f"({CONTRACT_PASSES[name]}); re-export without it")
        if (self.info.layout == LAYOUT_LOGITS) != self.info.logit_scores:
            raise ModelLoadError(f"{self.path}: layout {self.info.layout!r} contradicts passes {self.info.passes}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x)
        if self.info.logit_scores:
            from ..ops.nms import sigmoid_scores

            out = sigmoid_scores(out)
        return out

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The artifact's own output for any batch size (scores as logits where ``info.logit_scores``)."""
        n, fixed = len(x), self.max_batch
        if fixed is None or n == fixed:
            return self.forward(x)
        outs = []
        for start in range(0, n, fixed):
            chunk = x[start : start + fixed]
            k = len(chunk)
            if k < fixed:  # the artifact takes exactly `fixed` images: pad, then drop the padding's rows
                chunk = torch.cat([chunk, chunk.new_zeros((fixed - k, *chunk.shape[1:]))])
            outs.append(self.forward(chunk)[:k])
        return torch.cat(outs)

    def __repr__(self) -> str:
        batch = "any" if self.max_batch is None else self.max_batch
        return (f"{type(self).__name__}({str(self.path)!r}, device={self.device}, precision={self.precision.value}, "
                f"batch={batch})")


def first_output(out):
    """Users' exports return the tensor or a tuple/list whose first element is it; accept both."""
    if isinstance(out, (tuple, list)):
        if not out:
            raise ModelLoadError("model returned an empty tuple")
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 3:
        raise ModelLoadError(f"model output must be a (B, N, 9+nc) tensor, got {getattr(out, 'shape', type(out))}")
    return out


def info_from_meta(text: str | bytes | None, no: int | None, imgsz: int | None, path: Path) -> ModelInfo:
    """ModelInfo from the artifact's own metadata, or a best guess (with a warning) for foreign exports."""
    if text:
        return ModelInfo.from_json(text)
    import warnings

    nc = (no - 9) if no else 2
    warnings.warn(f"{path} carries no polydet metadata: assuming class names class0..class{nc - 1}, "
                  f"imgsz {imgsz or 224}; re-export with `polydet export` to embed them", stacklevel=3)
    return ModelInfo(names=[f"class{i}" for i in range(nc)], imgsz=imgsz or 224)


def is_torchscript(path: Path) -> bool:
    """TorchScript archives and torch.save checkpoints are both zips; TorchScript has code/ inside."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError, IndexError):
        return False
