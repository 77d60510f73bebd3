"""NCNN (pnnx export, the ncnn wheel's runtime): the same detections as ONNX Runtime, metadata beside the
model, fp16 weights, inputs handed to ncnn in memory it owns, one image at a time."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

pytest.importorskip("ncnn", reason="ncnn is not installed (pip install 'polydet[ncnn]')")
pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'polydet[ncnn]')")

from artifact_helpers import assert_detects_like

from polydet.backends import load_backend  # noqa: E402
from polydet.errors import ModelLoadError  # noqa: E402
from polydet.export import export  # noqa: E402
from polydet.meta import ModelInfo, Precision  # noqa: E402
from polydet.pipeline import DetectOptions  # noqa: E402

IMGSZ = 128
OPTS = DetectOptions(conf=0.0003, max_det=20)  # random weights: obj prior ~1e-3


def _export(tmp_path, fmt, precision="fp32", name=None):
    out = tmp_path / (name or f"r_{precision}.{'ncnn.param' if fmt == 'ncnn' else 'onnx'}")
    with contextlib.redirect_stdout(io.StringIO()):  # pnnx prints its passes
        return export("random", fmt, out=out, imgsz=IMGSZ, precision=precision)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ncnn")
    return {"ncnn": _export(d, "ncnn"), "onnx": _export(d, "onnx"), "ncnn_fp16": _export(d, "ncnn", "fp16")}


def test_export_writes_the_model_its_weights_and_metadata(artifacts):
    path, diff = artifacts["ncnn"]
    assert sorted(p.name for p in path.parent.glob("r_fp32.ncnn.*")) == [
        "r_fp32.ncnn.bin", "r_fp32.ncnn.json", "r_fp32.ncnn.param"]
    assert diff["corners_px"] < 1e-3 and diff["scores"] < 1e-5  # measured ~6e-8: the same arithmetic
    backend = load_backend(path)
    assert backend.name == "ncnn" and backend.max_batch == 1
    assert backend.info == ModelInfo(names=["page", "photo"], imgsz=IMGSZ)


def test_fp16_weights(artifacts):
    path, diff = artifacts["ncnn_fp16"]
    assert load_backend(path).info.precision is Precision.FP16
    assert diff["corners_px"] < 0.05 and diff["scores"] < 1e-3  # measured 5e-4 px, 6e-5 at 128


def test_the_same_detections_as_onnx_runtime_on_mixed_sizes(artifacts):
    assert_detects_like(artifacts["ncnn"][0], artifacts["onnx"][0], OPTS, px=0.05, score=1e-4)


def test_an_input_array_reused_and_overwritten_gives_each_its_own_answer(artifacts):
    """ncnn.Mat(array) wraps the array's memory: the backend must hand ncnn a copy it owns."""
    backend = load_backend(artifacts["ncnn"][0])
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, IMGSZ, IMGSZ, generator=g), torch.rand(1, 3, IMGSZ, IMGSZ, generator=g)
    want_a, want_b = backend(a.clone()), backend(b.clone())
    x = a.clone()
    first = backend(x)
    x.copy_(b)  # the same memory now holds another image
    second = backend(x)
    torch.testing.assert_close(first, want_a)
    torch.testing.assert_close(second, want_b)
    assert not torch.equal(first, second)
    torch.testing.assert_close(backend(torch.cat([a, b])), torch.cat([want_a, want_b]))  # a batch, one by one


def test_a_model_without_its_companions_is_refused(artifacts, tmp_path):
    path, _ = artifacts["ncnn"]
    lone = tmp_path / "lone.ncnn.param"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(ModelLoadError, match="needs lone.ncnn.bin beside it"):
        load_backend(lone)
