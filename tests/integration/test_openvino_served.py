"""The OpenVINO format served by a real TorchServe (issue 13.1/13.7): `polydet archive --formats openvino` puts the
IR's .xml and its .bin in one .mar; concurrent requests of mixed sizes get the in-process answer of the same IR."""

from __future__ import annotations

import importlib.util
import zipfile

import pytest
from conftest import ARCHIVE_ENV, start_server
from serving_helpers import assert_same_result, encode, page_image, post_together

from polydet.pipeline import DetectOptions, Detector
from polydet.serving.archive import main as archive_main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="openvino is not installed: pip install 'polydet[openvino]'")

OPTS = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))
SIZES = ((360, 480), (640, 200), (224, 224), (90, 160))


@pytest.fixture(scope="module")
def ov_store(tmp_path_factory):
    """polydet_openvino.mar from the bundled weights (random ones where absent), and the IR it holds."""
    root = tmp_path_factory.mktemp("openvino_served")
    store, build = root / "store", root / "build"
    assert archive_main(["--formats", "openvino", "--store", str(store), "--build", str(build), "--conf", str(OPTS.conf),
                         "--max-det", str(OPTS.max_det), "--max-batch-delay", "200", "--min-workers", "1",
                         "--max-workers", "1"]) == 0
    return store, next((build / "polydet-1.0").glob("*.xml"))


@pytest.fixture(scope="module")
def ov_server(tmp_path_factory, ov_store):
    ts = start_server(tmp_path_factory, ov_store[0], models="polydet_openvino.mar", ready=("polydet_openvino",))
    yield ts
    ts.stop()


def test_the_archive_carries_the_weights(ov_store):
    store, xml = ov_store
    with zipfile.ZipFile(store / "polydet_openvino.mar") as z:
        names = set(z.namelist())
        assert {xml.name, xml.with_suffix(".bin").name} <= names
        assert z.read(xml.with_suffix(".bin").name) == xml.with_suffix(".bin").read_bytes()


def test_mixed_sizes_sent_together_get_the_in_process_answer(ov_server, ov_store):
    local = Detector.from_artifact(ov_store[1], options=OPTS)
    bodies = [encode(page_image(w=w, h=h)) for h, w in SIZES]
    want = [r.to_dict() for r in local.detect(bodies)]
    assert sum(len(w["detections"]) for w in want) > 0
    got = post_together(f"{ov_server.inference_url}/predictions/polydet_openvino", ov_server.tokens.inference, bodies)
    for r, w, (h, wd) in zip(got, want, SIZES):
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (wd, h)
        assert_same_result(r.json(), w)
