"""Management API on a real TorchServe: versions, scaling, default version, URL restriction, tokens."""

from __future__ import annotations

import json
import shutil

import pytest
import requests
from serving_helpers import assert_contract, assert_same_result, auth

from polydet.serving.client import ClientError, GrpcClient, RestClient


@pytest.fixture(scope="module")
def rest(server):
    return RestClient(server.inference_url, server.management_url, tokens=server.tokens)


@pytest.fixture(scope="module")
def grpc_client(server):
    with GrpcClient(server.grpc_inference_target, server.grpc_management_target, tokens=server.tokens) as c:
        yield c


def _versions(client) -> dict[str, list[dict]]:
    """{version: workers} of polydet, through the client's own describe (all versions)."""
    out = {}
    for v in ("1.0", "2.0"):
        try:
            (d,) = client.describe("polydet", v)
            out[v] = d["workers"]
        except ClientError as e:
            assert e.status in (404, "NOT_FOUND")
    return out


def _default_version(client) -> str:
    return client.describe("polydet")[0]["modelVersion"]


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_second_version_register_scale_set_default_unregister(server, rest, grpc_client, jpeg, local, transport):
    client = rest if transport == "rest" else grpc_client
    assert set(_versions(client)) == {"1.0"}
    # polydet_v2.mar holds version 2.0; registered under the existing model name it is a second version.
    assert "registered" in client.register("polydet_v2.mar", model_name="polydet", initial_workers=1)["status"]
    versions = _versions(client)
    assert set(versions) == {"1.0", "2.0"} and [w["status"] for w in versions["2.0"]] == ["READY"]
    res = rest.predict(jpeg, version="2.0")
    assert_contract(res, 480, 360)
    assert_same_result(res, local.detect([jpeg])[0].to_dict())

    client.scale("polydet", "2.0", min_worker=2, max_worker=2)  # synchronous: returns with the workers up
    assert sorted(w["status"] for w in _versions(client)["2.0"]) == ["READY", "READY"]
    client.scale("polydet", "2.0", min_worker=1, max_worker=1)
    assert len(_versions(client)["2.0"]) == 1

    assert _default_version(client) == "1.0"
    client.set_default("polydet", "2.0")
    assert _default_version(client) == "2.0"
    with pytest.raises(ClientError) as e:  # TorchServe refuses to remove the default version
        client.unregister("polydet", "2.0")
    if transport == "rest":
        assert e.value.status == 403 and "Cannot remove default version" in e.value.message
    else:  # TorchServe 0.12.0's gRPC answers this refusal with UNKNOWN and no details
        assert e.value.status == "UNKNOWN"
    assert set(_versions(client)) == {"1.0", "2.0"}
    client.set_default("polydet", "1.0")
    assert "unregistered" in client.unregister("polydet", "2.0")["status"]
    assert set(_versions(client)) == {"1.0"}
    assert_same_result(rest.predict(jpeg), local.detect([jpeg])[0].to_dict())  # 1.0 still serves


@pytest.fixture(scope="module")
def outside(model_store, tmp_path_factory):
    """A valid archive copied outside the model store."""
    d = tmp_path_factory.mktemp("outside")
    shutil.copy(model_store / "polydet_v2.mar", d / "elsewhere.mar")
    return d / "elsewhere.mar"


def test_urls_outside_the_model_store_are_refused(server, rest, grpc_client, outside, model_store):
    """Only bare names of the store's .mar files register: the store guard (tests/reliability/test_store_guard.py
    covers directories and links) answers before TorchServe's own checks, except for "..", refused first."""
    refused = {
        f"file://{outside}": "polydet store guard: only the file name of a .mar archive",
        str(outside): "polydet store guard: only the file name of a .mar archive",
        "http://127.0.0.1:9/elsewhere.mar": "polydet store guard: only the file name of a .mar archive",
        f"file://{model_store / 'polydet_v2.mar'}": "polydet store guard: only the file name",
        "elsewhere.mar": "polydet store guard: 'elsewhere.mar' is not a regular file in the model store",
        "../outside/elsewhere.mar": "Relative path is not allowed",
    }
    for url, why in refused.items():
        with pytest.raises(ClientError) as e:
            rest.register(url, model_name="intruder")
        assert e.value.status == 404 and why in e.value.message, (url, e.value)
        with pytest.raises(ClientError) as e:
            grpc_client.register(url, model_name="intruder")
        assert e.value.status == "NOT_FOUND" and why in e.value.message, (url, e.value)
    assert [m["modelName"] for m in rest.list()["models"]] == ["polydet"]


@pytest.mark.parametrize("token", [None, "wrong", "inference"])
def test_rest_management_refuses_a_missing_or_wrong_token(server, token):
    key = {"inference": server.tokens.inference}.get(token, token)
    h = auth(key) if key else {}
    m = server.management_url
    for r in (requests.get(f"{m}/models", headers=h, timeout=10),
              requests.get(f"{m}/models/polydet", headers=h, timeout=10),
              requests.post(f"{m}/models", params={"url": "polydet_v2.mar"}, headers=h, timeout=10),
              requests.put(f"{m}/models/polydet", params={"min_worker": 2}, headers=h, timeout=10),
              requests.delete(f"{m}/models/polydet/1.0", headers=h, timeout=10)):
        assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException", r.text  # TorchServe: 400
    assert requests.get(f"{m}/models", headers=auth(server.tokens.management), timeout=10).status_code == 200


def test_manage_cli_registers_the_onnx_archive_and_it_agrees_with_torchscript(server, rest, jpeg, local, capsys):
    from polydet.serving.commands import manage_main

    r = ["--url", server.management_url, "--token-file", str(server.key_file)]
    g = ["--grpc", "--target", server.grpc_management_target, "--token-file", str(server.key_file)]
    # --workers wins over the archive's minWorkers (1 here), which TorchServe itself lets override it
    assert manage_main(r + ["register", "polydet_onnx.mar", "--workers", "2"]) == 0
    assert "registered" in json.loads(capsys.readouterr().out)["status"]
    (d,) = rest.describe("polydet_onnx")
    assert (d["minWorkers"], d["maxWorkers"], len(d["workers"])) == (2, 2, 2)
    assert manage_main(r + ["scale", "polydet_onnx", "--min", "1", "--max", "1"]) == 0
    capsys.readouterr()
    assert manage_main(g + ["list"]) == 0
    assert sorted(m["modelName"] for m in json.loads(capsys.readouterr().out)["models"]) == ["polydet", "polydet_onnx"]
    assert manage_main(r + ["describe", "polydet_onnx"]) == 0
    (d,) = json.loads(capsys.readouterr().out)
    assert d["modelUrl"] == "polydet_onnx.mar" and [w["status"] for w in d["workers"]] == ["READY"]
    res = rest.predict(jpeg, model="polydet_onnx")
    assert_contract(res, 480, 360)
    assert_same_result(res, local.detect([jpeg])[0].to_dict(), px=0.05, score=1e-3)  # ONNX Runtime vs TorchScript
    assert manage_main(g + ["scale", "polydet_onnx", "--min", "1", "--max", "1"]) == 0
    assert manage_main(g + ["set-default", "polydet_onnx", "1.0"]) == 0
    assert manage_main(g + ["unregister", "polydet_onnx"]) == 0
    assert "unregistered" in capsys.readouterr().out
    assert manage_main(r + ["list"]) == 0
    assert [m["modelName"] for m in json.loads(capsys.readouterr().out)["models"]] == ["polydet"]
    assert manage_main(r[:2] + ["--token-file", "none", "list"]) == 1
    assert "400" in capsys.readouterr().err
