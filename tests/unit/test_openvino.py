"""The OpenVINO format (issue 13.1): an IR (.xml + .bin) exported from the random-weight model, opened by the
OpenVINO backend and held against ONNX Runtime (the same ONNX trace) and the eager model."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from polydet.backends import load_backend
from polydet.errors import ConfigError, ModelLoadError
from polydet.export import TOLERANCES, export
from polydet.export.common import fixed_inputs
from polydet.meta import ModelInfo, Precision
from polydet.pipeline import DetectOptions, Detector

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino is not installed: pip install 'polydet[openvino]'")

IMGSZ = 96
NAMES = ["door", "window", "sign"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    out = {}
    for key, fmt, prec, suffix in (("onnx", "onnx", "fp32", ".onnx"), ("fp32", "openvino", "fp32", ".xml"),
                                   ("fp16", "openvino", "fp16", ".xml")):
        out[key], out[key + "_diff"] = export("random", fmt, out=root / f"m_{key}{suffix}", imgsz=IMGSZ,
                                              precision=prec, names=NAMES)
    return out


def test_the_ir_keeps_its_weights_beside_it_and_describes_itself(artifacts):
    xml = artifacts["fp32"]
    assert xml.with_suffix(".bin").is_file()
    be = load_backend(xml)
    assert type(be).__name__ == "OpenVinoBackend" and be.max_batch is None  # batch stays dynamic, as in the ONNX
    assert be.info == ModelInfo(names=NAMES, imgsz=IMGSZ)
    assert load_backend(artifacts["fp16"]).info == ModelInfo(names=NAMES, imgsz=IMGSZ, precision=Precision.FP16)
    assert 'polydet value="{' in xml.read_text()  # in the IR's rt_info, no side file
    assert not list(xml.parent.glob("*.json"))


def test_same_outputs_as_onnxruntime(artifacts):
    x = fixed_inputs((IMGSZ, IMGSZ), batch=3)
    ov, ort = load_backend(artifacts["fp32"])(x), load_backend(artifacts["onnx"])(x)
    assert ov.shape == ort.shape == (3, 3 * sum((IMGSZ // s) ** 2 for s in (8, 16, 32)), 9 + len(NAMES))
    tol = TOLERANCES["fp32"]
    assert float((ov[..., :8] - ort[..., :8]).abs().max()) <= tol["corners_px"]
    assert float((ov[..., 8:] - ort[..., 8:]).abs().max()) <= tol["scores"]
    assert artifacts["fp32_diff"]["corners_px"] <= tol["corners_px"]  # the export's own check, vs eager


def _dicts(result):
    return [r.to_dict() for r in result]


def test_detector_gives_the_onnx_detections(artifacts):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (300, 500, 3), dtype=np.uint8), rng.integers(0, 255, (640, 200, 3), dtype=np.uint8)]
    opts = DetectOptions(conf=0.0003, max_det=20)  # random weights: obj prior ~1e-3
    got = _dicts(Detector.from_artifact(artifacts["fp32"], options=opts).detect(imgs))
    want = _dicts(Detector.from_artifact(artifacts["onnx"], options=opts).detect(imgs))
    assert sum(len(w["detections"]) for w in want) > 0
    tol = TOLERANCES["fp32"]
    for a, b in zip(got, want):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        np.testing.assert_allclose([d["polygon"] for d in a["detections"]], [d["polygon"] for d in b["detections"]],
                                   atol=tol["corners_px"])
        np.testing.assert_allclose([d["score"] for d in a["detections"]], [d["score"] for d in b["detections"]],
                                   atol=tol["scores"])


def test_fp16_weights_take_fp32_input(artifacts):
    f32, f16 = artifacts["fp32"], artifacts["fp16"]
    assert f16.with_suffix(".bin").stat().st_size < 0.55 * f32.with_suffix(".bin").stat().st_size
    assert 'element_type="f16"' in f16.read_text() and 'element_type="f16"' not in f32.read_text()
    be = load_backend(f16)
    assert be.precision is Precision.FP16 and be.input_dtype is torch.float32
    x = fixed_inputs((IMGSZ, IMGSZ))
    a, b = be(x), load_backend(f32)(x)
    diff = float((a - b).abs().max())
    assert 0 < diff <= TOLERANCES["fp16"]["corners_px"]  # rounded weights: close, but not the fp32 graph
    assert artifacts["fp16_diff"]["corners_px"] <= TOLERANCES["fp16"]["corners_px"]


def test_a_static_batch_sets_max_batch(artifacts, tmp_path):
    import openvino as ov

    model = ov.Core().read_model(str(artifacts["fp32"]))
    model.reshape([2, 3, IMGSZ, IMGSZ])
    ov.save_model(model, str(tmp_path / "b2.xml"), compress_to_fp16=False)
    fixed, dyn = load_backend(tmp_path / "b2.xml"), load_backend(artifacts["fp32"])
    assert fixed.max_batch == 2 and fixed.info == dyn.info
    x = fixed_inputs((IMGSZ, IMGSZ), batch=3)  # chunks of 2, the last padded
    torch.testing.assert_close(fixed(x), dyn(x), atol=1e-4, rtol=0)


def test_threads_follow_torch(artifacts):
    assert load_backend(artifacts["fp32"]).compiled.get_property("INFERENCE_NUM_THREADS") == torch.get_num_threads()
    assert load_backend(artifacts["fp32"], threads=1).compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_what_the_backend_refuses(artifacts, tmp_path):
    with pytest.raises(ModelLoadError, match="export an IR with fp16 weights"):
        load_backend(artifacts["fp32"], precision="fp16")
    assert load_backend(artifacts["fp16"], precision="fp16").precision is Precision.FP16  # what it is already
    with pytest.raises(ModelLoadError, match="runs on the CPU"):
        load_backend(artifacts["fp32"], device="cuda")
    lonely = tmp_path / "lonely.xml"
    lonely.write_text(artifacts["fp32"].read_text())
    with pytest.raises(ModelLoadError, match="cannot load OpenVINO IR"):
        load_backend(lonely)
    from polydet.serving.archive import companions

    assert companions(artifacts["fp32"]) == [artifacts["fp32"].with_suffix(".bin")]
    with pytest.raises(ConfigError, match=r"^lonely.xml needs lonely.bin beside it$"):
        companions(lonely)


def test_export_sends_no_telemetry(tmp_path, monkeypatch):
    """ov.convert_model starts OpenVINO's usage telemetry (sent unless the user opted out); polydet reads the ONNX
    with Core.read_model instead. The control proves the patched hook is the one convert_model calls."""
    import socket

    import openvino as ov
    from openvino.tools.ovc import telemetry_utils

    calls = []
    monkeypatch.setattr(telemetry_utils, "init_telemetry_class", lambda *a, **k: calls.append(k) or _NoTelemetry())
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail(f"network connection {a[1:]}"))
    export("random", "openvino", out=tmp_path / "m.xml", imgsz=64)  # verified: loads and matches eager
    assert calls == []
    onnx, _ = export("random", "onnx", out=tmp_path / "m.onnx", imgsz=64, verify=False)
    ov.convert_model(str(onnx))
    assert len(calls) == 1


class _NoTelemetry:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf is not installed: pip install 'polydet[openvino]'")
def test_int8_through_nncf(artifacts, tmp_path, monkeypatch):
    """NNCF in a child process with its telemetry switched off, the head left in float, the recipe in the IR."""
    import subprocess

    from polydet.export import openvino_int8

    envs = []
    real_run = subprocess.run
    monkeypatch.setattr(openvino_int8.subprocess, "run", lambda *a, **k: envs.append(k["env"]) or real_run(*a, **k))
    xml, diff = export("random", "openvino", out=tmp_path / "q.xml", imgsz=IMGSZ, precision="int8", names=NAMES,
                       quant={"n_calib": 4})
    assert [e.get("NNCF_CI") for e in envs] == ["1"]
    assert diff["scores"] <= TOLERANCES["int8"]["scores"]
    be = load_backend(xml)
    assert be.info == ModelInfo(names=NAMES, imgsz=IMGSZ, precision=Precision.INT8) and be.input_dtype is torch.float32
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    fq = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert fq and not [t.get_node().get_friendly_name() for op in fq for t in op.output(0).get_target_inputs()
                       if t.get_node().get_friendly_name().startswith("/det/")]  # the head stays float
    assert '"tool": "nncf"' in model.get_rt_info(["polydet.int8"]).astype(str)
    res = Detector.from_artifact(xml, options=DetectOptions(conf=0.0003)).detect([np.zeros((80, 120, 3), np.uint8)])
    assert res[0].ok
    with pytest.raises(ConfigError, match="has no option method, scales"):
        export("random", "openvino", out=tmp_path / "r.xml", imgsz=IMGSZ, precision="int8",
               quant={"method": "entropy", "scales": "s.json"})
