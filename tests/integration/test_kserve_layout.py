"""`polydet kserve-layout`: a real TorchServe 0.12.0 started from the layout's own config (only its ports
moved to free ones, its /mnt/models paths pointed at the layout) answers KServe v2 requests through the
kservev2 envelope, without a token (KServe's wrapper sends none), as the artifact does in-process."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from serving_helpers import REPO, assert_contract, assert_same_result

from polydet.serving.properties import Ports, read_properties


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    from polydet.serving.server import missing_prerequisite

    if reason := missing_prerequisite():
        pytest.skip(reason)
    from polydet.cli import main

    out = tmp_path_factory.mktemp("kserve") / "storage"
    build = out.parent / "build"
    # --mount: the pod sees the folder at /mnt/models; here TorchServe sees it where it is
    assert main(["kserve-layout", str(out), "--formats", "torchscript", "--workers", "1", "--mount", str(out),
                 "--build", str(build)]) == 0
    return out


@pytest.fixture(scope="module")
def server(layout, tmp_path_factory):
    from polydet.serving.server import TorchServe

    p = Ports.free()
    moved = {"inference_address": f"http://127.0.0.1:{p.inference}", "management_address":
             f"http://127.0.0.1:{p.inference}", "metrics_address": f"http://127.0.0.1:{p.metrics}",
             "grpc_inference_port": str(p.grpc_inference), "grpc_management_port": str(p.grpc_management)}
    # store_guard=False: the layout runs without polydet's Java agent (its model API is off)
    ts = TorchServe(tmp_path_factory.mktemp("ts_kserve"), layout / "config" / "config.properties",
                    properties=moved, store_guard=False)
    ts.start()
    try:
        wait_ready(ts)
        yield ts
    finally:
        ts.stop()


def wait_ready(ts, timeout: float = 240.0) -> None:
    """What KServe's wrapper does: the management API's describe, without a token, until a worker is READY."""
    deadline = time.monotonic() + timeout
    while True:
        ts._check_alive()
        try:
            r = requests.get(f"{ts.management_url}/models/polydet", timeout=5)
            if r.ok and any(w["status"] == "READY" for w in r.json()[0]["workers"]):
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"polydet not READY from the layout{ts._log_tail()}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def local(layout):
    """The archive's artifact in-process with the archive's own thresholds."""
    from polydet.pipeline import Detector

    (artifact,) = (layout.parent / "build").glob("polydet-1.0/*.torchscript")
    return Detector.from_artifact(artifact)


def infer(server, image: bytes, options: dict | None = None, shape=(1,), rid="req-1") -> requests.Response:
    inputs = [{"name": "images", "shape": list(shape), "datatype": "BYTES", "data": [base64.b64encode(image).decode()]}]
    if options is not None:
        inputs.append({"name": "options", "shape": [1], "datatype": "BYTES", "data": [json.dumps(options)]})
    return requests.post(f"{server.inference_url}/v2/models/polydet/infer", json={"id": rid, "inputs": inputs},
                         timeout=60)


def only_output(r: requests.Response, rid="req-1") -> dict:
    body = r.json()
    assert (body["id"], body["model_name"], body["model_version"]) == (rid, "polydet", "1.0")
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("images", "BYTES", [1])
    return json.loads(out["data"][0])


def test_the_layout_is_what_kserve_s_torchserve_runtime_expects(layout):
    assert sorted(p.name for p in (layout / "model-store").iterdir()) == ["polydet.mar"]
    assert sorted(p.name for p in (layout / "config").iterdir()) == ["config.properties", "log4j2.xml", "metrics.yaml"]
    props = read_properties(layout / "config" / "config.properties")
    assert props["inference_address"] == props["management_address"] == "http://127.0.0.1:8085"
    assert (props["service_envelope"], props["disable_token_authorization"], props["enable_model_api"]) == \
           ("kservev2", "true", "false")
    assert props["model_store"] == f"{layout}/model-store"
    snap = json.loads(props["model_snapshot"])
    assert snap["models"] == {"polydet": {"1.0": {"defaultVersion": True, "marName": "polydet.mar", "minWorkers": 1,
                                                  "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 1,
                                                  "responseTimeout": 60}}}
    assert "enable_envvars_config" not in props
    default = read_properties(REPO / "config.properties")  # the same request limits as `polydet serve`
    assert [props[k] for k in ("max_request_size", "max_response_size", "decode_input_request")] == \
           [default[k] for k in ("max_request_size", "max_response_size", "decode_input_request")]


def test_a_kservev2_request_gets_the_detections(server, local):
    image = (REPO / "examples" / "sample_0.jpg").read_bytes()
    r = infer(server, image)
    assert r.status_code == 200, r.text
    got = only_output(r)
    want = local.detect([image])[0].to_dict()
    assert_same_result(got, want)
    assert_contract(got, want["width"], want["height"])
    assert got["detections"], "the sample photo has a page in it"


def test_options_and_errors_through_the_envelope(server, local):
    image = (REPO / "examples" / "sample_2.jpg").read_bytes()
    r = infer(server, image, {"max_det": 1, "conf": 0.3}, rid="opts")
    assert r.status_code == 200, r.text
    assert_same_result(only_output(r, "opts"), local.detect([image], local.options.replace(max_det=1, conf=0.3))[0]
                       .to_dict())
    bad = infer(server, b"not an image")
    assert bad.status_code == 400 and only_output(bad)["code"] == 400
    assert only_output(bad)["error"].startswith("cannot decode image")
    r = infer(server, image, {"conf": "high"})
    assert r.status_code == 400
    assert only_output(r) == {"error": "conf must be a number in [0, 1], got 'high'", "code": 400}
    two = infer(server, image, shape=(2,))
    assert two.status_code == 400 and "send one image per request" in only_output(two)["error"]
    assert infer(server, image).status_code == 200  # the worker is still there
