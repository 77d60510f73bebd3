"""Multi-image requests against a real TorchServe 0.12.0, REST and gRPC: every image's answer equals the
same image sent alone, a bad image's error sits in its place, the limits are 413s with a JSON reason, and
the worker survives it all.

The module's own archive (the session's TorchScript artifact, the test archives' batching and thresholds)
sets small limits: handler.max_images_per_request 4 and max_request_bytes 600,000.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import requests
import yaml
from conftest import ARCHIVER, start_server
from serving_helpers import REPO, assert_contract, assert_same_result, auth, encode, page_image

from polydet.serving.service import METRICS

MODEL = "polydet_multi"
MAX_IMAGES, MAX_BYTES = 4, 600_000
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifact):
    store = tmp_path_factory.mktemp("multi_store")
    config = yaml.safe_load((artifact.parent / "model-config.yaml").read_text())
    config["handler"].update(max_images_per_request=MAX_IMAGES, max_request_bytes=MAX_BYTES)
    cfg = store.parent / "multi-model-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    subprocess.run([str(ARCHIVER), "--model-name", MODEL, "--version", "1.0", "--serialized-file", str(artifact),
                    "--handler", str(REPO / "handlers" / "polydet_handler.py"), "--config-file", str(cfg),
                    "--export-path", str(store)], check=True)
    ts = start_server(tmp_path_factory, store, models=f"{MODEL}.mar", ready=(MODEL,))
    print(f"\nTorchServe pid {ts.pid}: {MODEL} READY {ts.ready_seconds:.1f} s after start", file=sys.stderr)
    yield ts
    ts.stop()


def _worker(server) -> dict:
    r = requests.get(f"{server.management_url}/models/{MODEL}", headers=auth(server.tokens.management), timeout=10)
    (worker,) = r.json()[0]["workers"]
    return worker


@pytest.fixture(scope="module")
def first_worker(server) -> dict:
    w = _worker(server)
    assert w["status"] == "READY"
    return w


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Four pages of different sizes and scenes (each well under the byte limit)."""
    out = [encode(page_image(w, h, seed)) for seed, (w, h) in enumerate([(480, 360), (300, 420), (640, 480),
                                                                          (200, 150)])]
    assert sum(map(len, out)) < MAX_BYTES
    return out


def post(server, **kw) -> requests.Response:
    return requests.post(f"{server.inference_url}/predictions/{MODEL}", headers={
        **auth(server.tokens.inference), **kw.pop("headers", {})}, timeout=60, **kw)


@pytest.fixture(scope="module")
def alone(server, images, first_worker) -> list[dict]:
    """The oracle: each image as a single-image request (raw body), answered as the bare contract."""
    out = []
    for img in images:
        r = post(server, data=img, headers=OCTET)
        assert r.status_code == 200, r.text
        out.append(r.json())
    assert all(o["detections"] for o in out), "the test archives' conf lets the demo model detect something"
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_results(results: list, want: list[dict]) -> None:
    assert len(results) == len(want)
    for got, w in zip(results, want):
        if "error" in w:
            assert set(got) == {"error", "code"} and got["code"] == w["code"] and w["error"] in got["error"], got
        else:
            assert_contract(got, w["width"], w["height"])
            assert_same_result(got, w)


def test_rest_json_and_multipart_answer_each_image_as_if_alone(server, images, alone):
    from polydet.serving.client import RestClient

    r = post(server, json={"images": [b64(i) for i in images]})
    assert r.status_code == 200 and set(r.json()) == {"results"}
    assert_results(r.json()["results"], alone)
    # multipart: the fields' natural order (image10 would come after image2), not the order sent
    files = [(f"image{k}", (f"{k}.jpg", images[k], "image/jpeg")) for k in (2, 0, 3, 1)]
    r = post(server, files=files)
    assert r.status_code == 200
    assert_results(r.json()["results"], alone)
    client = RestClient(server.inference_url, tokens=server.tokens)
    for mode in ("json", "multipart"):
        assert_results(client.predict_many(images, MODEL, mode=mode), alone)
        # one image in one form field is a single-image request: the client lists its bare answer
        assert_results(client.predict_many(images[3:], MODEL, mode=mode), alone[3:])


