"""The AOTInductor package compiled for CUDA (scripts/gpu_tests.sh; skipped without CUDA): fp16 and fp32,
channels-last, parity with the eager model (the export's own check, then again at other batch sizes), its
metadata, and the refusal on the CPU."""

import pytest
import torch

from polydet.backends import load_backend
from polydet.errors import ModelLoadError
from polydet.export import TOLERANCES, export, load_or_build
from polydet.export.common import fixed_inputs
from polydet.meta import Precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_tests.sh)")


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_package_matches_eager(tmp_path, precision):
    path, diff = export("random", "aoti", out=tmp_path / f"m_{precision}.pt2", imgsz=224, device="cuda",
                        precision=precision)
    tol = TOLERANCES["fp16" if precision == "fp16" else "tf32"]
    print(f"\naoti {precision} on CUDA vs eager (export check): {diff}")
    assert diff["corners_px"] <= tol["corners_px"] and diff["scores"] <= tol["scores"]
    b = load_backend(path, device="cuda")
    assert b.precision is Precision(precision) and b.channels_last and b.info.imgsz == 224
    model, _ = load_or_build("random", imgsz=224)
    for n in (1, 7, 64):
        x = fixed_inputs((224, 224), batch=n)
        with torch.inference_mode():
            ref = model.cuda().eval()(x.cuda()).float().cpu()
        out = b(x).cpu()
        assert out.shape == ref.shape
        assert float((out[..., :8] - ref[..., :8]).abs().max()) <= tol["corners_px"]
        assert float((out[..., 8:] - ref[..., 8:]).abs().max()) <= tol["scores"]
    with pytest.raises(ModelLoadError, match="compiled for cuda, not cpu"):
        load_backend(path, device="cpu")
