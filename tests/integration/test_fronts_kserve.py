"""The KServe front (polydet.fronts.kserve) for real: KServe 0.21.0 in its venv on free loopback ports, queried
with tritonclient 2.73.0 (HTTP binary and JSON modes, gRPC) and plain HTTP (v1, requests without an id);
answers checked against the in-process DetectionService of the same artifact. One server for the module.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests

from fronts_helpers import (GIF, LOOPBACK, assert_same_as_oracle, front_artifact, good_images, listening,  # noqa: F401
                            oracle, start_front)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def front(tmp_path_factory, front_artifact):  # noqa: F811
    f = start_front("kserve", tmp_path_factory, front_artifact)
    yield f
    f.stop()


def _http_infer(front, images, binary=True, options=None):
    import tritonclient.http as th

    client = th.InferenceServerClient(front.url.removeprefix("http://"))
    data = images if binary else [base64.b64encode(x) for x in images]  # JSON carries BYTES as text
    inp = th.InferInput("images", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    inputs = [inp]
    if options is not None:
        opt = th.InferInput("options", [1], "BYTES")
        opt.set_data_from_numpy(np.array([json.dumps(options).encode()], dtype=object), binary_data=binary)
        inputs.append(opt)
    from polydet.serving.oip import OUTPUT_NAMES

    r = client.infer("polydet", inputs, outputs=[th.InferRequestedOutput(n, binary_data=binary) for n in OUTPUT_NAMES])
    return {n: r.as_numpy(n) for n in OUTPUT_NAMES}


def _grpc_infer(front, images):
    import tritonclient.grpc as tg

    client = tg.InferenceServerClient(front.grpc_target)
    inp = tg.InferInput("images", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=object))
    r = client.infer("polydet", [inp])
    from polydet.serving.oip import OUTPUT_NAMES

    return {n: r.as_numpy(n) for n in OUTPUT_NAMES}


def test_binds_loopback_only_and_describes_the_layout(front):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    from polydet.serving import oip

    ips = listening([front.pid])
    assert {p for _, p in ips} == {front.http_port, front.grpc_port} and {ip for ip, _ in ips} <= LOOPBACK
    want = oip.model_metadata("polydet")
    meta = th.InferenceServerClient(front.url.removeprefix("http://")).get_model_metadata("polydet")
    assert (meta["inputs"], meta["outputs"]) == (want["inputs"], want["outputs"])
    gmeta = tg.InferenceServerClient(front.grpc_target).get_model_metadata("polydet", as_json=True)
    assert [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in gmeta["outputs"]] == \
        [(t["name"], t["datatype"], t["shape"]) for t in want["outputs"]]


@pytest.mark.parametrize("mode", ["http-binary", "http-json", "grpc"])
def test_detections_equal_in_process_with_a_bad_image_in_place(front, oracle, mode):  # noqa: F811
    images = good_images()
    batch = [images[0], b"not an image", images[1], GIF, images[2]]
    want, _ = oracle.detect_images(batch)
    assert [getattr(r, "status", 200) for r in want] == [200, 400, 200, 415, 200]
    got = _grpc_infer(front, batch) if mode == "grpc" else _http_infer(front, batch, binary=mode == "http-binary")
    assert got["status"].tolist() == [200, 400, 200, 415, 200]
    assert_same_as_oracle(got, want)


def test_options_apply_and_bad_options_are_a_400_with_the_reason(front, oracle):  # noqa: F811
    from tritonclient.utils import InferenceServerException

    images = good_images()[:2]
    want, _ = oracle.detect_images(images, {"max_det": 1})
    got = _http_infer(front, images, options={"max_det": 1})
    assert got["counts"].tolist() == [1, 1]
    assert_same_as_oracle(got, want)
    with pytest.raises(InferenceServerException) as e:
        _http_infer(front, images, options={"conf": 2})
    assert e.value.status() == "400" and "conf" in e.value.message()


def test_a_single_bad_image_is_its_4xx_with_the_reason_and_the_server_answers_after(front, oracle):  # noqa: F811
    from tritonclient.utils import InferenceServerException

    for bad, status, code in ((b"not an image", 400, "INVALID_ARGUMENT"), (GIF, 415, "FAILED_PRECONDITION")):
        reason = oracle.detect_images([bad])[0][0].reason
        with pytest.raises(InferenceServerException) as e:
            _http_infer(front, [bad])
        assert (e.value.status(), e.value.message()) == (str(status), reason)
        with pytest.raises(InferenceServerException) as e:
            _grpc_infer(front, [bad])
        assert (e.value.status(), e.value.message()) == (f"StatusCode.{code}", reason)
    assert front.proc.poll() is None
    assert_same_as_oracle(_grpc_infer(front, good_images()[:1]), oracle.detect_images(good_images()[:1])[0])


def test_requests_over_the_handler_limits_are_413s(front, oracle):  # noqa: F811
    """Over max_images_per_request, and over max_request_bytes (16 MiB: above KServe's own gRPC message limit
    of 8 MiB, which the front raises so that polydet answers)."""
    from tritonclient.utils import InferenceServerException

    n = oracle.config.max_images_per_request + 1
    half = oracle.config.max_request_bytes // 2 + 2**18  # two of them: 0.5 MiB over the limit
    for infer, status in ((_http_infer, "413"), (_grpc_infer, "StatusCode.RESOURCE_EXHAUSTED")):
        with pytest.raises(InferenceServerException) as e:
            infer(front, [b"x"] * n)
        assert e.value.status() == status and e.value.message().startswith(f"{n} images in one request")
        with pytest.raises(InferenceServerException) as e:
            infer(front, [b"x" * half] * 2)
        assert e.value.status() == status
        assert e.value.message().startswith(f"the request's images total {2 * half} bytes")


def test_ids_are_optional_and_echoed(front):
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(good_images()[0]).decode()]}]}
    url = f"{front.url}/v2/models/polydet/infer"
    r = requests.post(url, json=body, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["id"], str) and len(r.json()["id"]) == 36  # a uuid4
    r = requests.post(url, json={**body, "id": "req-7"}, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "req-7"


def test_malformed_tensors_are_400s_with_the_reason(front):
    url = f"{front.url}/v2/models/polydet/infer"
    for tensor, words in (({"shape": [2], "datatype": "BYTES", "data": ["eHg="]}, "input 'images' (BYTES [2])"),
                          ({"shape": [1], "datatype": "FP32", "data": [1.0]}, "input 'images' must be BYTES")):
        r = requests.post(url, json={"inputs": [{"name": "images", **tensor}]}, timeout=60)
        assert r.status_code == 400 and r.json()["error"].startswith(words), r.text
    r = requests.post(url, json={"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["eHg="]}]},
                      timeout=60)
    assert r.status_code == 400 and "unknown input(s) ['pixels']" in r.json()["error"]


def test_v1_predict_answers_the_rest_json(front, oracle):  # noqa: F811
    images = good_images()[:2]
    want, _ = oracle.detect_images([images[0], b"xx", images[1]])
    body = {"instances": [{"b64": base64.b64encode(images[0]).decode()}, base64.b64encode(b"xx").decode(),
                          base64.b64encode(images[1]).decode()]}
    r = requests.post(f"{front.url}/v1/models/polydet:predict", json=body, timeout=60)
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert len(got) == 3 and got[1] == want[1].to_dict() == {"error": want[1].reason, "code": 400}
    assert (got[0], got[2]) == (want[0].to_dict(), want[2].to_dict())
    r = requests.post(f"{front.url}/v1/models/polydet:predict", json={"instances": ["eHg="]}, timeout=60)
    assert (r.status_code, r.json()) == (400, {"error": want[1].reason})


def test_metrics_endpoint_counts_the_predictions(front):
    text = requests.get(f"{front.url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith('request_predict_seconds_count{model_name="polydet"}'))
    assert float(line.split()[-1]) >= 5


def test_stop_by_pid_ends_the_server(front):
    import psutil

    pid = front.pid
    front.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{front.url}/v2/health/ready", timeout=5)
