"""A checkpoint of the polygon YOLOv5 training repository, served (issue 19): a v5.0 polygon-yolov5s built
from its yaml, UCAS-AOD anchors, 1024 px, saved the way the repository's train script saves
``polygon_best.pt`` (pickled modules, fp16, ema). `polydet archive --weights polygon_best.pt` exports it,
a real TorchServe serves it, and the served answers equal the training code's own head output decoded by
polydet's pipeline (the eager checkpoint in-process, whose raw output tests/unit checks against the fake
repository's forward to fp32 rounding)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from conftest import start_server
from serving_helpers import assert_same_result, auth, encode, page_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from polygon_repo_fakes import UCAS_ANCHORS, reference, repo_yaml, save_training_run  # noqa: E402

from polydet.pipeline import DetectOptions, Detector  # noqa: E402
from polydet.serving.archive import main as archive_main  # noqa: E402

IMGSZ = 1024
OPTS = DetectOptions(conf=0.3, max_det=10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("training_run")
    path, _, ema = save_training_run(d / "polygon_best.pt", repo_yaml("polygon_yolov5s_v5", anchors=UCAS_ANCHORS),
                                     seed=3)
    return path, ema


@pytest.fixture(scope="module")
def ucas_server(tmp_path_factory, checkpoint):
    path, _ = checkpoint
    root = tmp_path_factory.mktemp("ucas")
    store = root / "store"
    assert archive_main(["--weights", str(path), "--imgsz", str(IMGSZ), "--formats", "torchscript", "--name", "ucas",
                         "--store", str(store), "--build", str(root / "build"), "--conf", str(OPTS.conf),
                         "--max-det", str(OPTS.max_det), "--min-workers", "1", "--max-workers", "1",
                         "--batch-size", "2", "--max-batch-delay", "100"]) == 0
    ts = start_server(tmp_path_factory, store, models="ucas.mar", ready=("ucas",))
    yield ts, store
    ts.stop()


def test_the_archive_holds_the_checkpoints_facts(ucas_server):
    from polydet.backends import load_backend

    _, store = ucas_server
    with zipfile.ZipFile(store / "ucas.mar") as z:
        assert "ucas.torchscript" in z.namelist()
    info = load_backend(store.parent / "build" / "ucas-1.0" / "ucas.torchscript").info
    assert (info.names, info.imgsz, info.stride) == (["plane", "car"], IMGSZ, 32)


def test_served_answers_are_the_training_codes_own_output(ucas_server, checkpoint):
    ts, _ = ucas_server
    path, ema = checkpoint
    from polydet.backends.eager import EagerBackend
    from polydet.model import load_model

    # the checkpoint does not record its input size (v5.0): in-process at the archive's, as `--imgsz` gave
    model, info = load_model(path, imgsz=IMGSZ)
    local = Detector(EagerBackend(path, model=model, info=info), options=OPTS)
    # the eager checkpoint in-process gives the training code's raw head output (fp32 rounding)
    x = torch.rand(1, 3, 256, 256)
    np.testing.assert_allclose(local.backend(x).numpy(), reference(ema, x).numpy(), atol=2e-3, rtol=1e-4)
    bodies = [encode(page_image(w=w, h=h, seed=k)) for k, (w, h) in enumerate(((1280, 960), (600, 900)))]
    want = [r.to_dict() for r in local.detect(bodies)]
    assert sum(len(w["detections"]) for w in want) > 0
    for body, w in zip(bodies, want):
        r = requests.post(f"{ts.inference_url}/predictions/ucas", data=body, timeout=120,
                          headers={"Content-Type": "application/octet-stream", **auth(ts.tokens.inference)})
        assert r.status_code == 200, r.text
        assert_same_result(r.json(), w, px=0.05, score=1e-3)
        assert {d["class_name"] for d in r.json()["detections"]} <= {"plane", "car"}
