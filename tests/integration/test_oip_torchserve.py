"""The Open Inference Protocol (gRPC) on a real TorchServe 0.12.0, with stubs generated here from the
open_inference_grpc.proto inside the installed TorchServe jar; the REST API on the same server and the
artifact run in-process are the oracles."""

from __future__ import annotations

import base64
import importlib
import io
import json
import sys
import threading
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from serving_helpers import REPO, assert_contract, assert_same_result, auth, encode, page_image

from polydet.serving import oip

PACKAGE = "org.pytorch.serve.grpc.openinference"


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """(messages, stubs) compiled now from the jar's open_inference_grpc.proto (nothing cached)."""
    import ts
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("oip_stubs")
    with zipfile.ZipFile(Path(ts.__file__).parent / "frontend" / "model-server.jar") as jar:
        (out / "open_inference_grpc.proto").write_bytes(jar.read("open_inference_grpc.proto"))
    assert protoc.main(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}",
                        str(out / "open_inference_grpc.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        return (importlib.import_module("open_inference_grpc_pb2"),
                importlib.import_module("open_inference_grpc_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def stub(server, pb):
    channel = grpc.insecure_channel(server.grpc_inference_target)
    yield pb[1].GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [(REPO / "examples" / "sample_1.jpg").read_bytes(), encode(page_image(480, 360, 0)),
            encode(page_image(320, 400, 3), ".png")]


def gif() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def md(server):
    return (("authorization", f"Bearer {server.tokens.inference}"),)


def infer_request(pb, items, options=None, rid="r1"):
    msg = pb[0]
    inputs = [msg.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[len(items)], contents=msg.InferTensorContents(bytes_contents=items))]
    if options is not None:
        inputs.append(msg.ModelInferRequest.InferInputTensor(
            name="options", datatype="BYTES", shape=[1],
            contents=msg.InferTensorContents(bytes_contents=[json.dumps(options).encode()])))
    return msg.ModelInferRequest(model_name="polydet", id=rid, inputs=inputs)


def outputs_of(res) -> dict:
    """Response tensors by name, as numpy arrays of their shapes (results: parsed JSON per image)."""
    out = {}
    for t in res.outputs:
        c = t.contents
        data = {"FP32": c.fp32_contents, "INT32": c.int_contents}.get(t.datatype)
        out[t.name] = ([json.loads(b) for b in c.bytes_contents] if t.datatype == "BYTES"
                       else np.array(data, oip.SPECS[t.name].dtype).reshape(tuple(t.shape)))
        assert (t.datatype, len(t.shape)) == (oip.SPECS[t.name].datatype, len(oip.SPECS[t.name].shape))
    assert list(out) == list(oip.OUTPUT_NAMES)
    return out


def rest(server, body: bytes, **options) -> requests.Response:
    url = f"{server.inference_url}/predictions/polydet"
    if options:
        return requests.post(url, json={"image": base64.b64encode(body).decode(), **options},
                             headers=auth(server.tokens.inference), timeout=60)
    return requests.post(url, data=body, timeout=60,
                         headers={"Content-Type": "application/octet-stream", **auth(server.tokens.inference)})


def worker_pid(server) -> int:
    r = requests.get(f"{server.management_url}/models/polydet", headers=auth(server.tokens.management), timeout=10)
    (worker,) = r.json()[0]["workers"]
    assert worker["status"] == "READY"
    return worker["pid"]


def test_the_jar_s_proto_declares_torchserve_s_own_package_so_standard_clients_miss_it(server, pb, stub):
    assert pb[0].DESCRIPTOR.package == PACKAGE
    assert stub.ServerReady(pb[0].ServerReadyRequest(), metadata=md(server)).ready is True
    # What tritonclient and every standard OIP client call: the same message, the standard service name.
    channel = grpc.insecure_channel(server.grpc_inference_target)
    standard = channel.unary_unary("/inference.GRPCInferenceService/ServerReady",
                                   request_serializer=pb[0].ServerReadyRequest.SerializeToString,
                                   response_deserializer=pb[0].ServerReadyResponse.FromString)
    with pytest.raises(grpc.RpcError) as e:
        standard(pb[0].ServerReadyRequest(), metadata=md(server))
    channel.close()
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_calls_work_with_the_inference_token_and_refuse_without(server, pb, stub):
    m = pb[0]
    assert stub.ServerLive(m.ServerLiveRequest(), metadata=md(server)).live is True
    assert stub.ServerReady(m.ServerReadyRequest(), metadata=md(server)).ready is True
    assert stub.ModelReady(m.ModelReadyRequest(name="polydet"), metadata=md(server)).ready is True
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelReady(m.ModelReadyRequest(name="nosuchmodel"), metadata=md(server))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    for metadata in (None, (("authorization", "Bearer wrong"),),
                     (("authorization", f"Bearer {server.tokens.management}"),)):
        for call, req in ((stub.ServerReady, m.ServerReadyRequest()), (stub.ModelReady, m.ModelReadyRequest(name="polydet")),
                          (stub.ModelInfer, infer_request(pb, [b"x"]))):
            with pytest.raises(grpc.RpcError) as e:
                call(req, metadata=metadata)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_model_metadata_is_the_frontend_s_and_the_truth_is_in_describe(server, pb, stub):
    """TorchServe answers ModelMetadata itself (no inputs, no outputs, platform ""); the handler's true
    metadata is what the management API's describe?customized=true returns."""
    res = stub.ModelMetadata(pb[0].ModelMetadataRequest(name="polydet"), metadata=md(server))
    assert (res.name, list(res.versions), res.platform, len(res.inputs), len(res.outputs)) == ("polydet", ["1.0"], "", 0, 0)
    r = requests.get(f"{server.management_url}/models/polydet?customized=true",
                     headers=auth(server.tokens.management), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()[0]["customizedMetadata"] == oip.model_metadata("polydet", ["1.0"])


def test_model_infer_gives_the_rest_api_s_detections(server, pb, stub, images, local):
    before = worker_pid(server)
    res = stub.ModelInfer(infer_request(pb, images, rid="batch-of-3"), metadata=md(server))
    assert (res.id, res.model_name, res.model_version) == ("batch-of-3", "polydet", "1.0")
    out = outputs_of(res)
    assert out["status"].tolist() == [200, 200, 200]
    ends = np.cumsum(out["counts"])
    assert out["polygons"].shape == (int(ends[-1]), 4, 2) and out["scores"].shape == out["class_ids"].shape
    for i, (img, got, part) in enumerate(zip(images, out["results"], oip.split_outputs(out))):
        want = rest(server, img)
        assert want.status_code == 200, want.text
        assert_same_result(got, want.json())                       # the JSON, within its rounding
        assert_same_result(got, local.detect([img])[0].to_dict())  # and the artifact run in-process
        assert_contract(got, got["width"], got["height"])
        assert len(part["scores"]) == len(got["detections"]) == out["counts"][i]
        if got["detections"]:  # the tensors say what the JSON says, unrounded
            np.testing.assert_allclose(part["polygons"], [d["polygon"] for d in got["detections"]], atol=0.006)
            np.testing.assert_allclose(part["scores"], [d["score"] for d in got["detections"]], atol=6e-6)
            assert part["class_ids"].tolist() == [d["class_id"] for d in got["detections"]]
    assert out["counts"].sum() > 0  # the sample photo has a page in it
    assert worker_pid(server) == before


def test_options_apply_as_in_a_rest_json_body(server, pb, stub, images):
    res = stub.ModelInfer(infer_request(pb, images[:2], {"max_det": 1, "conf": 0.3}), metadata=md(server))
    out = outputs_of(res)
    assert out["counts"].tolist() == [len(r["detections"]) for r in out["results"]]
    for img, got in zip(images[:2], out["results"]):
        want = rest(server, img, max_det=1, conf=0.3)
        assert want.status_code == 200, want.text
        assert_same_result(got, want.json())
        assert len(got["detections"]) <= 1 and all(d["score"] > 0.3 for d in got["detections"])


def test_a_bad_image_is_an_error_in_its_place_and_the_worker_survives(server, pb, stub, images):
    before = worker_pid(server)
    res = stub.ModelInfer(infer_request(pb, [images[0], b"not an image", images[1]]), metadata=md(server))
    out = outputs_of(res)
    assert out["status"].tolist() == [200, 400, 200] and out["counts"][1] == 0
    bad = rest(server, b"not an image")
    assert bad.status_code == 400 and out["results"][1] == bad.json()
    for i in (0, 2):
        assert_same_result(out["results"][i], rest(server, images[i // 2]).json())
    assert worker_pid(server) == before


@pytest.mark.parametrize("inputs, status, reason", [
    ({"options": {"conf": "high"}}, grpc.StatusCode.INVALID_ARGUMENT, "conf must be a number in [0, 1], got 'high'"),
    ({"options": {"nms": 1}}, grpc.StatusCode.INVALID_ARGUMENT, "unknown option(s) ['nms']"),
    ({"options": {"max_det": 301}}, grpc.StatusCode.INVALID_ARGUMENT, "max_det 301 is above this server's limit of 300"),
    ({"images": [b"x"] * 17}, grpc.StatusCode.RESOURCE_EXHAUSTED,
     "17 images in one request; this server takes at most 16 (handler.max_images_per_request)"),
    ({"images": [b"junk", b"also junk"]}, grpc.StatusCode.INVALID_ARGUMENT, "cannot decode image"),
    ({"images": [gif(), b"junk"]}, grpc.StatusCode.FAILED_PRECONDITION, "unsupported image format GIF"),  # the first's
    ({"images": []}, grpc.StatusCode.INVALID_ARGUMENT, "input 'images' is empty; send at least one image"),
])
def test_a_failed_request_is_a_grpc_error_with_the_reason_and_the_worker_survives(server, pb, stub, images,
                                                                                    inputs, status, reason):
    before = worker_pid(server)
    req = infer_request(pb, inputs.get("images", images[:1]), inputs.get("options"))
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, metadata=md(server))
    assert e.value.code() == status and reason in e.value.details(), e.value.details()
    assert worker_pid(server) == before


def test_inputs_the_layout_does_not_take_are_refused(server, pb, stub):
    m = pb[0]
    wrong = m.ModelInferRequest(model_name="polydet", inputs=[m.ModelInferRequest.InferInputTensor(
        name="images", datatype="FP32", shape=[2], contents=m.InferTensorContents(fp32_contents=[1, 2]))])
    raw = m.ModelInferRequest(model_name="polydet", inputs=[m.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1])], raw_input_contents=[b"\xff\xd8"])
    for req, reason in ((wrong, "input 'images' must be BYTES, got 'FP32'"),
                        (raw, "input 'images': shape [1] does not match its [] data")):
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, metadata=md(server))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in e.value.details()


def test_a_failed_request_batched_with_a_good_one_fails_alone(server, pb, stub, images):
    """TorchServe fails a gRPC request only by failing its whole batch: a bad request that shares a batch
    with a good one is answered in the OIP shape with its error in ``status``/``results`` instead."""
    before = worker_pid(server)
    reqs = [infer_request(pb, images[:1], {"conf": 2}), infer_request(pb, images[:1], rid="good")]
    got: list = [None, None]
    barrier = threading.Barrier(2)

    def send(i):
        barrier.wait()
        try:
            got[i] = stub.ModelInfer(reqs[i], metadata=md(server))
        except grpc.RpcError as e:
            got[i] = e

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    good = outputs_of(got[1])
    assert got[1].id == "good" and good["status"].tolist() == [200]
    assert_same_result(good["results"][0], rest(server, images[0]).json())
    reason = "conf must be a number in [0, 1], got 2"
    print(f"\nthe bad request {'had a batch of its own' if isinstance(got[0], grpc.RpcError) else 'shared a batch'}",
          file=sys.stderr)
    if isinstance(got[0], grpc.RpcError):  # it had a batch of its own
        assert got[0].code() == grpc.StatusCode.INVALID_ARGUMENT and reason in got[0].details()
    else:
        bad = outputs_of(got[0])
        assert bad["status"].tolist() == [400] and bad["results"] == [{"error": reason, "code": 400}]
    assert worker_pid(server) == before
