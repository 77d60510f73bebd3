"""`polydet debug` across the contract passes (fuse-preprocess: uint8 NHWC input; drop-sigmoid: logit scores):
each artifact is fed the same pixels in its own format, the body's tensors pair by name, the head's tensors
are compared in logit space, and a planted corruption in a fused artifact is still the layer the table names."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from polydet.cli import main
from polydet.export import export
from polydet.optimize.debug import (
    SNR_CAP,
    compare_layers,
    final_outputs,
    first_jump,
    pixels_for,
    run_all,
)
from polydet.optimize.debug_align import align, feed

CORRUPTED = "yolobody.6.cv2.conv.weight"
ITS_OUTPUT = "/yolobody.6/cv2/conv/Conv_output_0"
FUSED = ("fuse-preprocess", "drop-sigmoid")


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """The same random weights as a plain fp32 ONNX, with both contract passes, and the latter corrupted."""
    d = tmp_path_factory.mktemp("debug_passes")
    plain, _ = export("random", "onnx", out=d / "plain.onnx", imgsz=64)
    fused, _ = export("random", "onnx", out=d / "fused.onnx", imgsz=64, passes=FUSED)
    m = onnx.load(str(fused))
    init = next(i for i in m.graph.initializer if i.name == CORRUPTED)
    w = numpy_helper.to_array(init).copy()
    w.reshape(-1)[::7] *= -3.0
    init.CopyFrom(numpy_helper.from_array(w, CORRUPTED))
    onnx.save(m, str(d / "fused_bad.onnx"))
    return plain, fused, d / "fused_bad.onnx", pixels_for(plain, "synth", 2)


def test_each_artifact_is_fed_its_own_format(arts):
    plain, fused, _, x = arts
    assert x.dtype == np.uint8 and x.shape == (2, 64, 64, 3)
    xp, xf = feed(x, align(plain)), feed(x, align(fused))
    assert xf.dtype == np.uint8 and np.array_equal(xf, x)
    assert xp.dtype == np.float32 and xp.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(xp, torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).numpy())
    assert np.array_equal(feed(xp, align(fused)), x)  # a float batch on 1/255 steps goes back exactly


def test_plain_and_fused_fp32_of_the_same_weights_agree(arts):
    plain, fused, _, x = arts
    rows = compare_layers(plain, fused, x)
    va, nodes_p = run_all(plain, x)
    assert len(rows) > 300 and first_jump(rows, 10.0) is None
    assert all(r.snr_db == SNR_CAP and r.max_abs <= 1e-5 for r in rows), [r for r in rows if r.snr_db < SNR_CAP]
    names = {r.name for r in rows}
    # the head's tensors are compared in logit space: the plain graph's sigmoids were removed for the comparison
    assert "output" in names and not any(n.endswith("Sigmoid_output_0") and "/det/" in n for n in names)
    assert {n.output[0] for n in nodes_p if n.op_type == "Sigmoid" and n.name.startswith("/det/")} <= set(va)
    assert not names & {"images_f", "images_t", "images_uint8"}  # the fused preprocessing pairs with nothing
    back = compare_layers(fused, plain, x)
    assert back[0].name == "images" and back[0].op == "Div" and back[0].max_abs == 0.0  # /255 vs the float input
    assert {r.name for r in back[1:]} == names and all(r.snr_db == SNR_CAP for r in back)
    final = final_outputs(plain, fused, x)  # probabilities: the fused artifact's backend applies the sigmoid
    assert final["corners"]["max_abs"] == 0.0 and final["scores"]["max_abs"] < 1e-6


def test_the_output_tensor_would_mismatch_without_the_logit_alignment(arts):
    """The independent check of what the alignment fixes: the same-named output holds probabilities in one
    graph and logits in the other; after the plain graph's sigmoids are removed it holds the logits."""
    plain, fused, _, x = arts
    raw, _ = run_all(plain, x)
    aligned, _ = run_all(plain, x, to_logits=True)
    logits, _ = run_all(fused, x)
    np.testing.assert_allclose(aligned["output"], logits["output"], atol=1e-5, rtol=0)
    scores = torch.sigmoid(torch.from_numpy(logits["output"][..., 8:]).double()).numpy()
    np.testing.assert_allclose(raw["output"][..., 8:], scores, atol=1e-6, rtol=0)
    assert np.abs(raw["output"][..., 8:] - logits["output"][..., 8:]).max() > 0.1


