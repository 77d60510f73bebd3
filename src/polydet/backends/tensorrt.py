"""TensorRT backend: serialized engines and torch2trt modules, told apart by the file's first bytes.

- A serialized engine (``.engine``/``.plan``: ``polydet export --format tensorrt``, YOLOv5's export.py,
  ``trtexec --saveEngine``) is deserialized with ``trt.Runtime`` and run through the tensor-name API of
  TensorRT >= 8.5 (10.x/11.x: the binding-index API is gone): torch CUDA tensors are the bindings,
  ``execute_async_v3`` enqueues on the current torch stream. A dynamic batch takes any size in its
  optimisation profile's range; ``max_batch`` is the profile's max (or the fixed batch).
- A torch2trt ``TRTModule`` state dict (a torch.save zip or pickle: the design card's path).

Engines cannot hold metadata: ModelInfo is the JSON beside the engine, ``model.json`` for ``model.engine``
(``model.engine.json`` is read too). Neither TensorRT nor torch2trt installs from PyPI; nothing here imports
them until an artifact is opened. UNTESTED against a real TensorRT: no host here has one; the code is
type-checked against ``tensorrt-stubs`` (tests/unit/test_tensorrt_types.py) and its pure parts tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import MissingDependencyError, ModelLoadError, PolydetError, require
from ..meta import ModelInfo, Precision
from .base import Backend, Capabilities, first_output, info_from_meta

if TYPE_CHECKING:
    import tensorrt as trt

ENGINE_MAGIC = b"ftrt"  # the first bytes of every serialized TensorRT plan (8.x-10.x)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_PROTOCOLS = range(2, 6)  # torch.save's legacy format: a pickle, b"\x80" + protocol byte
TRT_HINT = "tensorrt (NVIDIA's index or a TensorRT tarball; not installable from PyPI)"
# TensorRT's data types, by name (trt.DataType.name), as torch dtypes for the binding tensors.
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def sniff(path: Path) -> tuple[str, int]:
    """("engine", where the plan starts) or ("torch2trt", 0), from the file's first bytes; else ModelLoadError.
    An engine may carry Ultralytics' prefix (4-byte little-endian length + JSON) before the plan."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head == ENGINE_MAGIC:
            return "engine", 0
        if head == ZIP_MAGIC or (len(head) >= 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS):
            return "torch2trt", 0
        if len(head) == 4:
            skip = int.from_bytes(head, "little")
            f.seek(4 + skip)
            if f.read(4) == ENGINE_MAGIC:
                return "engine", 4 + skip
    raise ModelLoadError(f"{path} is neither a serialized TensorRT engine (starting {ENGINE_MAGIC!r}) nor a "
                         f"torch2trt state dict (a torch.save file); first bytes: {head!r}")


def meta_paths(path: Path) -> tuple[Path, Path]:
    """Where an engine's ModelInfo JSON is looked for: ``model.json``, then ``model.engine.json``. The first
    is the name written: the archiver takes a format's companions as the artifact's name with their suffix."""
    return path.with_suffix(".json"), path.with_name(path.name + ".json")


def write_info(path: Path, info: ModelInfo) -> Path:
    """Write ``info`` beside the engine at ``path`` (the name the backend reads first); returns its path."""
    meta = meta_paths(path)[0]
    meta.write_text(info.to_json() + "\n")
    return meta


def read_info(path: Path) -> ModelInfo | None:
    """The ModelInfo JSON beside ``path``, or None when there is none (ModelLoadError when it is bad)."""
    for meta in meta_paths(path):
        if meta.is_file():
            try:
                return ModelInfo.from_json(meta.read_text())
            except ModelLoadError as e:
                raise ModelLoadError(f"{meta}: {e}") from e
    return None


def check_tensorrt() -> None:
    """Raise MissingDependencyError unless the real TensorRT Python package is importable. tensorrt-stubs
    alone makes ``import tensorrt`` succeed as an empty namespace package: that is not TensorRT."""
    trt = require("tensorrt", TRT_HINT)
    if not hasattr(trt, "Runtime"):
        raise MissingDependencyError(f"'tensorrt' at {list(getattr(trt, '__path__', []))} has no Runtime: only "
                                     f"type stubs are installed, not TensorRT; install {TRT_HINT}")


def dims(d) -> tuple[int, ...]:
    """A trt.Dims (tuple-like, -1 for a dynamic axis) as a tuple."""
    return tuple(int(d[i]) for i in range(len(d)))


def batch_range(shape: tuple[int, ...], profile: tuple[tuple[int, ...], ...] | None) -> tuple[int, int]:
    """(min, max) batch an engine input of ``shape`` takes: its fixed batch, else optimisation profile 0's
    (``profile``: its (min, opt, max) shapes)."""
    if not shape:
        raise ModelLoadError("the engine's input is a scalar, not an image batch")
    if shape[0] > 0:
        return shape[0], shape[0]
    if not profile or len(profile) != 3:
        raise ModelLoadError("the engine's batch is dynamic but it has no optimisation profile for its input")
    lo, hi = profile[0][0], profile[2][0]
    if not 1 <= lo <= hi:
        raise ModelLoadError(f"the engine's optimisation profile has a batch range {lo}..{hi}")
    return lo, hi


