"""The AOTInductor package compiled for CUDA (scripts/gpu_tests.sh, scripts/gpu_serving_bench.sh; skipped
without CUDA): parity with the eager model at several batch sizes through the backend, its metadata, the
refusal on the CPU (before any runner is built), and the exporter's fresh-process load. Without
``POLYDET_GPU_AOTI`` it exports fp16 channels-last here (~2 min); ``POLYDET_GPU_AOTI=package.pt2:weights.pt``
tests the package scripts/gpu_aoti_probe.py found to load (fp16 or fp32, as its metadata says)."""

import os

import pytest
import torch

from polydet.backends import load_backend
from polydet.errors import ModelLoadError
from polydet.export import export, load_or_build
from polydet.export.common import fixed_inputs
from polydet.export.verify import tolerance
from polydet.meta import Precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_tests.sh)")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    given = os.environ.get("POLYDET_GPU_AOTI")
    if given:
        path, _, weights = given.partition(":")
        return path, weights
    path, diff = export("random", "aoti", out=tmp_path_factory.mktemp("aoti") / "m.pt2", imgsz=224, device="cuda",
                        precision="fp16")
    print(f"\naoti fp16 on CUDA vs eager (the export's check): {diff}")
    return path, "random"


def test_cuda_package_matches_eager(package):
    path, weights = package
    b = load_backend(path, device="cuda")
    tol = tolerance(b)  # fp32 on CUDA: the TF32 row
    assert b.precision in (Precision.FP16, Precision.FP32) and b.chunk in (64, 1024)
    assert b.channels_last is (b.precision is Precision.FP16)  # the probe's fp32 variant is contiguous
    model, info = load_or_build(weights, imgsz=b.info.imgsz)
    assert b.info.names == info.names
    size = b.info.imgsz
    for n in (1, 7, 64):  # a fixed-batch package (the probe's b64 variant): the backend pads to its batch
        x = fixed_inputs((size, size), batch=n)
        with torch.inference_mode():
            ref = model.cuda().eval()(x.cuda()).float().cpu()
        out = b(x).cpu()
        assert out.shape == ref.shape
        d = float((out[..., :8] - ref[..., :8]).abs().max()), float((out[..., 8:] - ref[..., 8:]).abs().max())
        print(f"\naoti {b.precision.value} batch {n}: corners {d[0]:.4f} px, scores {d[1]:.5f}")
        assert d[0] <= tol["corners_px"] and d[1] <= tol["scores"]
    with pytest.raises(ModelLoadError, match="compiled for cuda, not cpu"):
        load_backend(path, device="cpu")


def test_fresh_process_load(package):
    """What the exporter runs before its parity check: the package loads and runs in a new process."""
    from polydet.backends.aoti import read_metadata
    from polydet.export.aoti import smoke_load

    path, _ = package
    dtype = torch.float16 if '"fp16"' in read_metadata(path)["polydet"] else torch.float32
    assert smoke_load(path, dtype).startswith("smoke load ok")
