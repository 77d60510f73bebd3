"""NCNN and MNN models archived by `polydet archive --formats FORMAT` (the files each needs travel inside the
.mar) and served by a real TorchServe answer like the same model in-process."""

from __future__ import annotations

import importlib.util
import zipfile

import pytest
import requests
from conftest import ARCHIVE_ENV, start_server
from serving_helpers import assert_same_result, auth, encode, page_image

from polydet.pipeline import DetectOptions, Detector
from polydet.serving.archive import main as archive_main

OPTS = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))
# format -> (the runtime modules it needs, the artifact and the files that travel with it)
RUNTIMES = {"ncnn": (("ncnn", "pnnx"), ("polydet.ncnn.param", "polydet.ncnn.bin", "polydet.ncnn.json")),
            "mnn": (("MNN",), ("polydet.mnn", "polydet.json"))}


@pytest.fixture(scope="module", params=list(RUNTIMES))
def served(request, tmp_path_factory):
    fmt = request.param
    missing = [m for m in RUNTIMES[fmt][0] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install 'polydet[{fmt}]')")
    root = tmp_path_factory.mktemp(f"{fmt}_served")
    store = root / "store"
    assert archive_main(["--formats", fmt, "--store", str(store), "--build", str(root / "build"),
                         "--conf", str(OPTS.conf), "--max-det", str(OPTS.max_det), "--min-workers", "1",
                         "--max-workers", "1", "--max-batch-delay", "100"]) == 0
    name = f"polydet_{fmt}"
    ts = start_server(tmp_path_factory, store, models=f"{name}.mar", ready=(name,))
    yield fmt, ts, store, root / "build" / "polydet-1.0" / RUNTIMES[fmt][1][0]
    ts.stop()


def test_the_archive_carries_the_model_and_its_companions(served):
    fmt, _, store, _ = served
    assert set(RUNTIMES[fmt][1]) <= set(zipfile.ZipFile(store / f"polydet_{fmt}.mar").namelist())


def test_served_answers_equal_in_process(served):
    fmt, ts, _, artifact = served
    local = Detector.from_artifact(artifact, options=OPTS)
    for w, h in ((480, 360), (300, 700)):
        body = encode(page_image(w=w, h=h))
        r = requests.post(f"{ts.inference_url}/predictions/polydet_{fmt}", data=body, timeout=120,
                          headers={"Content-Type": "application/octet-stream", **auth(ts.tokens.inference)})
        assert r.status_code == 200, r.text
        assert_same_result(r.json(), local.detect([body])[0].to_dict())