def test_grpc_json_and_input_keys_answer_each_image_as_if_alone(server, images, alone):
    from polydet.serving.client import GrpcClient

    with GrpcClient(server.grpc_inference_target, tokens=server.tokens) as client:
        for mode in ("json", "keys"):
            assert_results(client.predict_many(images, MODEL, mode=mode), alone)
            assert_results(client.predict_many(images[3:], MODEL, mode=mode), alone[3:])
        want = [{**a, "detections": a["detections"][:1]} for a in alone]  # options apply to every image
        assert_results(client.predict_many(images, MODEL, options={"max_det": 1}), want)


def test_a_bad_image_in_the_middle_gets_its_error_in_place(server, images, alone):
    from polydet.serving.client import GrpcClient

    bad = {"error": "cannot decode image", "code": 400}
    r = post(server, json={"images": [b64(images[0]), b64(b"garbage"), "%%not base64", b64(images[1])]})
    assert r.status_code == 200
    assert_results(r.json()["results"], [alone[0], bad, {"error": '"images"[2] is not valid base64', "code": 400},
                                         alone[1]])
    r = post(server, files=[("a", ("a.jpg", images[2])), ("b", ("b.jpg", images[0][:200])), ("c", ("c.jpg", images[3]))])
    assert r.status_code == 200
    assert_results(r.json()["results"], [alone[2], {"error": "JPEG", "code": 400}, alone[3]])
    with GrpcClient(server.grpc_inference_target, tokens=server.tokens) as client:
        assert_results(client.predict_many([images[1], b"garbage", images[2]], MODEL, mode="keys"),
                       [alone[1], bad, alone[2]])


def test_every_image_failing_answers_the_first_status_with_the_results(server):
    r = post(server, files=[("x", ("x.jpg", b"garbage")), ("y", ("y.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"))])
    assert r.status_code == 400, r.text
    body = r.json()
    assert [x["code"] for x in body["results"]] == [400, 415]
    assert body["code"] == 400 and body["error"] == f"all 2 images failed; the first: {body['results'][0]['error']}"


