"""The Triton front (polydet.fronts.triton) for real: tritonserver 2.51.0 through PyTriton 0.7.0 in its venv on
free loopback ports, queried with tritonclient 2.73.0 (HTTP binary and JSON modes, gRPC); answers checked
against the in-process DetectionService of the same artifact; Triton's dynamic batcher and metrics port;
stopped by PID with tritonserver gone. One server for the module.
"""

from __future__ import annotations

import base64
import json
import re
import threading

import numpy as np
import pytest
import requests

from fronts_helpers import (BATCHED_PX, BATCHED_SCORE, GIF, LOOPBACK, assert_same_as_oracle,  # noqa: F401
                            front_artifact, good_images, listening, oracle, start_front)

pytestmark = pytest.mark.slow
# A long batcher delay so that requests sent together share a Triton batch on a loaded 2-core machine.
QUEUE_DELAY_US = 300_000


@pytest.fixture(scope="module")
def front(tmp_path_factory, front_artifact):  # noqa: F811
    f = start_front("triton", tmp_path_factory, front_artifact,
                    ("--max-batch-size", "4", "--max-queue-delay-us", str(QUEUE_DELAY_US)))
    yield f
    f.stop()


def _infer(front, images, mode="http-binary", options=None):
    """One request: images [1,N] (Triton's batch axis in front), options [1,1]; the output tensors."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    from polydet.serving.oip import OUTPUT_NAMES

    binary = mode != "http-json"
    lib = tg if mode == "grpc" else th
    client = tg.InferenceServerClient(front.grpc_target) if mode == "grpc" else \
        th.InferenceServerClient(front.url.removeprefix("http://"))
    data = images if binary else [base64.b64encode(x) for x in images]  # JSON carries BYTES as text
    inputs = [lib.InferInput("images", [1, len(images)], "BYTES")]
    arrays = [np.array([data], dtype=object)]
    if options is not None:
        inputs.append(lib.InferInput("options", [1, 1], "BYTES"))
        arrays.append(np.array([[json.dumps(options).encode()]], dtype=object))
    for inp, a in zip(inputs, arrays):
        inp.set_data_from_numpy(a) if mode == "grpc" else inp.set_data_from_numpy(a, binary_data=binary)
    outputs = None if mode == "grpc" else [th.InferRequestedOutput(n, binary_data=binary) for n in OUTPUT_NAMES]
    r = client.infer("polydet", inputs, outputs=outputs)
    got = {n: r.as_numpy(n) for n in OUTPUT_NAMES}
    assert all(a.shape[0] == 1 for a in got.values())  # one batch item per request
    return got


def _metric(front, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{front.metrics_port}/metrics", timeout=10).text
    return float(re.search(rf'^{name}{{model="polydet",version="1"}} (\S+)$', text, re.MULTILINE).group(1))


def test_binds_loopback_only_and_serves_the_layout_with_a_batch_axis(front):
    import psutil
    import tritonclient.http as th

    from polydet.serving import oip

    procs = [front.pid, *(p.pid for p in psutil.Process(front.pid).children(recursive=True))]
    assert "tritonserver" in [psutil.Process(p).name() for p in procs]
    ips = listening(procs)
    assert {front.http_port, front.grpc_port, front.metrics_port} <= {p for _, p in ips}
    assert {ip for ip, _ in ips} <= LOOPBACK
    meta = th.InferenceServerClient(front.url.removeprefix("http://")).get_model_metadata("polydet")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == \
        [(t.name, t.datatype, [-1, *t.shape]) for t in oip.OUTPUTS]
    assert [t["name"] for t in meta["inputs"]] == ["images", "options"]


@pytest.mark.parametrize("mode", ["http-binary", "http-json", "grpc"])
def test_detections_equal_in_process_with_a_bad_image_in_place(front, oracle, mode):  # noqa: F811
    images = good_images()
    batch = [images[0], b"not an image", images[1], GIF, images[2]]
    want, _ = oracle.detect_images(batch)
    got = _infer(front, batch, mode)
    assert got["status"].tolist() == [[200, 400, 200, 415, 200]]
    assert_same_as_oracle(got, want)


def test_options_apply_and_bad_options_are_errors_in_place(front, oracle):  # noqa: F811
    images = good_images()[:2]
    want, _ = oracle.detect_images(images, {"max_det": 1})
    got = _infer(front, images, options={"max_det": 1})
    assert got["counts"].tolist() == [[1, 1]]
    assert_same_as_oracle(got, want)
    got = _infer(front, images, options={"conf": 2})
    assert got["status"].tolist() == [[400, 400]] and got["polygons"].shape == (1, 0, 4, 2)
    assert all("conf" in json.loads(t)["error"] for t in got["results"].reshape(-1))


def test_a_single_bad_image_is_its_error_in_place_and_the_server_answers_after(front, oracle):  # noqa: F811
    """PyTriton 0.7.0 can only fail a whole Triton batch, with a 500 and a traceback: the Triton front answers
    an all-bad request with its statuses in place (README, polydet/fronts/triton.py)."""
    for mode in ("http-binary", "grpc"):
        for bad, status in ((b"not an image", 400), (GIF, 415)):
            reason = oracle.detect_images([bad])[0][0].reason
            got = _infer(front, [bad], mode)
            assert got["status"].tolist() == [[status]] and got["counts"].tolist() == [[0]]
            assert json.loads(got["results"].reshape(-1)[0]) == {"error": reason, "code": status}
    assert front.proc.poll() is None
    assert_same_as_oracle(_infer(front, good_images()[:1], "grpc"), oracle.detect_images(good_images()[:1])[0])


def test_a_request_over_the_image_limit_is_413_in_place(front, oracle):  # noqa: F811
    n = oracle.config.max_images_per_request + 1
    got = _infer(front, [b"x"] * n, "grpc")
    assert got["status"].tolist() == [[413] * n] and got["counts"].tolist() == [[0] * n]
    assert json.loads(got["results"].reshape(-1)[0])["error"].startswith(f"{n} images in one request")


def test_requests_sent_together_share_a_triton_batch(front, oracle):  # noqa: F811
    """Triton's own counters: 4 requests (one of them bad) sent at once run in fewer executions than requests,
    and each is answered with its own results."""
    images = [*good_images(), b"not an image"]
    count, execs = _metric(front, "nv_inference_count"), _metric(front, "nv_inference_exec_count")
    got: list = [None] * len(images)
    barrier = threading.Barrier(len(images))

    def send(i):
        barrier.wait()
        got[i] = _infer(front, [images[i]])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _metric(front, "nv_inference_count") - count == len(images)
    assert _metric(front, "nv_inference_exec_count") - execs < len(images)
    for image, answer in zip(images, got):
        assert_same_as_oracle(answer, oracle.detect_images([image])[0], BATCHED_PX, BATCHED_SCORE)


def test_stop_by_pid_ends_python_and_tritonserver(front):
    import psutil

    procs = [psutil.Process(front.pid), *psutil.Process(front.pid).children(recursive=True)]
    assert "tritonserver" in [p.name() for p in procs]
    stopped = front.stop()
    assert front.pid in stopped
    assert not [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{front.url}/v2/health/ready", timeout=5)
