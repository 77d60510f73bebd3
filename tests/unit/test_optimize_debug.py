"""`polydet debug`: a planted corruption of one layer's weights is the layer the table points at; identical
graphs show no error; the final outputs are compared unmarked."""

import json
import math

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from polydet.cli import main
from polydet.export import export
from polydet.optimize.debug import (
    SNR_CAP,
    compare_layers,
    first_jump,
    inputs_for,
    tensor_stats,
)

CORRUPTED = "yolobody.6.cv2.conv.weight"
ITS_OUTPUT = "/yolobody.6/cv2/conv/Conv_output_0"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("debug")
    a, _ = export("random", "onnx", out=d / "a.onnx", imgsz=64)
    m = onnx.load(str(a))
    init = next(i for i in m.graph.initializer if i.name == CORRUPTED)
    w = numpy_helper.to_array(init).copy()
    w.reshape(-1)[::7] *= -3.0  # a planted corruption of one conv's weights
    init.CopyFrom(numpy_helper.from_array(w, CORRUPTED))
    onnx.save(m, str(d / "b.onnx"))
    return a, d / "b.onnx"


def test_tensor_stats_oracle():
    a = np.array([3.0, 4.0])
    assert tensor_stats(a, a) == (1.0, SNR_CAP, 0.0)
    cos, snr, mx = tensor_stats(a, np.array([3.0, 5.0]))
    assert cos == pytest.approx((9 + 20) / (5 * math.sqrt(34)))
    assert snr == pytest.approx(10 * math.log10(25 / 1)) and mx == 1.0


def test_the_planted_corruption_is_the_first_jump(pair):
    a, b = pair
    x = inputs_for(a, "synth", 2)
    rows = compare_layers(a, b, x)
    jump = first_jump(rows, 10.0)
    assert jump is not None and jump.name == ITS_OUTPUT and jump.op == "Conv"
    before = rows[:jump.index]
    assert before and all(r.snr_db == SNR_CAP and r.max_abs == 0.0 for r in before)
    assert jump.snr_db < 20 and jump.drop_db > 60
    assert compare_layers(a, a, x) and first_jump(compare_layers(a, a, x), 10.0) is None


def test_cli_table_names_the_layer_and_compares_final_outputs(pair, tmp_path, capsys):
    a, b = pair
    assert main(["debug", str(a), str(b), "--n", "2", "--top", "5", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "first layer adding > 10.0 dB: " in out and f"Conv {ITS_OUTPUT} (SNR" in out
    assert out.count("final ") == 2
    data = json.loads((tmp_path / "d.json").read_text())
    assert {"corners", "scores"} == set(data["final"])
    assert max(data["layers"], key=lambda r: r["drop_db"])["name"] == ITS_OUTPUT


def test_debug_refuses_what_it_cannot_compare(tmp_path, capsys):
    assert main(["debug", str(tmp_path / "nope.onnx"), str(tmp_path / "x.torchscript")]) == 2
    assert "needs an existing .onnx artifact" in capsys.readouterr().err


def test_every_marked_tensor_matches_polygraphy(tmp_path):
    """The independent oracle: polygraphy's ONNX Runtime runner with every output marked (the handbook's
    tool) computes the same tensors as debug.run_all, on an INT8 QDQ graph."""
    pytest.importorskip("polygraphy")
    from polygraphy import constants
    from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from polydet.export.int8 import QuantConfig
    from polydet.optimize.debug import run_all

    q, _ = export("random", "onnx", out=tmp_path / "q.onnx", imgsz=64, precision="int8", quant=QuantConfig(n_calib=2))
    x = inputs_for(q, "synth", 1)
    loader = SessionFromOnnx(BytesFromOnnx(ModifyOutputs(OnnxFromPath(str(q)), outputs=constants.MARK_ALL)))
    with OnnxrtRunner(loader) as runner:
        theirs = runner.infer({"images": x})
    mine, _ = run_all(q, x)
    assert set(theirs) == set(mine) and len(mine) > 500
    for name, value in mine.items():
        np.testing.assert_allclose(value.astype(np.float64), theirs[name], atol=1e-6, rtol=0, err_msg=name)
