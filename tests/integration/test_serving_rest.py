"""REST inference on a real TorchServe: request forms, per-request errors, batching, auth, metrics."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import zlib

import numpy as np
import pytest
import requests
from serving_helpers import (BUNDLED_WEIGHTS, assert_contract, assert_same_result, auth, encode, page_image,
                      png_bytes)

from polydet.serving.service import METRICS

OCTET = {"Content-Type": "application/octet-stream"}


def predict(server, headers=None, version="", **kw) -> requests.Response:
    url = f"{server.inference_url}/predictions/polydet" + (f"/{version}" if version else "")
    return requests.post(url, headers={**auth(server.tokens.inference), **(headers or {})}, timeout=60, **kw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_request_form_returns_the_contract_and_the_in_process_answer(server, jpeg, local):
    want = local.detect([jpeg])[0].to_dict()
    assert want["detections"], "test archives use a conf low enough for the demo model to detect something"
    forms = {
        "raw octet-stream": predict(server, OCTET, data=jpeg),
        "raw image/jpeg": predict(server, {"Content-Type": "image/jpeg"}, data=jpeg),
        "multipart": predict(server, files={"anything": ("page.jpg", jpeg, "image/jpeg")}),
        "json base64": predict(server, json={"image": b64(jpeg)}),
        "put": requests.put(f"{server.inference_url}/predictions/polydet", data=jpeg,
                            headers=auth(server.tokens.inference), timeout=60),
    }
    for name, r in forms.items():
        assert r.status_code == 200, (name, r.text)
        assert r.headers["content-type"].startswith("application/json"), name
        res = r.json()
        assert_contract(res, 480, 360)
        assert_same_result(res, want)


def test_png_of_another_size(server, local):
    img = page_image(w=300, h=520, seed=3)
    r = predict(server, OCTET, data=png_bytes(img[..., ::-1]))
    assert r.status_code == 200, r.text
    assert_contract(r.json(), 300, 520)
    assert_same_result(r.json(), local.detect([img])[0].to_dict())


def test_json_per_request_options(server, jpeg, local):
    for opts in ({"conf": 0.005, "max_det": 3}, {"conf": 0.9}, {"iou": 0.1, "agnostic": True, "multi_label": True}):
        r = predict(server, json={"image": b64(jpeg), **opts})
        assert r.status_code == 200, r.text
        want = local.detect([jpeg], local.options.replace(**opts))[0].to_dict()
        assert_same_result(r.json(), want)
    assert len(predict(server, json={"image": b64(jpeg), "max_det": 3}).json()["detections"]) == 3
    assert predict(server, json={"image": b64(jpeg), "conf": 0.9}).json()["detections"] == []


def test_dewarp_returns_the_rectified_crop_of_the_best_detection(server, jpeg, local):
    import cv2

    from shapely.geometry import Polygon

    from polydet.ops.warp import dewarp

    r = predict(server, json={"image": b64(jpeg), "dewarp": True})
    assert r.status_code == 200, r.text
    res = r.json()
    assert_contract(res, 480, 360, extra=("dewarp",))
    # The crop is of the best detection whose quad has an area; the random-weight demo model emits
    # only degenerate quads (all corners on one point), then there is nothing to rectify.
    areas = [Polygon(x["polygon"]).area for x in res["detections"]]
    d = res["dewarp"]
    if not any(a >= 1.0 for a in areas):
        assert d is None
        return
    assert set(d) == {"index", "width", "height", "jpeg_base64"}
    assert d["index"] == next(i for i, a in enumerate(areas) if a >= 1.0)
    crop = cv2.imdecode(np.frombuffer(base64.b64decode(d["jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (d["height"], d["width"], 3)
    want = dewarp(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), res["detections"][d["index"]]["polygon"])
    assert crop.shape == want.shape
    assert np.abs(crop.astype(int) - want.astype(int)).mean() < 3  # JPEG re-encoding only
    none = predict(server, json={"image": b64(jpeg), "dewarp": True, "conf": 1.0}).json()
    assert none["detections"] == [] and none["dewarp"] is None


def _png_declaring(w: int, h: int) -> bytes:
    """A tiny PNG whose header is patched to declare w x h pixels: must be refused before decoding."""
    data = bytearray(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    data[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR CRC
    return bytes(data)


BAD_REQUESTS = {
    "garbage bytes": (dict(headers=OCTET, data=b"this is not an image"), 400),
    "truncated jpeg": (dict(headers=OCTET, data=encode(page_image())[:300]), 400),
    "pdf": (dict(headers=OCTET, data=b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"), 415),
    "pixel bomb": (dict(headers=OCTET, data=_png_declaring(20000, 20000)), 413),
    "json without image": (dict(json={"conf": 0.5}), 400),
    "json bad base64": (dict(json={"image": "***not base64***"}), 400),
    "json unknown option": (dict(json={"image": "", "colour": "red"}), 400),
    "json conf out of range": (dict(json={"image": b64(b"x"), "conf": 2}), 400),
    "json dewarp not bool": (dict(json={"image": b64(b"x"), "dewarp": "yes"}), 400),
    "json array": (dict(json=[1, 2, 3]), 400),
    "json images not a list": (dict(json={"images": "abc"}), 400),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_own_4xx_and_json_body(server, name):
    kw, code = BAD_REQUESTS[name]
    r = predict(server, **kw)
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"error", "code"} and body["code"] == code and body["error"]


def _worker(server) -> dict:
    r = requests.get(f"{server.management_url}/models/polydet", headers=auth(server.tokens.management), timeout=10)
    (worker,) = r.json()[0]["workers"]
    return worker


def _gauge(server, name: str) -> float | None:
    for line in requests.get(f"{server.metrics_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and 'ModelName="polydet"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_batch_mixing_good_and_bad_requests(server, jpeg, local):
    """4 concurrent requests (batchSize 4, maxBatchDelay 200 ms) share one batch; only the bad ones fail."""
    before = _worker(server)
    want = local.detect([jpeg])[0].to_dict()
    cases = [(dict(headers=OCTET, data=jpeg), 200), (dict(headers=OCTET, data=b"garbage"), 400),
             (dict(json={"image": b64(jpeg)}), 200), (dict(json={"image": b64(jpeg), "conf": -1}), 400)]
    for attempt in range(3):  # on a loaded machine the 4 requests may straddle two batches: try again
        results = [None] * len(cases)
        barrier = threading.Barrier(len(cases))

        def send(i):
            barrier.wait()
            results[i] = predict(server, **cases[i][0])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r, (_, code) in zip(results, cases):
            assert r.status_code == code, r.text
            if code == 200:
                assert_same_result(r.json(), want)
            else:
                assert set(r.json()) == {"error", "code"} and r.json()["code"] == code
        if _gauge(server, METRICS["batch"]) == len(cases):
            break
    else:
        pytest.fail("the 4 concurrent requests never shared one batch (PolydetBatchSize gauge)")
    after = _worker(server)
    assert after["pid"] == before["pid"] and after["status"] == "READY"


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "management-key"])
def test_inference_refuses_a_missing_or_wrong_token(server, jpeg, header):
    if header == "management-key":
        header = f"Bearer {server.tokens.management}"
    h = {**OCTET, **({"Authorization": header} if header else {})}
    for r in (requests.post(f"{server.inference_url}/predictions/polydet", data=jpeg, headers=h, timeout=10),
              requests.get(f"{server.inference_url}/ping", headers=h, timeout=10)):
        assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException", r.text  # TorchServe: 400
    ok = requests.get(f"{server.inference_url}/ping", headers=auth(server.tokens.inference), timeout=10)
    assert ok.status_code == 200 and ok.json() == {"status": "Healthy"}


def test_client_cli_rest(server, jpeg, local, tmp_path, capsys):
    from polydet.serving.commands import client_main

    img = tmp_path / "page.jpg"
    img.write_bytes(jpeg)
    base = ["rest", str(img), "--url", server.inference_url, "--token-file", str(server.key_file)]
    assert client_main(base) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out.pop("image") == str(img)
    assert_same_result(out, local.detect([jpeg])[0].to_dict())
    assert client_main(base + ["--mode", "multipart"]) == 0
    assert_same_result(json.loads(capsys.readouterr().out), local.detect([jpeg])[0].to_dict())
    assert client_main(base + ["--conf", "0.9"]) == 0
    assert json.loads(capsys.readouterr().out)["detections"] == []
    assert client_main(base + ["--dewarp", str(tmp_path / "crops")]) == 0
    out = json.loads(capsys.readouterr().out)
    if out["dewarp"] is not None:  # None with the demo model (see the dewarp test)
        assert (tmp_path / "crops" / "page_dewarp.jpg").read_bytes()[:2] == b"\xff\xd8"
        assert out["dewarp"]["file"] == str(tmp_path / "crops" / "page_dewarp.jpg")
    assert client_main(["rest", str(img), "--url", server.inference_url, "--token-file", "none"]) == 1
    assert "400: Token Authorization failed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def traffic(server, jpeg):
    """Good and bad requests, so that every custom metric has a value."""
    assert predict(server, OCTET, data=jpeg).status_code == 200
    assert predict(server, OCTET, data=b"bad").status_code == 400
    assert predict(server, json={"image": b64(jpeg), "dewarp": True}).status_code == 200


def test_metrics_endpoint_has_torchserve_and_custom_metrics(server, traffic):
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text  # no token on the metrics port
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    total = [v for k, v in values.items() if k.startswith("ts_inference_requests_total{") and 'model_name="polydet"' in k]
    assert total and total[0] >= 3
    for name in METRICS.values():
        series = [v for k, v in values.items() if k.startswith(name + "{") and 'ModelName="polydet"' in k]
        assert series, f"{name} missing from /metrics"
        assert series[0] > 0, f"{name} = {series[0]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_a_custom_metric(server, traffic, tmp_path):
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("Prometheus is not installed (Debian: apt-get install -y prometheus; `make test` tries it)")
    port = _free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: polydet\n"
                   f"    static_configs:\n      - targets: ['127.0.0.1:{server.ports.metrics}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        query = f'{METRICS["inference"]}{{ModelName="polydet"}}'
        deadline, result = time.monotonic() + 60, []
        while time.monotonic() < deadline and not result:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5)
                result = r.json()["data"]["result"] if r.ok else []
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert result, f"Prometheus never returned {query}"
        assert result[0]["metric"]["job"] == "polydet"
        assert float(result[0]["value"][1]) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_known_image_with_the_bundled_model(server):
    """Correct polygons on synthetic images whose answer is known (needs the trained weights)."""
    if not BUNDLED_WEIGHTS.exists():
        pytest.skip(f"{BUNDLED_WEIGHTS.relative_to(BUNDLED_WEIGHTS.parents[1])} is not there: the served model "
                    "is the random-weight demo, whose polygons mean nothing")
    synth = pytest.importorskip("polydet.data.synth", reason="polydet.data.synth (the known-answer generator) "
                                "is not available")
    shapely = pytest.importorskip("shapely.geometry")

    rng = np.random.default_rng(12345)
    matched = total = 0
    for _ in range(8):
        img, labels = synth.render_sample(rng, synth.SynthConfig())
        r = predict(server, json={"image": b64(encode(img, ".png")), "conf": 0.25})
        assert r.status_code == 200, r.text
        res = r.json()
        assert_contract(res, img.shape[1], img.shape[0])
        for lab in labels:
            total += 1
            gt = shapely.Polygon(lab[1:].reshape(4, 2))
            ious = [gt.intersection(shapely.Polygon(d["polygon"])).area / gt.union(shapely.Polygon(d["polygon"])).area
                    for d in res["detections"] if d["class_id"] == int(lab[0])]
            matched += bool(ious) and max(ious) >= 0.5
    assert total > 0 and matched / total >= 0.8, f"{matched}/{total} objects found at IoU >= 0.5"
