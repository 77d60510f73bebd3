"""Artifacts as users export them, archived with `polydet archive --artifact` and served by a real TorchServe:
a batch-1 static ONNX (the seed's export.py without --dynamic) and a TorchScript whose forward returns a
tuple. Concurrent requests of mixed image sizes all get the in-process answer of the same artifact; the
static ONNX's archive advertises the batch it can take (batchSize 1), the TorchScript's keeps batching."""

from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pytest
import yaml
from artifact_helpers import seed_onnx, tuple_torchscript
from conftest import ARCHIVE_ENV, start_server
from serving_helpers import assert_same_result, encode, page_image, post_together

from polydet.pipeline import DetectOptions, Detector
from polydet.serving.archive import main as archive_main

OPTS = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))
SIZES = ((360, 480), (640, 200), (224, 224), (90, 160))


@pytest.fixture(scope="module")
def user_store(tmp_path_factory):
    """static_b1.mar and tuple_ts.mar, exported from the bundled weights (random ones where absent)."""
    from polydet import assets
    from polydet.export import load_or_build

    root = tmp_path_factory.mktemp("user_artifacts")
    bundled = assets.path(assets.WEIGHTS)
    model, info = load_or_build(str(bundled) if bundled.is_file() else "random")
    model = model.eval()
    onnx_path = seed_onnx(model, root / "static_b1.onnx", info.imgsz)
    tuple_path = tuple_torchscript(model, info, root / "tuple_ts.torchscript")
    store = root / "store"
    common = ["--store", str(store), "--build", str(root / "build"), "--conf", str(OPTS.conf),
              "--max-det", str(OPTS.max_det), "--max-batch-delay", "200", "--min-workers", "1", "--max-workers", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the seed-style ONNX carries no polydet metadata
        assert archive_main(["--artifact", str(onnx_path), "--name", "static_b1", *common]) == 0
        assert archive_main(["--artifact", str(tuple_path), "--name", "tuple_ts", "--batch-size", "4", *common]) == 0
    return store, {"static_b1": onnx_path, "tuple_ts": tuple_path}


def _batch_size(mar) -> int:
    with zipfile.ZipFile(mar) as z:
        return yaml.safe_load(z.read("model-config.yaml"))["batchSize"]


@pytest.fixture(scope="module")
def user_server(tmp_path_factory, user_store):
    store, _ = user_store
    ts = start_server(tmp_path_factory, store, models="static_b1.mar,tuple_ts.mar", ready=("static_b1", "tuple_ts"))
    yield ts
    ts.stop()


def test_the_archives_advertise_what_the_artifacts_take(user_store):
    store, _ = user_store
    assert _batch_size(store / "static_b1.mar") == 1  # capped from the default 4: the graph takes batch 1
    assert _batch_size(store / "tuple_ts.mar") == 4


@pytest.mark.parametrize("name", ["static_b1", "tuple_ts"])
def test_mixed_sizes_sent_together_get_the_in_process_answer(user_server, user_store, name):
    _, paths = user_store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = Detector.from_artifact(paths[name], options=OPTS)
    bodies = [encode(page_image(w=w, h=h)) for h, w in SIZES]
    want = [r.to_dict() for r in local.detect(bodies)]
    assert sum(len(w["detections"]) for w in want) > 0
    got = post_together(f"{user_server.inference_url}/predictions/{name}", user_server.tokens.inference, bodies)
    for r, w in zip(got, want):
        assert r.status_code == 200, r.text
        assert_same_result(r.json(), w)
    assert np.array_equal([g.json()["width"] for g in got], [w for _, w in SIZES])
