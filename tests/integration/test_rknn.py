"""RKNN (RK3588): the export through rknn-toolkit2 in its own venv and the artifact run in the toolkit's PC
simulator, against the eager model. The venv is built once per run (``make test``: POLYDET_ENVS=.venvs, reused
afterwards); when pip cannot build it the simulator tests skip with pip's own reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from polydet import envs
from polydet.backends import load_backend
from polydet.cli import main as cli
from polydet.errors import ConfigError, ModelLoadError
from polydet.export import TOLERANCES, export, load_or_build
from polydet.export.common import fixed_inputs
from polydet.export.rknn import RECIPE_KEY, RKNN_ENV, SPLIT_LAYOUT, read_recipe, split_path
from polydet.meta import ModelInfo, Precision

WEIGHTS = "random"  # the random-weight demo model: what a fresh clone has without the bundled weights
IMGSZ = 128  # small: every simulator load rebuilds the model


@pytest.fixture(scope="module")
def rknn_env():
    try:
        return envs.ensure(RKNN_ENV)
    except envs.EnvBuildError as e:
        pytest.skip(f"the rknn-toolkit2 venv cannot be built here: {e}")


@pytest.fixture(scope="module")
def eager():
    return load_or_build(WEIGHTS, imgsz=IMGSZ)[0].eval()


def _parity(path, eager) -> dict:
    backend = load_backend(path)
    try:
        x = fixed_inputs((IMGSZ, IMGSZ), batch=3)  # batch 3 through a batch-1 artifact: chunked
        with torch.inference_mode():
            out, ref = backend(x), eager(x)
        assert backend.max_batch == 1 and backend.runtime == "simulator" and out.shape == ref.shape
        return {"corners_px": float((out[..., :8] - ref[..., :8]).abs().max()),
                "scores": float((out[..., 8:] - ref[..., 8:]).abs().max())}
    finally:
        backend.close()


@pytest.mark.slow
def test_fp16_export_runs_in_the_simulator_within_the_fp16_tolerance(rknn_env, eager, tmp_path):
    out = tmp_path / "m.rknn"
    path, diff = export(WEIGHTS, "rknn", out=out, imgsz=IMGSZ)  # no precision: the row's first, fp16
    assert path == out and out.read_bytes()[:4] == b"RKNN"
    assert {p.name for p in tmp_path.iterdir()} == {"m.rknn", "m.json", "m.split.onnx"}
    assert ModelInfo.from_json(out.with_suffix(".json").read_text()).precision is Precision.FP16
    d = _parity(out, eager)
    tol = TOLERANCES["fp16"]  # measured: 0.16 px / 2.9e-3 (bundled weights, 224)
    assert d["corners_px"] <= tol["corners_px"] and d["scores"] <= tol["scores"], d
    assert 0 < d["corners_px"]  # the NPU's fp16, not the float graph: it must differ from eager at all
    recipe = read_recipe(split_path(out))
    assert recipe == {"target": "rk3588", "toolkit": "rknn-toolkit2==2.5.0", "int8": False,
                      "outputs": ["coords", "scores"]}


@pytest.mark.slow
def test_int8_export_from_a_calibration_folder_via_the_cli(rknn_env, eager, tmp_path, capsys):
    from polydet.data.synth import write_dataset

    calib = tmp_path / "calib"
    write_dataset(calib, 6, seed=4242, progress=False, preview=0)
    out = tmp_path / "q.rknn"
    assert cli(["export", "--weights", WEIGHTS, "--format", "rknn", "--target", "rk3588", "--precision", "int8",
                "--calib", str(calib), "--imgsz", str(IMGSZ), "--out", str(out)]) == 0
    assert "parity vs eager model" in capsys.readouterr().out
    recipe = read_recipe(split_path(out))
    assert recipe["int8"] is True and recipe["calib"] == str(calib) and recipe["quantized_method"] == "channel"
    d = _parity(out, eager)
    tol = TOLERANCES["int8"]  # a gross-failure bound on noise inputs (verify.py); accuracy: BENCHMARKS.md
    assert d["corners_px"] <= tol["corners_px"] and d["scores"] <= tol["scores"], d


def test_the_split_graph_is_the_eager_model_and_onnx_runtime_refuses_it(eager, tmp_path):
    """The graph the toolkit converts, run by ONNX Runtime: the eager rows split at column 8 (fp32)."""
    import onnx
    import onnxruntime as ort

    from polydet.export.common import fused_copy
    from polydet.export.rknn import export_split_onnx

    _, info = load_or_build(WEIGHTS, imgsz=IMGSZ)
    split = tmp_path / "m.split.onnx"
    export_split_onnx(fused_copy(eager, Precision.FP32, "cpu"), info, split, {"target": "rk3588"})
    x = fixed_inputs((IMGSZ, IMGSZ), batch=1)
    coords, scores = ort.InferenceSession(str(split)).run(None, {"images": x.numpy()})
    with torch.inference_mode():
        ref = eager(x).numpy()
    assert coords.shape == (*ref.shape[:2], 8) and scores.shape == (*ref.shape[:2], ref.shape[2] - 8)
    assert np.abs(np.concatenate([coords, scores], -1) - ref).max() < 1e-3
    meta = {p.key: p.value for p in onnx.load(str(split)).metadata_props}
    assert SPLIT_LAYOUT in meta["polydet"] and meta[RECIPE_KEY] == '{"target": "rk3588"}'
    with pytest.raises(ModelLoadError, match="output layout"):
        load_backend(split)


def test_refusals_name_what_rknn_offers(tmp_path):
    with pytest.raises(ConfigError, match="rknn cannot be exported in fp32: it supports fp16, int8"):
        export(WEIGHTS, "rknn", out=tmp_path / "m.rknn", precision="fp32", imgsz=IMGSZ)
    with pytest.raises(ConfigError, match="rknn cannot be exported for target 'rk3566': its targets: rk3588"):
        export(WEIGHTS, "rknn", out=tmp_path / "m.rknn", target="rk3566", imgsz=IMGSZ)
    with pytest.raises(ConfigError, match="onnx cannot be exported for target 'rk3588': it compiles for no hardware"):
        export(WEIGHTS, "onnx", out=tmp_path / "m.onnx", target="rk3588", imgsz=IMGSZ)
    with pytest.raises(ConfigError, match="fixed input shape"):
        export(WEIGHTS, "rknn", out=tmp_path / "m.rknn", dynamic=True, imgsz=IMGSZ)
    with pytest.raises(ConfigError, match="has no option method, reduce_range"):
        export(WEIGHTS, "rknn", out=tmp_path / "m.rknn", precision="int8", imgsz=IMGSZ,
               quant={"method": "entropy", "reduce_range": True})
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_opening_needs_the_metadata_and_the_split_graph(tmp_path):
    art = tmp_path / "m.rknn"
    art.write_bytes(b"RKNN")
    with pytest.raises(ModelLoadError, match="needs m.json beside it"):
        load_backend(art)
    _, info = load_or_build(WEIGHTS, imgsz=IMGSZ)
    art.with_suffix(".json").write_text(dataclasses.replace(info, precision=Precision.FP16).to_json())
    with pytest.raises(ModelLoadError, match="a fp16 RKNN model"):
        load_backend(art, precision="fp32")
    with pytest.raises(ModelLoadError, match="m.split.onnx, which `polydet export --format rknn` writes"):
        load_backend(art, runtime="simulator")
    with pytest.raises(ModelLoadError, match="unknown RKNN runtime 'gpu'"):
        load_backend(art, runtime="gpu")
