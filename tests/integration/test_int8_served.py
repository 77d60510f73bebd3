"""The INT8 archive served by a real TorchServe (issue 12 item 6): `polydet quantize` writes the INT8 ONNX,
`polydet archive --formats int8 --int8 PATH` (archive.sh passes the same options) puts exactly that file in
polydet_int8.mar; REST and gRPC answers equal the in-process answer of the same artifact and stay close to the
fp32 ONNX's; bad inputs are answered 400 each while their batch neighbours succeed; the worker survives.

Tolerance against fp32 (measured on 24 synthetic validation scenes, bundled weights, default recipe: worst
corner 3.3 % of the image's long side, worst score 0.025, no confident detection lost): every fp32 detection
scoring >= 0.5 has an INT8 detection of the same class whose corners are within 5 % of the long side (11 px
in the 224 px letterbox) and whose score is within 0.1.
"""

from __future__ import annotations

import base64
import json
import zipfile

import numpy as np
import pytest
import requests
from conftest import start_server
from serving_helpers import (
    BUNDLED_WEIGHTS,
    assert_contract,
    assert_same_result,
    auth,
    encode,
    post_together,
    send_together,
)

from polydet.cli import main as cli_main
from polydet.pipeline import DetectOptions, Detector
from polydet.serving.archive import main as archive_main
from polydet.serving.service import METRICS

pytestmark = pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason=f"needs the bundled weights {BUNDLED_WEIGHTS}: "
                                "a random model's INT8 answers say nothing about accuracy")
pytest.importorskip("onnxslim", reason="INT8 export needs the optimize extra: pip install 'polydet[optimize]'")

MODEL = "polydet_int8"
OPTS = DetectOptions(conf=0.25, max_det=20)
CONFIDENT, PX_FRACTION, SCORE = 0.5, 0.05, 0.1  # the fp32 tolerance of the module doc
OCTET = {"Content-Type": "application/octet-stream"}


def scenes(n: int = 8) -> list[bytes]:
    """Synthetic validation scenes (seed 999, the model card's validation seed), JPEG-encoded, mixed sizes."""
    from polydet.data.synth import render_sample

    return [encode(render_sample(np.random.default_rng([999, i]))[0]) for i in range(n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`polydet quantize` -> q_int8.onnx; `polydet archive --formats "onnx int8" --int8 q_int8.onnx`."""
    root = tmp_path_factory.mktemp("int8_served")
    q = root / "q_int8.onnx"
    assert cli_main(["quantize", "--weights", str(BUNDLED_WEIGHTS), "--out", str(q)]) == 0
    store, build = root / "store", root / "build"
    assert archive_main(["--formats", "onnx int8", "--int8", str(q), "--weights", str(BUNDLED_WEIGHTS),
                         "--store", str(store), "--build", str(build), "--conf", str(OPTS.conf), "--max-det",
                         str(OPTS.max_det), "--max-batch-delay", "200", "--batch-size", "4", "--min-workers", "1",
                         "--max-workers", "1"]) == 0
    fp32 = build / "polydet-1.0" / "polydet.onnx"
    return {"store": store, "int8": q, "fp32": fp32, "root": root}


@pytest.fixture(scope="module")
def server(tmp_path_factory, built):
    ts = start_server(tmp_path_factory, built["store"], models=f"{MODEL}.mar", ready=(MODEL,))
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def local(built):
    """In-process detectors with the archive's thresholds: the same INT8 artifact, and fp32 ONNX."""
    return {k: Detector.from_artifact(built[k], options=OPTS) for k in ("int8", "fp32")}


def assert_close_to_fp32(got: dict, fp32: dict) -> None:
    side = max(fp32["width"], fp32["height"])
    for d in (d for d in fp32["detections"] if d["score"] >= CONFIDENT):
        same = [e for e in got["detections"] if e["class_id"] == d["class_id"]]
        assert same, f"fp32 {d['class_name']} {d['score']:.2f} has no INT8 detection of its class"
        px = [np.abs(np.array(e["polygon"]) - np.array(d["polygon"])).max() for e in same]
        best = same[int(np.argmin(px))]
        assert min(px) <= PX_FRACTION * side, (min(px), side)
        assert abs(best["score"] - d["score"]) <= SCORE, (best["score"], d["score"])


def test_the_archive_holds_the_quantize_output(built, tmp_path):
    with zipfile.ZipFile(built["store"] / f"{MODEL}.mar") as z:
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        assert manifest["model"]["modelName"] == MODEL
        assert z.read(manifest["model"]["serializedFile"]) == built["int8"].read_bytes()
    refused = archive_main(["--formats", "int8", "--int8", str(built["fp32"]), "--store", str(tmp_path / "s"),
                            "--build", str(tmp_path / "b")])
    assert refused == 2 and not (tmp_path / "s" / f"{MODEL}.mar").exists()  # an fp32 ONNX is not INT8
    assert archive_main(["--formats", "onnx", "--int8", str(built["int8"]), "--store", str(tmp_path / "s")]) == 2


def test_without_int8_the_archiver_quantizes_with_the_quantize_defaults(tmp_path):
    """`--formats int8` alone: the bundled weights quantized here, recipe = `polydet quantize`'s defaults."""
    import onnx

    from polydet.export.int8 import QuantConfig, cpu_has_vnni

    store, build = tmp_path / "s", tmp_path / "b"
    assert archive_main(["--formats", "int8", "--weights", str(BUNDLED_WEIGHTS), "--store", str(store),
                         "--build", str(build)]) == 0
    (onnx_file,) = (build / "polydet-1.0").glob("*.onnx")
    with zipfile.ZipFile(store / f"{MODEL}.mar") as z:
        assert z.read(onnx_file.name) == onnx_file.read_bytes()
    recipe = json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}["polydet.int8"])
    assert recipe == QuantConfig().recipe(not cpu_has_vnni())


