"""The parity check: an exported artifact, opened by its backend, against the eager (unfused fp32) model."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..backends import load_backend
from ..errors import ExportError
from ..meta import ModelInfo, Precision
from ..model import PolygonYOLO
from .common import fixed_inputs
from .formats import for_backend

# Max |artifact - eager fp32| allowed by the export check, on fixed inputs. Corners are pixels of a
# 224..640 input; obj/cls are probabilities. fp32 differences come from BN fusion and kernel choice
# (seen ~1e-4 px); fp16 rounds pixel coordinates at 0.125-0.25 px there. "tf32": a format whose fp32
# artifact convolves in TF32 on CUDA (ExportFormat.cuda_tf32: TorchScript, where tracing bakes cuDNN's
# allow_tf32 flag, True by default, into every convolution, whatever the flag is at run time). Measured
# on the H100 with the bundled weights at 224 (scripts/gpu_parity_probe.py): 0.09-0.13 px on corners
# and 3-4e-3 on scores, the same as the eager model with TF32 on (0.10 px, 2e-3); 2e-4 px with TF32 off.
# "int8": ONNX Runtime static QDQ (export/int8.py) on the fixed inputs, which are noise, not photos: a
# gross-failure check, not an accuracy one (that is `polydet quantize --data`'s mAP report). Measured
# with the bundled weights (64 synthetic calibration images): the default recipe 12.6 px / 0.19 at 224
# and 21.9 px / 0.21 at 320, percentile calibration 15.7 px / 0.33 at 224; recipes that lose accuracy:
# nothing excluded 11.3 px / 1.04 (mAP50 -0.12), head in float but no reduce_range on this non-VNNI CPU
# 40.1 px / 0.80 (mAP50 -0.04). The score bound separates them; the corner bound only catches a broken
# graph (corners of junk rows move most).
TOLERANCES = {"fp32": {"corners_px": 0.05, "scores": 1e-3}, "tf32": {"corners_px": 1.0, "scores": 1e-2},
              "fp16": {"corners_px": 1.0, "scores": 1e-2}, "int8": {"corners_px": 48.0, "scores": 0.5}}


@contextlib.contextmanager
def full_fp32():
    """No TF32 inside, so that the eager reference is full fp32 on CUDA as on the CPU (the artifact's own
    convolutions keep the TF32 flag they were traced with: see TOLERANCES)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tolerance(backend) -> dict:
    """The TOLERANCES row an artifact is held to when ``backend`` runs it."""
    key = backend.precision.value
    if backend.precision is Precision.FP32 and backend.device.type == "cuda":
        fmt = for_backend(type(backend).__module__.rpartition(".")[2])
        key = "tf32" if fmt is not None and fmt.cuda_tf32 else key
    if key not in TOLERANCES:
        raise ExportError(f"no parity tolerance for {key} artifacts (TOLERANCES has {', '.join(TOLERANCES)})")
    return TOLERANCES[key]


def verify_artifact(path: Path, eager: PolygonYOLO, imgsz: tuple[int, int], device="cpu",
                    precision: Precision | str | None = None) -> dict:
    """Run the artifact and the eager model on fixed inputs; return max abs differences (raise if over).
    The graph passes that change the contract are held to the same TOLERANCES row: an artifact taking
    uint8 gets the fixed inputs rounded to 1/255 steps (as uint8 NHWC), and so does the eager model; an
    artifact without its final sigmoids has them applied by its backend (``Backend.__call__``).
    ``precision``: as ``load_backend``'s (None: the artifact's own)."""
    backend = load_backend(path, device=device, precision=precision)
    x = fixed_inputs(imgsz)
    if backend.info.uint8_input:  # graph pass "fuse-preprocess": both see the same 8-bit pixels
        x = (x * 255).round() / 255
    with full_fp32():
        with torch.inference_mode():
            ref = eager.to(device).float().eval()(x.to(device)).float().cpu()
        out = backend(x).cpu()
    if out.shape != ref.shape:
        raise ExportError(f"artifact output shape {tuple(out.shape)} != eager {tuple(ref.shape)}")
    diff = {"corners_px": float((out[..., :8] - ref[..., :8]).abs().max()),
            "scores": float((out[..., 8:] - ref[..., 8:]).abs().max())}
    tol = tolerance(backend)
    bad = {k: v for k, v in diff.items() if v > tol[k]}
    if bad:
        raise ExportError(f"{path}: artifact differs from the eager model beyond tolerance {tol}: {diff}")
    return diff


def verify_metadata(path: Path, info: ModelInfo, device="cpu") -> None:
    """The artifact, as its backend reads it, describes itself as ``info`` (no graph pass lost it)."""
    found = load_backend(path, device=device).info
    if found != info:
        raise ExportError(f"{path}: the artifact's metadata {found} is not what was exported: {info}")
