"""An MNN model archived by `polydet archive --formats mnn` (its metadata travels inside the .mar) and
served by a real TorchServe answers like the same model in-process."""

from __future__ import annotations

import zipfile

import pytest
import requests
from conftest import ARCHIVE_ENV, start_server
from serving_helpers import assert_same_result, auth, encode, page_image

pytest.importorskip("MNN", reason="MNN is not installed (pip install 'polydet[mnn]')")

from polydet.pipeline import DetectOptions, Detector  # noqa: E402
from polydet.serving.archive import main as archive_main  # noqa: E402

OPTS = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))


@pytest.fixture(scope="module")
def mnn_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnn_served")
    store = root / "store"
    assert archive_main(["--formats", "mnn", "--store", str(store), "--build", str(root / "build"),
                         "--conf", str(OPTS.conf), "--max-det", str(OPTS.max_det), "--min-workers", "1",
                         "--max-workers", "1", "--max-batch-delay", "100"]) == 0
    ts = start_server(tmp_path_factory, store, models="polydet_mnn.mar", ready=("polydet_mnn",))
    yield ts, store, root
    ts.stop()


def test_the_archive_carries_the_model_its_weights_and_metadata(mnn_server):
    _, store, _ = mnn_server
    names = set(zipfile.ZipFile(store / "polydet_mnn.mar").namelist())
    assert {"polydet.mnn", "polydet.json"} <= names


def test_served_answers_equal_in_process(mnn_server):
    ts, _, root = mnn_server
    (artifact,) = (root / "build" / "polydet-1.0").glob("*.mnn")
    local = Detector.from_artifact(artifact, options=OPTS)
    for w, h in ((480, 360), (300, 700)):
        body = encode(page_image(w=w, h=h))
        r = requests.post(f"{ts.inference_url}/predictions/polydet_mnn", data=body, timeout=120,
                          headers={"Content-Type": "application/octet-stream", **auth(ts.tokens.inference)})
        assert r.status_code == 200, r.text
        assert_same_result(r.json(), local.detect([body])[0].to_dict())
