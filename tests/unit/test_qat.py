"""Quantization-aware training (optimize/qat.py, `polydet qat`): a few fake-quant steps on the bundled weights
give a QDQ ONNX that describes itself, that ONNX Runtime runs with every body convolution fused into an INT8
QLinearConv, and whose outputs match the fake-quant torch model within QAT_PARITY."""

import collections
import json

import onnx
import onnxruntime as ort
import pytest
import torch

from polydet.backends import load_backend
from polydet.cli import main
from polydet.errors import ConfigError
from polydet.export.int8 import cpu_has_vnni
from polydet.meta import Precision
from polydet.optimize import qat as Q

BUNDLED = "weights/polydet_main_area.pt"
SHORT = Q.QatConfig(steps=2, batch=2, observe_batches=1, workers=0)


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "q.onnx"
    return Q.qat(BUNDLED, out, SHORT, log=lambda *a, **k: None)


def test_a_short_run_writes_a_qdq_onnx_that_describes_itself(short_run):
    out, run = short_run
    assert run["steps"] == 2 and run["first_loss"] > 0
    backend = load_backend(out)
    assert backend.info.precision is Precision.INT8 and backend.info.imgsz == 224
    recipe = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["polydet.int8"])
    assert recipe == {"method": "qat", "steps": 2, "batch": 2, "lr": SHORT.lr, "seed": 0,
                      "reduce_range": not cpu_has_vnni(), "per_channel": True, "exclude": "head", "graph": "qat"}
    ops = _ops(out)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 3 * 57  # input, weight, output of 57 convs


def test_onnx_runtime_runs_every_body_conv_in_int8(short_run, tmp_path):
    out, _ = short_run
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ops = _ops(tmp_path / "optimized.onnx")
    assert ops["QLinearConv"] == 57 and ops["Conv"] == 3  # the head's three 1x1 convs stay float


def test_weights_are_7_bit_integers_when_reduce_range(short_run):
    """The exported weight integers are the fake-quant ones: |q| <= 64 with reduce_range (no u8s8 saturation)."""
    out, run = short_run
    m = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {o: onnx.numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"
              for o in n.output}
    vals = {**inits, **consts}
    worst = 0
    for q in (n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits):
        w, scale = vals[q.input[0]], vals[q.input[1]]
        k = w / scale.reshape(-1, *[1] * (w.ndim - 1))
        worst = max(worst, float(abs(k).max()))
        assert abs(k - k.round()).max() < 1e-3  # already on the grid: the baked fake-quant values
    assert worst <= (64 if run["recipe"]["reduce_range"] else 128)


def test_parity_with_the_fake_quant_model_is_checked(short_run):
    _, run = short_run
    d = run["parity_fakequant"]
    assert d["confident_rows"] > 0
    assert all(d[k] <= v for k, v in Q.QAT_PARITY.items())


def test_the_ort_graph_is_ptqs_graph_with_the_fine_tuned_weights(tmp_path):
    """graph="ort": ONNX Runtime's quantizer with PTQ's defaults over the fine-tuned weights: the same ops as a
    PTQ export of the same model (so the same speed), SiLU's Sigmoid and Mul quantized too, the recipe says so."""
    from polydet.export import export
    from polydet.export.int8 import QuantConfig

    out, run = Q.qat(BUNDLED, tmp_path / "o.onnx", Q.QatConfig(steps=1, batch=2, observe_batches=1, workers=0,
                                                               graph="ort"), log=lambda *a, **k: None)
    ptq, _ = export(BUNDLED, "onnx", out=tmp_path / "p.onnx", precision="int8", quant=QuantConfig(n_calib=2),
                    verify=False)
    assert _ops(out) == _ops(ptq)
    m = onnx.load(str(out))
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    quantized = collections.Counter(producers.get(n.input[0]) for n in m.graph.node if n.op_type == "QuantizeLinear")
    assert quantized["Sigmoid"] == quantized["Mul"] == 57
    recipe = json.loads({p.key: p.value for p in m.metadata_props}["polydet.int8"])
    assert recipe["graph"] == "ort" and recipe["ptq"]["method"] == "minmax" and recipe["steps"] == 1
    assert run["parity_float_finetuned"]["scores"] <= 0.5 and "parity_fakequant" not in run  # TOLERANCES["int8"]


def test_bad_settings_are_refused(capsys):
    with pytest.raises(ConfigError):
        Q.QatConfig(freeze_at=1.5)
    assert main(["qat", "--weights", BUNDLED, "--steps", "-1"]) == 2
    assert "QAT settings out of range" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        Q.QatConfig(graph="tensorrt")


def test_prepare_leaves_the_head_float():
    from polydet.export.common import fused_copy, load_or_build

    eager, _ = load_or_build("random", imgsz=64)
    model = Q.prepare(fused_copy(eager.eval(), Precision.FP32, "cpu"), reduce_range=True)
    assert sum(isinstance(m, Q.QConv) for m in model.modules()) == 57
    assert not any(isinstance(m, Q.QConv) for m in model.det.modules())
    with pytest.raises(ConfigError):
        Q.prepare(eager, reduce_range=True)  # not BN-fused
    Q.set_phase(model, observe=True, fake_quant=False)
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        assert torch.equal(model(x), fused_copy(eager.eval(), Precision.FP32, "cpu")(x))  # observing changes nothing