def test_over_the_limits_is_a_413_with_a_json_reason(server, images):
    from polydet.serving.client import ClientError, GrpcClient

    five = images + images[:1]
    r = post(server, json={"images": [b64(i) for i in five]})
    assert r.status_code == 413 and r.json() == {
        "error": "5 images in one request; this server takes at most 4 (handler.max_images_per_request)", "code": 413}
    r = post(server, files=[(f"f{k}", (f"{k}.jpg", img)) for k, img in enumerate(five)])
    assert r.status_code == 413 and r.json()["error"].startswith("5 images in one request")
    noise = encode(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert MAX_BYTES / 2 < len(noise) < MAX_BYTES  # two of these are over the limit, one is not
    r = post(server, json={"images": [b64(noise), b64(noise)]})
    assert r.status_code == 413 and r.json() == {
        "error": f"the request's images total {2 * len(noise)} bytes; this server takes at most {MAX_BYTES} per "
                 "request (handler.max_request_bytes)", "code": 413}
    assert post(server, json={"images": [b64(noise)]}).status_code == 200
    with GrpcClient(server.grpc_inference_target, tokens=server.tokens) as client:
        for mode in ("json", "keys"):
            with pytest.raises(ClientError) as e:
                client.predict_many(five, MODEL, mode=mode)
            assert e.value.status == 413 and e.value.message.startswith("5 images in one request")


def test_multipart_fields_of_one_name_keep_only_the_last(server, images, alone):
    """TorchServe 0.12.0 hands the handler a dict of the form's fields: the last of a name wins, so the
    request is a single image (documented in README: give each file its own field name)."""
    r = post(server, files=[("file", ("a.jpg", images[0])), ("file", ("b.jpg", images[1]))])
    assert r.status_code == 200
    assert_same_result(r.json(), alone[1])


def test_multi_image_requests_batch_with_others_and_the_gauge_counts_images(server, images, alone):
    """A 3-image request alone: PolydetBatchSize 3. Then a 3-image and a single request sent together
    (maxBatchDelay 200 ms) share a batch of 4 images, each answered as alone."""
    r = post(server, json={"images": [b64(i) for i in images[:3]]})
    assert r.status_code == 200 and _gauge(server, METRICS["batch"]) == 3
    for _ in range(3):  # on a loaded machine the two may straddle two batches: try again
        got = [None, None]
        barrier = threading.Barrier(2)

        def send(i):
            barrier.wait()
            got[i] = (post(server, files=[(f"i{k}", (f"{k}.jpg", images[k])) for k in range(3)]) if i == 0 else
                      post(server, data=images[3], headers=OCTET))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got[0].status_code == got[1].status_code == 200
        assert_results(got[0].json()["results"], alone[:3])
        assert_same_result(got[1].json(), alone[3])
        if _gauge(server, METRICS["batch"]) == 4:
            break
    else:
        pytest.fail("the two requests never shared one batch (PolydetBatchSize gauge)")


def test_client_cli_sends_several_images_per_request(server, images, alone, tmp_path, capsys):
    from polydet.serving.commands import client_main

    paths = []
    for k, img in enumerate([images[0], b"garbage", images[1]]):
        paths.append(tmp_path / f"{k}.jpg")
        paths[-1].write_bytes(img)
    token = ["--token-file", str(server.key_file), "--model", MODEL, "--per-request", "2"]
    for argv in (["rest", *map(str, paths), "--url", server.inference_url, *token],
                 ["rest", *map(str, paths), "--url", server.inference_url, "--mode", "multipart", *token],
                 ["grpc", *map(str, paths), "--target", server.grpc_inference_target, *token],
                 ["grpc", *map(str, paths), "--target", server.grpc_inference_target, "--keys", *token]):
        assert client_main(argv) == 1  # one image failed
        out, err = capsys.readouterr()
        lines = [json.loads(x) for x in out.splitlines()]
        assert [x.pop("image") for x in lines] == [str(paths[0]), str(paths[2])], (argv, err)
        assert_results(lines, [alone[0], alone[1]])
        assert err.startswith(f"{paths[1]}: 400: cannot decode image"), err


@pytest.mark.parametrize("user,per_request", [("RestUser", 3), ("GrpcUser", 3), ("RestUser", 5)])
def test_the_locustfile_sends_several_images_per_request(server, tmp_path, user, per_request):
    """locust with POLYDET_IMAGES_PER_REQUEST: 3 (under the limit of 4) all succeed; 5 all fail with the 413."""
    import os

    from polydet.bench.serve import locust_step

    env = {"POLYDET_KEY_FILE": str(server.key_file), "POLYDET_GRPC_TARGET": server.grpc_inference_target,
           "POLYDET_MODEL": MODEL, "POLYDET_SIZES": "320,480", "POLYDET_IMAGES_PER_REQUEST": str(per_request),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    row = locust_step(2, 4, tmp_path, user, env, server.inference_url)
    assert row["requests"] + row["failures"] >= 3 and row["images_per_request"] == per_request, row
    if per_request <= MAX_IMAGES:
        assert row["failures"] == 0, row["failure_reasons"]
        assert row["img_per_s"] == pytest.approx(per_request * row["req_per_s"])
    else:
        assert row["requests"] == row["failures"] and "HTTP 413" in row["failure_reasons"], row


def test_the_worker_survived(server, first_worker):
    after = _worker(server)
    assert after["pid"] == first_worker["pid"] and after["status"] == "READY"


def _gauge(server, name: str) -> float | None:
    for line in requests.get(f"{server.metrics_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and f'ModelName="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None
