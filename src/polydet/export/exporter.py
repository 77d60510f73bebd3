"""TorchScript and ONNX export with embedded metadata and a parity check against the eager model."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path

import torch

from ..backends import load_backend
from ..backends.base import META_KEY
from ..errors import ConfigError, ExportError, require
from ..meta import ModelInfo
from ..model import PolygonYOLO, load_model

# Max abs difference allowed between the artifact and the eager (unfused fp32) model on fixed inputs.
# Corners are pixels of a 224..640 input; obj/cls are probabilities. fp32 differences come from BN
# fusion and kernel choice (seen ~1e-4 px); fp16 rounds pixel coordinates at 0.125-0.25 px there.
# Max |artifact - eager fp32| allowed by the export check. "tf32": a TorchScript artifact run in fp32 on
# CUDA. Tracing bakes cuDNN's allow_tf32 flag (True, PyTorch's default) into every convolution of the
# graph, so such an artifact convolves in TF32 (10-bit mantissa, like fp16) whatever the flag is at run
# time. Measured on the H100 with the bundled weights at 224 (scripts/gpu_parity_probe.py): 0.09-0.13 px
# on corners and 3-4e-3 on scores, the same as the eager model with TF32 on (0.10 px, 2e-3); 2e-4 px
# with TF32 off.
TOLERANCES = {"fp32": {"corners_px": 0.05, "scores": 1e-3}, "tf32": {"corners_px": 1.0, "scores": 1e-2},
              "fp16": {"corners_px": 1.0, "scores": 1e-2}}


def load_or_build(weights: str, cfg: str | None = None, names=None, imgsz=None, seed: int = 0):
    """A checkpoint/state_dict path, or ``random[:cfg]`` for a random-weight demo model (tests, demos)."""
    if weights.startswith("random"):
        torch.manual_seed(seed)
        cfg = weights.partition(":")[2] or cfg or "polygon_yolov5n"
        model = PolygonYOLO(cfg, nc=len(names) if names else 2).eval()
        return model, ModelInfo(names=list(names or ["page", "photo"]), imgsz=imgsz or 224)
    return load_model(weights, cfg=cfg, names=names, imgsz=imgsz)


def _fixed_inputs(imgsz: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """Deterministic test batch: noise plus a bright quad on grey, in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *imgsz, generator=g) * 0.5 + 0.25
    h, w = imgsz
    x[:, :, h // 4 : 3 * h // 4, w // 5 : 3 * w // 5] = 0.95
    return x


@contextlib.contextmanager
def _full_fp32():
    """No TF32 inside, so that the eager reference is full fp32 on CUDA as on the CPU (the artifact's own
    convolutions keep the TF32 flag they were traced with: see TOLERANCES)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def verify_artifact(path: Path, eager: PolygonYOLO, imgsz: tuple[int, int], device="cpu", half=False) -> dict:
    """Run the artifact and the eager model on fixed inputs; return max abs differences (raise if over)."""
    backend = load_backend(path, device=device, half=half)
    x = _fixed_inputs(imgsz)
    with _full_fp32():
        with torch.inference_mode():
            ref = eager.to(device).float().eval()(x.to(device)).float().cpu()
        out = backend(x).cpu()
    if out.shape != ref.shape:
        raise ExportError(f"artifact output shape {tuple(out.shape)} != eager {tuple(ref.shape)}")
    diff = {"corners_px": float((out[..., :8] - ref[..., :8]).abs().max()),
            "scores": float((out[..., 8:] - ref[..., 8:]).abs().max())}
    tf32 = backend.name == "torchscript" and backend.device.type == "cuda"
    tol = TOLERANCES["fp16" if half or backend.half else "tf32" if tf32 else "fp32"]
    bad = {k: v for k, v in diff.items() if v > tol[k]}
    if bad:
        raise ExportError(f"{path}: artifact differs from the eager model beyond tolerance {tol}: {diff}")
    return diff


def export(weights: str, fmt: str, out: str | Path | None = None, imgsz: int | None = None, half: bool = False,
           dynamic: bool = False, opset: int = 17, device: str = "cpu", cfg: str | None = None,
           names=None, verify: bool = True, seed: int = 0) -> tuple[Path, dict]:
    """Export and verify. Returns (artifact path, max abs differences vs eager)."""
    if fmt not in ("torchscript", "onnx"):
        raise ConfigError(f"unknown export format {fmt!r}: torchscript or onnx")
    model, info = load_or_build(weights, cfg=cfg, names=names, imgsz=imgsz, seed=seed)
    if half and torch.device(device).type != "cuda":
        raise ConfigError("--half needs --device cuda (fp16 convolutions are a GPU feature)")
    info = dataclasses.replace(info, imgsz=imgsz or info.imgsz, half=half, dynamic=dynamic,
                               letterbox="auto" if dynamic else "square")
    if info.imgsz % info.stride:
        raise ConfigError(f"imgsz {info.imgsz} must be a multiple of {info.stride}")
    if out is None:
        stem = "random" if weights.startswith("random") else Path(weights).stem
        out = Path(f"{stem}_{info.imgsz}{'_fp16' if half else ''}.{'torchscript' if fmt == 'torchscript' else 'onnx'}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    eager = model.to(device).eval()
    fused = PolygonYOLO(model.yaml).to(device)
    fused.load_state_dict(model.state_dict())
    fused = fused.eval().fuse()
    if half:
        fused = fused.half()
    dummy = torch.zeros(1, 3, info.imgsz, info.imgsz, device=device, dtype=torch.float16 if half else torch.float32)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            ts = torch.jit.trace(fused, dummy, strict=False)
        ts.save(str(out), _extra_files={META_KEY: info.to_json()})
    else:
        _export_onnx(fused, dummy, out, info, opset, dynamic)
    diff = {}
    if verify:
        sizes = [(info.imgsz, info.imgsz)] + ([(info.imgsz + 64, info.imgsz - 32)] if dynamic else [])
        for s in sizes:
            d = verify_artifact(out, eager, s, device=device, half=half)
            diff = {k: max(v, diff.get(k, 0.0)) for k, v in d.items()}
    return out, diff


def _export_onnx(model, dummy, out: Path, info: ModelInfo, opset: int, dynamic: bool) -> None:
    onnx = require("onnx", "onnx", extra="onnx")
    # Batch is always dynamic (servers batch requests); height/width only with --dynamic.
    axes = {"images": {0: "batch"}, "output": {0: "batch"}}
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dynamo=False: the TorchScript-based exporter gives a plain, static graph for this CNN and
        # needs no onnxscript at export time.
        torch.onnx.export(model, (dummy,), str(out), opset_version=opset, input_names=["images"],
                          output_names=["output"], dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    m = onnx.load(str(out))
    ops = {n.op_type for n in m.graph.node}
    if "ScatterND" in ops:
        raise ExportError("ONNX graph contains ScatterND: the head must use split/cat")
    del m.metadata_props[:]
    m.metadata_props.add(key=META_KEY, value=info.to_json())
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
