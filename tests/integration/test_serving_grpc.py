"""gRPC inference on a real TorchServe (stubs generated from the installed jar's protos)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest
from serving_helpers import assert_contract, assert_same_result

from polydet.serving import grpc_stubs
from polydet.serving.client import ClientError, GrpcClient


@pytest.fixture(scope="module")
def pb():
    return grpc_stubs.load()


@pytest.fixture(scope="module")
def channels(server):
    inf = grpc.insecure_channel(server.grpc_inference_target)
    mgmt = grpc.insecure_channel(server.grpc_management_target)
    yield inf, mgmt
    inf.close()
    mgmt.close()


def md(key):
    return (("authorization", f"Bearer {key}"),)


def test_stubs_come_from_the_installed_jar():
    from ts.version import __version__

    out = grpc_stubs.cache_dir()
    assert out.name == f"torchserve-{__version__}"
    assert (out / "inference_pb2_grpc.py").is_file() and (out / "proto" / "management.proto").is_file()


def test_stubs_are_generated_on_demand_into_an_empty_cache(tmp_path, monkeypatch):
    """A fresh machine's state, whatever this machine's own cache holds (a warm cache once hid this)."""
    import zipfile

    import ts

    cache = tmp_path / "cache"
    monkeypatch.setenv("POLYDET_CACHE", str(cache))
    out = grpc_stubs.cache_dir()
    assert out.parent == cache / "grpc"
    assert "class InferenceAPIsServiceStub" in (out / "inference_pb2_grpc.py").read_text()
    assert "class ManagementAPIsServiceStub" in (out / "management_pb2_grpc.py").read_text()
    with zipfile.ZipFile(Path(ts.__file__).parent / "frontend" / "model-server.jar") as jar:
        for name in grpc_stubs.PROTOS:
            assert (out / "proto" / name).read_bytes() == jar.read(name)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # the build folder renamed, none left


def test_ping(server, pb, channels):
    from google.protobuf import empty_pb2

    stub = pb.inference_pb2_grpc.InferenceAPIsServiceStub(channels[0])
    assert stub.Ping(empty_pb2.Empty(), metadata=md(server.tokens.inference)).health.strip() != ""
    assert GrpcClient(server.grpc_inference_target, tokens=server.tokens).ping() == {"status": "Healthy"}


@pytest.mark.parametrize("key", ["data", "any_single_key"])
def test_predictions_return_the_contract(server, pb, channels, jpeg, local, key):
    stub = pb.inference_pb2_grpc.InferenceAPIsServiceStub(channels[0])
    req = pb.inference_pb2.PredictionsRequest(model_name="polydet", input={key: jpeg})
    res = json.loads(stub.Predictions(req, metadata=md(server.tokens.inference)).prediction)
    assert_contract(res, 480, 360)
    assert_same_result(res, local.detect([jpeg])[0].to_dict())


def test_json_request_over_grpc_with_options_and_dewarp(server, jpeg, local):
    with GrpcClient(server.grpc_inference_target, tokens=server.tokens) as client:
        res = client.predict(jpeg, options={"max_det": 2}, dewarp=True)
    assert_contract(res, 480, 360, extra=("dewarp",))
    assert_same_result({k: res[k] for k in ("width", "height", "detections")},
                       local.detect([jpeg], local.options.replace(max_det=2))[0].to_dict())


def test_a_bad_image_is_answered_in_the_body(server, pb, channels):
    """TorchServe's gRPC ignores per-request statuses (returns OK), so the error travels in the body."""
    stub = pb.inference_pb2_grpc.InferenceAPIsServiceStub(channels[0])
    req = pb.inference_pb2.PredictionsRequest(model_name="polydet", input={"data": b"not an image"})
    body = json.loads(stub.Predictions(req, metadata=md(server.tokens.inference)).prediction)
    assert set(body) == {"error", "code"} and body["code"] == 400
    bad_json = json.dumps({"image": base64.b64encode(b"x").decode(), "conf": "high"}).encode()
    req = pb.inference_pb2.PredictionsRequest(model_name="polydet", input={"data": bad_json})
    assert json.loads(stub.Predictions(req, metadata=md(server.tokens.inference)).prediction)["code"] == 400
    with GrpcClient(server.grpc_inference_target, tokens=server.tokens) as client, \
            pytest.raises(ClientError) as e:
        client.predict(b"not an image")
    assert e.value.status == 400


@pytest.mark.parametrize("token", [None, "wrong", "management"])
def test_grpc_inference_refuses_a_missing_or_wrong_token(server, pb, channels, jpeg, token):
    from google.protobuf import empty_pb2

    key = {"management": server.tokens.management}.get(token, token)
    metadata = md(key) if key else None
    stub = pb.inference_pb2_grpc.InferenceAPIsServiceStub(channels[0])
    for call, req in ((stub.Predictions, pb.inference_pb2.PredictionsRequest(model_name="polydet",
                                                                              input={"data": jpeg})),
                      (stub.Ping, empty_pb2.Empty())):
        with pytest.raises(grpc.RpcError) as e:
            call(req, metadata=metadata)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("token", [None, "wrong", "inference"])
def test_grpc_management_refuses_a_missing_or_wrong_token(server, pb, channels, token):
    key = {"inference": server.tokens.inference}.get(token, token)
    metadata = md(key) if key else None
    stub = pb.management_pb2_grpc.ManagementAPIsServiceStub(channels[1])
    calls = ((stub.ListModels, pb.management_pb2.ListModelsRequest(limit=10)),
             (stub.DescribeModel, pb.management_pb2.DescribeModelRequest(model_name="polydet")),
             (stub.ScaleWorker, pb.management_pb2.ScaleWorkerRequest(model_name="polydet", min_worker=1)),
             (stub.RegisterModel, pb.management_pb2.RegisterModelRequest(url="polydet_v2.mar")))
    for call, req in calls:
        with pytest.raises(grpc.RpcError) as e:
            call(req, metadata=metadata)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, call


def test_client_cli_grpc(server, jpeg, local, tmp_path, capsys):
    from polydet.serving.commands import client_main

    img = tmp_path / "page.jpg"
    img.write_bytes(jpeg)
    argv = ["grpc", str(img), "--target", server.grpc_inference_target, "--token-file", str(server.key_file)]
    assert client_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out.pop("image") == str(img)
    assert_same_result(out, local.detect([jpeg])[0].to_dict())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert client_main(argv[:1] + [str(bad)] + argv[2:]) == 1
    assert "400: cannot decode image" in capsys.readouterr().err