def plan_chunks(n: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """How a batch of ``n`` runs on an engine taking ``lo``..``hi`` images: (start, stop, padding) chunks of
    at most ``hi``, each padded up to ``lo`` (a fixed-batch engine: ``lo == hi``). Empty in, empty out."""
    out = []
    for start in range(0, n, hi):
        stop = min(start + hi, n)
        out.append((start, stop, max(0, lo - (stop - start))))
    return out


def fits(shape: tuple[int, ...], profile: tuple[tuple[int, ...], ...]) -> bool:
    """Whether an input ``shape`` lies within a profile's (min, opt, max) shapes, axis by axis."""
    lo, _, hi = profile
    return len(shape) == len(lo) == len(hi) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))


class TensorRTBackend(Backend):
    name = "tensorrt"
    suffixes = (".engine", ".plan", ".trt")
    capabilities = Capabilities(devices=("cuda",), runtime=("tensorrt",))  # not on PyPI: NVIDIA's index

    def __init__(self, path, device="cuda", precision=None):
        super().__init__(path, device, precision)
        if self.device.type != "cuda":
            raise ModelLoadError(f"TensorRT runs on CUDA devices only, not {self.device}: pass --device cuda")
        kind, offset = sniff(self.path)
        check_tensorrt()
        self.batch_range: tuple[int, int] | None = None
        self.profile: tuple[tuple[int, ...], ...] | None = None
        if kind == "engine":
            self._open_engine(offset)
        else:
            self._open_torch2trt()
        if self.requested is Precision.FP16 and self.info.precision is not Precision.FP16:
            raise ModelLoadError(f"{self.path}: an engine's precision is fixed when it is built "
                                 f"({self.info.precision.value}); build an fp16 engine instead")

    def _open_engine(self, offset: int) -> None:
        import tensorrt as trt

        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes()[offset:])
        if self.engine is None:  # TensorRT logged why: engines are tied to the TensorRT version and GPU
            raise ModelLoadError(f"{self.path}: TensorRT {trt.__version__} could not deserialize the engine "
                                 f"(built by another TensorRT version or for another GPU? rebuild it here)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self.outputs:
            raise ModelLoadError(f"{self.path}: expected one image input and outputs, got inputs {inputs}, "
                                 f"outputs {self.outputs}")
        self.input = inputs[0]
        self.output = "output" if "output" in self.outputs else self.outputs[0]
        shape = dims(self.engine.get_tensor_shape(self.input))
        if -1 in shape:
            self.profile = tuple(dims(d) for d in self.engine.get_tensor_profile_shape(self.input, 0))
        self.batch_range = batch_range(shape, self.profile)
        self.max_batch = self.batch_range[1]
        self.dtypes = {n: self._dtype(self.engine.get_tensor_dtype(n)) for n in names}
        found = read_info(self.path)
        no = dims(self.engine.get_tensor_shape(self.output))[-1]
        self.info = found or info_from_meta(None, no if no > 0 else None, shape[2] if shape[2] > 0 else None,
                                            self.path)
        self.context = self.engine.create_execution_context()

    def _dtype(self, dt: trt.DataType) -> torch.dtype:
        if dt.name not in TORCH_DTYPES:
            raise ModelLoadError(f"{self.path}: an engine tensor of type {dt.name} has no torch binding here")
        return TORCH_DTYPES[dt.name]

    def _open_torch2trt(self) -> None:
        torch2trt = require("torch2trt", "torch2trt (github.com/NVIDIA-AI-IOT/torch2trt)")
        self.info = read_info(self.path) or info_from_meta(None, None, None, self.path)
        self.model = torch2trt.TRTModule()
        try:
            self.model.load_state_dict(torch.load(self.path, map_location=self.device))
        except Exception as e:  # torch's and torch2trt's own errors, named as a load failure
            raise ModelLoadError(f"{self.path}: not a torch2trt TRTModule state dict: {e}") from e

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_range is None:  # torch2trt: the base class's chunking (none: any batch)
            return super().__call__(x)
        outs = []
        for start, stop, pad in plan_chunks(len(x), *self.batch_range):
            chunk = x[start:stop]
            if pad:  # below the profile's min batch: pad, then drop the padding's rows
                chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
            outs.append(self.forward(chunk)[:stop - start])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_range is None:
            return first_output(self.model(x.to(self.device, self.input_dtype))).float()
        return self._run_engine(x)

    def _run_engine(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtypes[self.input]).contiguous()
        shape = tuple(x.shape)
        if (self.profile is not None and not fits(shape, self.profile)) or \
                not self.context.set_input_shape(self.input, shape):
            raise PolydetError(f"{self.path}: input {shape} is outside what the engine takes "
                               f"(profile min/opt/max {self.profile or 'fixed'})")
        self.context.set_tensor_address(self.input, x.data_ptr())
        outs = {}
        for name in self.outputs:  # every output needs memory, the ones polydet does not read too
            outs[name] = torch.empty(dims(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                     device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)  # torch's later kernels on it wait for TensorRT's
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise PolydetError(f"{self.path}: TensorRT failed to enqueue the engine (see its log)")
        return first_output(outs[self.output]).float()


BACKEND = TensorRTBackend
