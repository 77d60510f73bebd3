"""The AOTInductor format on the CPU: export (compiled by Inductor's C++ backend, ~1-2 min here), the
package's own metadata, parity with the eager model at several batch sizes, the refusals. The CUDA package
(fp16, channels-last) is tested on the device: tests/gpu/test_cuda_aoti.py and scripts/gpu_aoti_probe.py."""

import pytest
import torch

from polydet.backends import load_backend
from polydet.errors import ModelLoadError
from polydet.export import TOLERANCES, export, load_or_build
from polydet.export.common import fixed_inputs
from polydet.meta import ModelInfo, Precision


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path, diff = export("random", "aoti", out=tmp_path_factory.mktemp("aoti") / "m.pt2", imgsz=128, device="cpu")
    return path, diff


def test_export_verifies_and_describes_itself(package):
    path, diff = package
    assert diff["corners_px"] <= TOLERANCES["fp32"]["corners_px"] and diff["scores"] <= TOLERANCES["fp32"]["scores"]
    b = load_backend(path, device="cpu")
    assert type(b).__name__ == "AotiBackend"
    assert b.info == ModelInfo(imgsz=128)  # what export() embedded: names, size, stride, precision
    assert b.precision is Precision.FP32 and not b.channels_last and b.chunk == 1024


@pytest.mark.parametrize("n", [1, 3, 5])
def test_any_batch_size_matches_eager(package, n):
    path, _ = package
    model, _ = load_or_build("random", imgsz=128)
    x = fixed_inputs((128, 128), batch=n)
    with torch.inference_mode():
        ref = model.eval()(x).float()
    out = load_backend(path, device="cpu")(x)
    assert out.shape == ref.shape == (n, ref.shape[1], 11)
    assert float((out[..., :8] - ref[..., :8]).abs().max()) <= TOLERANCES["fp32"]["corners_px"]
    assert float((out[..., 8:] - ref[..., 8:]).abs().max()) <= TOLERANCES["fp32"]["scores"]


def test_refusals(package):
    path, _ = package
    with pytest.raises(ModelLoadError, match="compiled for cpu, not cuda: export it again with --device cuda"):
        load_backend(path, device="cuda")
    with pytest.raises(ModelLoadError, match="compiled fp32 package: its precision is fixed at export, not fp16"):
        load_backend(path, device="cpu", precision="fp16")


def test_metadata_is_read_from_the_archive(package):
    """read_metadata() reads the package's JSON without loading its library: Inductor's keys and ours."""
    from polydet.backends.aoti import read_metadata

    path, _ = package
    meta = read_metadata(path)
    assert meta["AOTI_DEVICE_KEY"] == "cpu"
    assert meta["polydet_channels_last"] == "false" and meta["polydet_max_batch"] == "1024"
    assert ModelInfo.from_json(meta["polydet"]) == ModelInfo(imgsz=128)


def test_not_a_package_is_a_load_error(tmp_path):
    import zipfile

    from polydet.backends.aoti import read_metadata

    bad = tmp_path / "x.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="cannot read AOTInductor package"):
        load_backend(bad, device="cpu")
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x/data/other.txt", "hi")
    with pytest.raises(ModelLoadError, match="holds no AOTInductor model"):
        read_metadata(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a child that fails (no CUDA here)")
def test_smoke_load_reports_a_failed_child(package):
    """The exporter's fresh-process load of a CUDA package: a child that fails becomes an ExportError with
    how it ended and its last lines (here the child finds no CUDA)."""
    from polydet.errors import ExportError
    from polydet.export.aoti import smoke_load

    path, _ = package
    with pytest.raises(ExportError, match=r"failed to load and run in a fresh process \(exit code 1\)") as e:
        smoke_load(path, torch.float32, timeout=120)
    assert "AssertionError: Torch not compiled with CUDA enabled" in str(e.value)  # the child's last line


def test_fixed_batch_package_is_padded_to_its_batch(tmp_path):
    """A package compiled for exactly 4 images (scripts/gpu_aoti_probe.py's static variant): the backend pads a
    shorter chunk to 4 and drops the padding's rows, and splits a longer batch; the eager module is the oracle."""
    from polydet.backends.base import META_KEY
    from polydet.export.aoti import CHANNELS_LAST_KEY, FIXED_BATCH_KEY, MAX_BATCH_KEY, compile_package

    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 11, 3, stride=4, padding=1), torch.nn.Flatten(2)).eval()
    model = torch.nn.Sequential(conv, _Transpose()).eval()  # (B, 3, 32, 32) -> (B, 64, 11)
    meta = {META_KEY: ModelInfo(imgsz=32).to_json(), CHANNELS_LAST_KEY: "false", MAX_BATCH_KEY: "4",
            FIXED_BATCH_KEY: "true"}
    path = compile_package(model, torch.zeros(4, 3, 32, 32), tmp_path / "fixed.pt2", meta, max_batch=None)
    b = load_backend(path, device="cpu")
    assert b.fixed and b.chunk == 4
    compiled, calls = b.model, []
    b.model = lambda t: (calls.append(tuple(t.shape)), compiled(t))[1]  # what the compiled model is handed
    for n, handed in ((3, [(4, 3, 32, 32)]), (6, [(4, 3, 32, 32)] * 2)):
        calls.clear()
        x = torch.rand(n, 3, 32, 32)
        with torch.inference_mode():
            ref = model(x)
        out = b(x)
        assert calls == handed
        assert out.shape == (n, 64, 11)
        assert float((out - ref).abs().max()) <= 1e-4


class _Transpose(torch.nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)
