"""INT8 post-training quantization (export/int8.py, `polydet quantize`): the artifact, its recipe, the head
kept in float, custom scales, calibration sources, refusals, and the accuracy report on the bundled weights."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from polydet.backends import load_backend
from polydet.cli import main
from polydet.errors import ConfigError
from polydet.evaluate import evaluate_artifact
from polydet.export import export
from polydet.export.int8 import QuantConfig, cpu_has_vnni, load_scales
from polydet.meta import Precision

pytest.importorskip("onnxslim")

FIRST = "/yolobody.0/conv/Conv_output_0"  # the stem conv's output, an activation the quantizer scales
BUNDLED = "weights/polydet_main_area.pt"


def _inits(path) -> dict:
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


def _act_scale(path, tensor: str) -> tuple[float, int]:
    """(scale, zero point) of the QuantizeLinear that quantizes ``tensor``."""
    m = onnx.load(str(path))
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return float(inits[q.input[1]]), int(inits[q.input[2]])


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    out, diff = export("random", "onnx", out=d / "r_int8.onnx", imgsz=64, precision="int8",
                       quant=QuantConfig(n_calib=4))
    return out, diff


def test_int8_artifact_describes_itself_and_keeps_the_head_float(int8):
    out, diff = int8
    backend = load_backend(out)
    assert backend.info.precision is Precision.INT8 and backend.info.imgsz == 64
    m = onnx.load(str(out))
    recipe = json.loads({p.key: p.value for p in m.metadata_props}["polydet.int8"])
    assert recipe == {"calib": "synth", "n_calib": 4, "method": "minmax", "per_channel": True,
                      "reduce_range": not cpu_has_vnni(), "exclude": "head", "extra_exclude": [], "scales": None}
    inits = _inits(out)
    assert inits["yolobody.0.conv.weight_quantized"].data_type == onnx.TensorProto.INT8
    for i in range(3):  # the head's convolutions stay float: their weights are not quantized
        assert inits[f"det.m.{i}.weight"].data_type == onnx.TensorProto.FLOAT
        assert f"det.m.{i}.weight_quantized" not in inits
    assert not [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.name.startswith("/det/")]
    assert diff["scores"] <= 0.5  # TOLERANCES["int8"], checked by export itself


def test_custom_scales_pin_the_named_tensor(tmp_path, int8):
    default_scale, _ = _act_scale(int8[0], FIRST)
    spec = tmp_path / "scales.json"
    spec.write_text(json.dumps({FIRST: {"min": -2.0, "max": 6.0}}))
    out, _ = export("random", "onnx", out=tmp_path / "s.onnx", imgsz=64, precision="int8",
                    quant=QuantConfig(n_calib=4, scales=str(spec)))
    scale, zp = _act_scale(out, FIRST)
    assert scale == pytest.approx(8.0 / 255, rel=1e-6) and zp == 64  # uint8: -2 maps to 64
    assert scale != pytest.approx(default_scale, rel=1e-3)
    assert _act_scale(out, "/yolobody.0/act/Sigmoid_output_0") == _act_scale(int8[0], "/yolobody.0/act/Sigmoid_output_0")


def test_bad_scales_and_options_are_refused(tmp_path):
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({FIRST: {"min": 3, "max": 1}}))
    with pytest.raises(ConfigError, match="needs"):
        load_scales(str(spec))
    spec.write_text(json.dumps({"no_such_tensor": {"min": 0, "max": 1}}))
    with pytest.raises(ConfigError, match=r"custom scales name tensors not in the graph: \['no_such_tensor'\]"):
        export("random", "onnx", out=tmp_path / "x.onnx", imgsz=64, precision="int8",
               quant=QuantConfig(n_calib=1, scales=str(spec)))
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        QuantConfig(method="kl")
    with pytest.raises(ConfigError, match="apply to int8 exports, not fp32"):
        export("random", "onnx", out=tmp_path / "y.onnx", imgsz=64, quant={"calib": str(tmp_path)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        export("random", "onnx", out=tmp_path / "z.onnx", imgsz=64, precision="int8",
               quant=QuantConfig(calib=str(tmp_path / "empty")))
    assert not list(tmp_path.glob("*.onnx"))


def test_export_cli_calibrates_from_a_folder(tmp_path, capsys):
    from polydet.data.synth import write_dataset

    write_dataset(tmp_path / "calib", 3, seed=5, progress=False, preview=0)
    out = tmp_path / "c.onnx"
    assert main(["export", "--weights", "random", "--format", "onnx", "--imgsz", "64", "--precision", "int8",
                 "--calib", str(tmp_path / "calib"), "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["polydet.int8"])["calib"] == str(tmp_path / "calib")
    assert main(["export", "--weights", "random", "--format", "onnx", "--imgsz", "64", "--calib", "x",
                 "--out", str(tmp_path / "d.onnx")]) == 2
    assert "apply to int8 exports, not fp32" in capsys.readouterr().err


def test_quantize_refuses_over_budget(tmp_path, capsys):
    from polydet.data.synth import write_dataset

    write_dataset(tmp_path / "val", 2, seed=999, progress=False, preview=0)
    args = ["quantize", "--weights", "random", "--imgsz", "64", "--n-calib", "2", "--data", str(tmp_path / "val"),
            "--no-speed", "--out", str(tmp_path / "q_int8.onnx"), "--report", str(tmp_path / "r.json")]
    # a random model scores 0 before and after: a drop of 0 points is over a budget of -1, within one of 0
    assert main(args + ["--max-drop", "-1"]) == 3
    assert "refused: mAP50 drops 0.00 points > --max-drop -1.0" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["refused"] is True
    assert main(args + ["--max-drop", "0"]) == 0


def test_bundled_weights_int8_report_is_a_real_run(tmp_path):
    """The report's numbers are evaluate_artifact's on the two artifacts it wrote (an independent run)."""
    from polydet.data.synth import write_dataset

    write_dataset(tmp_path / "val", 24, seed=999, progress=False, preview=0)
    rep_path = tmp_path / "rep.json"
    assert main(["quantize", "--weights", BUNDLED, "--n-calib", "16", "--data", str(tmp_path / "val"),
                 "--out", str(tmp_path / "m_int8.onnx"), "--report", str(rep_path), "--no-speed"]) == 0
    rep = json.loads(rep_path.read_text())
    for key, path in (("ref", tmp_path / "m_fp32ref.onnx"), ("cand", tmp_path / "m_int8.onnx")):
        r = evaluate_artifact(path, tmp_path / "val")
        assert (rep[key]["map50"], rep[key]["map"]) == (r["map50"], r["map"])
    assert rep["ref"]["map50"] > 0.9  # the bundled weights on their own kind of data
    assert abs(rep["delta_map50"]) < 0.03 and abs(rep["delta_map"]) < 0.03  # measured: +0.002 / -0.002 on 200
    assert rep["output_diffs"]["confident_rows"] > 0 and rep["output_diffs"]["confident_scores"] < 0.3
    assert np.isfinite(rep["delta_map50"]) and rep["refused"] is False