@pytest.mark.parametrize("reference", ["plain", "fused"])
def test_a_corrupted_layer_in_a_fused_artifact_is_the_first_jump(arts, reference):
    plain, fused, bad, x = arts
    rows = compare_layers(plain if reference == "plain" else fused, bad, x)
    jump = first_jump(rows, 10.0)
    assert jump is not None and jump.name == ITS_OUTPUT and jump.op == "Conv"
    assert all(r.snr_db == SNR_CAP and r.max_abs == 0.0 for r in rows[:jump.index])
    assert jump.snr_db < 20 and jump.drop_db > 60
    assert max(rows, key=lambda r: r.drop_db).name == ITS_OUTPUT


def test_cli_on_plain_vs_corrupted_fused(arts, tmp_path, capsys):
    plain, _, bad, _ = arts
    assert main(["debug", str(plain), str(bad), "--n", "2", "--top", "5", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert f"Conv {ITS_OUTPUT} (SNR" in out
    assert "head tensors compared in logit space (B outputs logits" in out and "the served scores below as probabilities" in out
    assert json.loads((tmp_path / "d.json").read_text())["final"]["scores"]["max_abs"] > 0


def test_cli_refuses_artifacts_of_different_input_sizes(arts, tmp_path, capsys):
    plain = arts[0]
    other, _ = export("random", "onnx", out=tmp_path / "o96.onnx", imgsz=96, passes=("fuse-preprocess",))
    assert main(["debug", str(plain), str(other), "--n", "1"]) == 2
    assert "takes 96x96 images" in capsys.readouterr().err


def test_a_head_the_sigmoid_rewrite_cannot_reach_is_left_out(tmp_path):
    """Sigmoid -> Q/DQ -> Concat: drop-sigmoid's rewrite does not reach it, so every tensor between the head
    and the output is excluded instead of being paired with the other graph's logits."""
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("QuantizeLinear", ["s", "sc", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["dq"], name="dq"),
             helper.make_node("Concat", ["c", "dq"], ["output"], axis=1, name="cat")]
    inits = [numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "sc"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    al = align(path, to_logits=True)
    assert al.skip == {"output", "dq", "q", "s", "c"}
    assert set(run_all(path, np.zeros((1, 4, 4, 3), np.uint8), to_logits=True)[0]) == set()
    assert align(path).skip == frozenset()


def test_a_uint8_graph_without_polydets_preprocess_is_refused(arts, tmp_path, capsys):
    fused = arts[1]
    m = onnx.load(str(fused))
    next(n for n in m.graph.node if n.name == "preprocess/Div").name = "renamed"
    onnx.save(m, str(tmp_path / "foreign.onnx"))
    shutil.copy(arts[0], tmp_path / "plain.onnx")
    assert main(["debug", str(tmp_path / "plain.onnx"), str(tmp_path / "foreign.onnx"), "--n", "1"]) == 2
    assert "has no preprocess/Div node" in capsys.readouterr().err


def test_int8_with_and_without_fused_preprocessing_match_tensor_for_tensor(arts, tmp_path):
    """The same calibration quantizes both (the fuse pass runs after quantization), so every tensor the two QDQ
    graphs share is identical: the renamed /255 output pairs with the plain input and nothing pairs wrongly."""
    from polydet.export.int8 import QuantConfig

    x = arts[3]
    q, _ = export("random", "onnx", out=tmp_path / "q.onnx", imgsz=64, precision="int8", quant=QuantConfig(n_calib=2))
    qf, _ = export("random", "onnx", out=tmp_path / "qf.onnx", imgsz=64, precision="int8",
                   quant=QuantConfig(n_calib=2), passes=("fuse-preprocess",))
    rows = compare_layers(q, qf, x)
    assert len(rows) > 200 and all(r.snr_db == SNR_CAP and r.max_abs == 0.0 for r in rows)
    assert {r.name for r in compare_layers(qf, q, x)} == {"images"} | {r.name for r in rows}
    plain_vs_int8 = compare_layers(arts[0], qf, x)  # fp32 plain vs INT8 fused: the first conv is where error starts
    assert plain_vs_int8[0].name == "/yolobody.0/conv/Conv_output_0" and plain_vs_int8[0].snr_db < SNR_CAP
