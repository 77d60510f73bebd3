"""A training checkpoint of the polygon YOLOv5 repository through the CLI, as a user deploys it (issue 19):
``polydet inspect``, ``export`` (TorchScript, ONNX), ``predict``, ``eval`` and ``archive.sh`` take
``polygon_best.pt`` directly. The artifacts are compared with the training code's own output."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import polygon_repo_fakes as fakes
from polygon_repo_fakes import UCAS_ANCHORS, repo_yaml, save_training_run
from polydet.cli import main

REPO = Path(__file__).resolve().parents[2]
IMGSZ = 128  # small: the export checks run the model several times


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(polygon_best.pt, its ema model): a v5.0-layout polygon-yolov5s at width 0.25, UCAS anchors."""
    d = tmp_path_factory.mktemp("run")
    path, _, ema = save_training_run(d / "polygon_best.pt", repo_yaml("polygon_yolov5s_v5", width=0.25,
                                                                         anchors=UCAS_ANCHORS), seed=11)
    return path, ema


def test_inspect_shows_what_would_be_deployed(trained, capsys):
    path, ema = trained
    assert main(["inspect", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert {k: facts[k] for k in ("layout", "class", "head", "weights_from", "epoch", "best_fitness", "stored_dtype",
                                  "nc", "names", "imgsz", "strides", "anchors_px", "parameters")} == {
        "layout": "v5.0 (Focus stem, SPP)", "class": "models.yolo.Polygon_Model", "head": "Polygon_Detect",
        "weights_from": "ema", "epoch": 41, "best_fitness": 0.625, "stored_dtype": "float16", "nc": 2,
        "names": ["plane", "car"], "imgsz": 640, "strides": [8, 16, 32], "anchors_px": UCAS_ANCHORS,
        "parameters": sum(p.numel() for p in ema.parameters())}
    assert facts["yaml"]["layers"] == 25 and facts["yaml"]["head_from"] == [17, 20, 23]
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == (f"{path}: YOLOv5 training checkpoint (pickled modules, read with inert stand-ins), "
                       "model class models.yolo.Polygon_Model")
    assert "  input size    640 (not recorded; the training default: pass --imgsz for another)" in text
    assert "  weights from  ema (the exponential moving average of the weights: what YOLOv5 evaluates and keeps)" in text
    assert "  epoch         41" in text and "  best fitness  0.625" in text


def test_inspect_reports_a_refused_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    assert main(["inspect", str(tmp_path / "x.pt")]) == 2
    assert capsys.readouterr().err.startswith(f"polydet inspect: error: cannot read {tmp_path / 'x.pt'}")


def _image(tmp_path) -> str:
    rng = np.random.default_rng(3)
    img = np.full((300, 400, 3), 90, np.uint8)
    cv2.fillConvexPoly(img, np.array([[60, 40], [330, 70], [300, 250], [80, 220]]), (230, 230, 230))
    p = tmp_path / "scene.png"
    cv2.imwrite(str(p), np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8))
    return str(p)


def test_export_and_predict_take_the_checkpoint(trained, tmp_path, capsys):
    path, ema = trained
    outs = {}
    for fmt in ("torchscript", "onnx"):
        outs[fmt] = tmp_path / f"polygon_best_{IMGSZ}.{fmt}"
        argv = ["export", "--weights", str(path), "--format", fmt, "--imgsz", str(IMGSZ), "--out", str(outs[fmt])]
        assert main(argv) == 0
    capsys.readouterr()
    # each artifact against the training code itself (not polydet's eager model)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(4))
    ref = fakes.reference(ema, x)
    with torch.no_grad():
        ts = torch.jit.load(str(outs["torchscript"]))(x)
    import onnxruntime

    onnx = torch.from_numpy(onnxruntime.InferenceSession(str(outs["onnx"])).run(None, {"images": x.numpy()})[0])
    for out in (ts, onnx):
        torch.testing.assert_close(out[..., :8], ref[..., :8], rtol=0, atol=0.01)  # px; BN folded in the artifact
        torch.testing.assert_close(out[..., 8:], ref[..., 8:], rtol=0, atol=1e-4)
    img = _image(tmp_path)
    found = {}
    for name, model in (("checkpoint", path), ("torchscript", outs["torchscript"]), ("onnx", outs["onnx"])):
        assert main(["predict", "--model", str(model), img, "--json", "--conf", "0.01"]) == 0
        found[name] = json.loads(capsys.readouterr().out)
        assert found[name]["image"] == img and (found[name]["width"], found[name]["height"]) == (400, 300)
        assert {d["class_name"] for d in found[name]["detections"]} <= {"plane", "car"}
    assert found["checkpoint"]["detections"]  # random weights, a low threshold: something is found
    ts_dets, onnx_dets = found["torchscript"]["detections"], found["onnx"]["detections"]
    assert [d["class_id"] for d in ts_dets] == [d["class_id"] for d in onnx_dets] and ts_dets
    np.testing.assert_allclose([d["score"] for d in ts_dets], [d["score"] for d in onnx_dets], atol=1e-4)


def test_eval_takes_the_checkpoint(trained, tmp_path, capsys):
    path, _ = trained
    data = tmp_path / "val"
    assert main(["data", "synth", str(data), "--n", "2", "--seed", "5", "--no-progress"]) == 0
    report = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(path), "--data", str(data), "--imgsz", str(IMGSZ), "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert (r["model"], r["imgsz"], r["n_images"]) == (str(path), IMGSZ, 2)
    assert set(r["per_class"]) <= {"plane", "car"}


@pytest.mark.skipif(shutil.which("torch-model-archiver", path=str(REPO / ".venv" / "bin")) is None,
                    reason="torch-model-archiver is not installed in .venv")
def test_archive_sh_builds_a_served_archive_from_the_checkpoint(trained, tmp_path):
    path, _ = trained
    r = subprocess.run(["bash", str(REPO / "archive.sh"), "--weights", str(path), "--store", str(tmp_path / "store"),
                        "--build", str(tmp_path / "build"), "--formats", "onnx", "--name", "ucas",
                        "--imgsz", str(IMGSZ)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "store" / "ucas_onnx.mar") as z:
        assert {"ucas.onnx", "polydet_handler.py", "model-config.yaml"} <= {Path(n).name for n in z.namelist()}
        onnx_bytes = z.read(next(n for n in z.namelist() if n.endswith("ucas.onnx")))
    import onnx

    meta = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
    info = json.loads(meta["polydet"])
    assert (info["names"], info["imgsz"]) == (["plane", "car"], IMGSZ)