def test_rest_answers_match_in_process_int8_and_stay_close_to_fp32(server, local):
    bodies = scenes()
    want = [r.to_dict() for r in local["int8"].detect(bodies)]
    ref = [r.to_dict() for r in local["fp32"].detect(bodies)]
    assert sum(d["score"] >= CONFIDENT for r in ref for d in r["detections"]) >= 8  # the check has rows to check
    got = []
    for i in range(0, len(bodies), 4):
        got += post_together(f"{server.inference_url}/predictions/{MODEL}", server.tokens.inference, bodies[i:i + 4])
    for r, w, f in zip(got, want, ref):
        assert r.status_code == 200, r.text
        assert_contract(r.json(), w["width"], w["height"])
        assert_same_result(r.json(), w)
        assert_close_to_fp32(r.json(), f)


def test_grpc_answers_match_in_process_int8_and_stay_close_to_fp32(server, local):
    from polydet.serving.client import ClientError, GrpcClient

    bodies = scenes(4)
    with GrpcClient(server.grpc_inference_target, tokens=server.tokens) as client:
        got = [client.predict(b, model=MODEL) for b in bodies]
        with pytest.raises(ClientError) as e:
            client.predict(b"not an image", model=MODEL)
    assert e.value.status == 400
    for g, w, f in zip(got, local["int8"].detect(bodies), local["fp32"].detect(bodies)):
        assert_same_result(g, w.to_dict())
        assert_close_to_fp32(g, f.to_dict())


def _batch_gauge(server) -> float | None:
    for line in requests.get(f"{server.metrics_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(METRICS["batch"] + "{") and f'ModelName="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def _worker(server) -> dict:
    r = requests.get(f"{server.management_url}/models/{MODEL}", headers=auth(server.tokens.management), timeout=10)
    (worker,) = r.json()[0]["workers"]
    return worker


def test_bad_inputs_get_400_each_while_their_batch_neighbours_succeed(server, local):
    """4 concurrent requests (batchSize 4, maxBatchDelay 200 ms) share one batch; only the bad ones fail."""
    good = scenes(1)[0]
    want = local["int8"].detect([good])[0].to_dict()
    url = f"{server.inference_url}/predictions/{MODEL}"
    cases = [({"headers": OCTET, "data": good}, 200), ({"headers": OCTET, "data": b"garbage"}, 400),
             ({"json": {"image": base64.b64encode(good).decode()}}, 200),
             ({"json": {"image": base64.b64encode(good).decode(), "conf": -1}}, 400)]
    before = _worker(server)
    for _ in range(3):  # on a loaded machine the 4 requests may straddle two batches: try again
        results = send_together(url, server.tokens.inference, [kw for kw, _ in cases], timeout=60)
        for r, (_, code) in zip(results, cases):
            assert r.status_code == code, r.text
            if code == 200:
                assert_same_result(r.json(), want)
            else:
                assert set(r.json()) == {"error", "code"} and r.json()["code"] == 400 and r.json()["error"]
        if _batch_gauge(server) == len(cases):
            break
    else:
        pytest.fail("the 4 concurrent requests never shared one batch (PolydetBatchSize gauge)")
    after = _worker(server)
    assert after["pid"] == before["pid"] and after["status"] == "READY"
