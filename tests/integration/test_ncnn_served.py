"""An NCNN model archived by `polydet archive --formats ncnn` (its .bin and metadata travel inside the
.mar) and served by a real TorchServe answers like the same model in-process."""

from __future__ import annotations

import zipfile

import pytest
import requests
from conftest import ARCHIVE_ENV, start_server
from serving_helpers import assert_same_result, auth, encode, page_image

pytest.importorskip("ncnn", reason="ncnn is not installed (pip install 'polydet[ncnn]')")
pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'polydet[ncnn]')")

from polydet.pipeline import DetectOptions, Detector  # noqa: E402
from polydet.serving.archive import main as archive_main  # noqa: E402

OPTS = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))


@pytest.fixture(scope="module")
def ncnn_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ncnn_served")
    store = root / "store"
    assert archive_main(["--formats", "ncnn", "--store", str(store), "--build", str(root / "build"),
                         "--conf", str(OPTS.conf), "--max-det", str(OPTS.max_det), "--min-workers", "1",
                         "--max-workers", "1", "--max-batch-delay", "100"]) == 0
    ts = start_server(tmp_path_factory, store, models="polydet_ncnn.mar", ready=("polydet_ncnn",))
    yield ts, store, root
    ts.stop()


def test_the_archive_carries_the_model_its_weights_and_metadata(ncnn_server):
    _, store, _ = ncnn_server
    names = set(zipfile.ZipFile(store / "polydet_ncnn.mar").namelist())
    assert {"polydet.ncnn.param", "polydet.ncnn.bin", "polydet.ncnn.json"} <= names


def test_served_answers_equal_in_process(ncnn_server):
    ts, _, root = ncnn_server
    (artifact,) = (root / "build" / "polydet-1.0").glob("*.ncnn.param")
    local = Detector.from_artifact(artifact, options=OPTS)
    for w, h in ((480, 360), (300, 700)):
        body = encode(page_image(w=w, h=h))
        r = requests.post(f"{ts.inference_url}/predictions/polydet_ncnn", data=body, timeout=120,
                          headers={"Content-Type": "application/octet-stream", **auth(ts.tokens.inference)})
        assert r.status_code == 200, r.text
        assert_same_result(r.json(), local.detect([body])[0].to_dict())
