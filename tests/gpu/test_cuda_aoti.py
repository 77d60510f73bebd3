"""The AOTInductor package compiled for CUDA (scripts/gpu_tests.sh, scripts/gpu_serving_bench.sh; skipped
without CUDA): fp16, channels-last, parity with the eager model at several batch sizes, its metadata, the
refusal on the CPU. ``POLYDET_GPU_AOTI=package.pt2:weights.pt`` tests a package the script already
exported from those weights (its export ran the same parity check once) instead of compiling another."""

import os

import pytest
import torch

from polydet.backends import load_backend
from polydet.errors import ModelLoadError
from polydet.export import TOLERANCES, export, load_or_build
from polydet.export.common import fixed_inputs
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
    tol = TOLERANCES["fp16"]
    b = load_backend(path, device="cuda")
    assert b.precision is Precision.FP16 and b.channels_last and b.chunk == 1024
    model, info = load_or_build(weights, imgsz=b.info.imgsz)
    assert b.info.names == info.names
    size = b.info.imgsz
    for n in (1, 7, 64):
        x = fixed_inputs((size, size), batch=n)
        with torch.inference_mode():
            ref = model.cuda().eval()(x.cuda()).float().cpu()
        out = b(x).cpu()
        assert out.shape == ref.shape
        d = float((out[..., :8] - ref[..., :8]).abs().max()), float((out[..., 8:] - ref[..., 8:]).abs().max())
        print(f"\naoti fp16 batch {n}: corners {d[0]:.4f} px, scores {d[1]:.5f}")
        assert d[0] <= tol["corners_px"] and d[1] <= tol["scores"]
    with pytest.raises(ModelLoadError, match="compiled for cuda, not cpu"):
        load_backend(path, device="cpu")
