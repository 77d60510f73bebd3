"""Security of the shipped configuration on a real TorchServe: loopback-only listeners, a private key file,
token rotation, the 0.12.0 workflow hole closed, and what tokens do not cover.

Already in tests/integration (not repeated here): missing/wrong/other-kind tokens refused on every
inference and management call over REST and gRPC, model URLs outside the store (http, file://, absolute and
relative paths) refused over REST and gRPC.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import stat
import zipfile

import grpc
import psutil
import pytest
import requests
from bad_inputs import OCTET, jpeg, page
from reliability_helpers import start_server
from serving_helpers import REPO, auth

from polydet.serving import grpc_stubs
from polydet.serving.server import Tokens, read_properties

INVALID_KEY = "InvalidKeyException"


def make_war(path, model_url: str = "polydet.mar", name: str = "wf") -> None:
    """A minimal valid workflow archive: one model from the store behind a pass-through function."""
    manifest = {"createdOn": "01/01/2026 00:00:00", "archiverVersion": "0.2.15",
                "workflow": {"workflowName": name, "specFile": "spec.yaml", "handler": "wf_handler.py"}}
    spec = (f"models:\n  min-workers: 1\n  max-workers: 1\n  batch-size: 1\n  m1:\n    url: {model_url}\n"
            "dag:\n  pre_processing: [m1]\n")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("spec.yaml", spec)
        z.writestr("wf_handler.py", "def pre_processing(data, context):\n    return data\n")


@pytest.fixture(scope="module")
def sec_store(store, tmp_path_factory):
    """The test store plus a valid workflow archive, wf.war, as a hostile or careless operator might leave it."""
    d = tmp_path_factory.mktemp("sec_store")
    shutil.copy(store / "polydet.mar", d / "polydet.mar")
    make_war(d / "wf.war")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory, sec_store):
    ts = start_server(tmp_path_factory, sec_store)
    yield ts
    ts.stop()


def mgmt(ts, method: str, path: str, key: str | None, **kw) -> requests.Response:
    return requests.request(method, f"{ts.management_url}{path}", headers=auth(key) if key else {}, timeout=30, **kw)


def predict(ts, key: str | None) -> requests.Response:
    return requests.post(f"{ts.inference_url}/predictions/polydet", data=jpeg(page()), timeout=60,
                         headers={**OCTET, **(auth(key) if key else {})})


def refused(r: requests.Response) -> bool:
    """TorchServe refuses a bad token with HTTP 400 InvalidKeyException (not 401)."""
    return r.status_code == 400 and r.json()["type"] == INVALID_KEY


def _ipv4(ip: str) -> str:
    """Java listens on IPv6 sockets: 127.0.0.1 shows up as the IPv4-mapped ::ffff:127.0.0.1."""
    addr = ipaddress.ip_address(ip)
    return str(getattr(addr, "ipv4_mapped", None) or addr)


def test_every_listener_is_on_loopback(server):
    java = psutil.Process(server.pid)
    listening = {(_ipv4(c.laddr.ip), c.laddr.port) for c in java.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    p = server.ports
    assert listening == {("127.0.0.1", port) for port in (p.inference, p.management, p.metrics, p.grpc_inference,
                                                         p.grpc_management)}
    for child in java.children(recursive=True):  # workers talk to the frontend over Unix sockets only
        assert [c for c in child.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN] == []


def test_the_key_file_is_private(server):
    assert stat.S_IMODE(server.key_file.stat().st_mode) == 0o600
    keys = json.loads(server.key_file.read_text())
    assert set(keys) == {"inference", "management", "API"}


def test_the_shipped_config_keeps_security_on():
    props = read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert props["allowed_urls"] == "^$"
    assert props["workflow_store"].startswith("/dev/null/")


def test_token_rotation_with_the_api_key(server):
    """POST /token?type=... with the API key replaces that key (key_file.json is rewritten, still 600); the old
    key stops working at once over REST and gRPC; the new one works; only the API key may rotate."""
    old = server.tokens
    pb = grpc_stubs.load()
    for key in (None, "wrong", old.management, old.inference):
        assert refused(mgmt(server, "POST", "/token", key, params={"type": "management"}))
    assert mgmt(server, "POST", "/token", old.api, params={"type": "nonsense"}).status_code == 400
    try:
        r = mgmt(server, "POST", "/token", old.api, params={"type": "management"})
        assert r.status_code == 200, r.text
        new = Tokens.read(server.key_file)
        assert new.management != old.management and (new.inference, new.api) == (old.inference, old.api)
        assert stat.S_IMODE(server.key_file.stat().st_mode) == 0o600
        assert refused(mgmt(server, "GET", "/models", old.management))
        assert mgmt(server, "GET", "/models", new.management).status_code == 200
        with grpc.insecure_channel(server.grpc_management_target) as ch:
            stub = pb.management_pb2_grpc.ManagementAPIsServiceStub(ch)
            req = pb.management_pb2.ListModelsRequest(limit=10)
            with pytest.raises(grpc.RpcError) as e:
                stub.ListModels(req, metadata=(("authorization", f"Bearer {old.management}"),), timeout=30)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            listed = json.loads(stub.ListModels(req, metadata=(("authorization", f"Bearer {new.management}"),),
                                                timeout=30).msg)
            assert [m["modelName"] for m in listed["models"]] == ["polydet"]

        assert mgmt(server, "POST", "/token", old.api, params={"type": "inference"}).status_code == 200
        newer = Tokens.read(server.key_file)
        assert newer.inference != old.inference and newer.management == new.management
        assert refused(predict(server, old.inference))
        assert predict(server, newer.inference).status_code == 200
        with grpc.insecure_channel(server.grpc_inference_target) as ch:
            stub = pb.inference_pb2_grpc.InferenceAPIsServiceStub(ch)
            req = pb.inference_pb2.PredictionsRequest(model_name="polydet", input={"data": jpeg(page())})
            with pytest.raises(grpc.RpcError) as e:
                stub.Predictions(req, metadata=(("authorization", f"Bearer {old.inference}"),), timeout=60)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            res = json.loads(stub.Predictions(req, metadata=(("authorization", f"Bearer {newer.inference}"),),
                                              timeout=60).prediction)
            assert (res["width"], res["height"]) == (480, 360)
    finally:
        server._tokens = None  # the fixture's cached keys are stale now: re-read key_file.json


# Refused twice over: the store guard (only the store's .mar files register; test_store_guard.py) answers
# first, and workflow_store (a path that cannot exist) would refuse what it let through.
WORKFLOW_URLS = ["wf.war",  # a valid archive in the model store
                 "polydet.mar", "/dev/null/polydet-serves-no-workflows/wf.war", "file://{store}/wf.war",
                 "http://127.0.0.1:9/wf.war", "../wf.war"]


def test_workflow_registration_is_refused(server, sec_store):
    """TorchServe 0.12.0 registers workflows regardless of enable_model_api; the store guard and the shipped
    workflow_store refuse every one, so no model is registered through them."""
    key = server.tokens.management
    for url in WORKFLOW_URLS:
        r = mgmt(server, "POST", "/workflows", key, params={"url": url.format(store=sec_store)})
        assert r.status_code == 404 and r.json()["type"] == "WorkflowNotFoundException", (url, r.text)
        assert r.json()["message"].startswith("polydet store guard: "), (url, r.text)
    assert mgmt(server, "GET", "/workflows", key).json() == {"workflows": []}
    assert [m["modelName"] for m in mgmt(server, "GET", "/models", key).json()["models"]] == ["polydet"]
    assert refused(mgmt(server, "POST", "/workflows", None, params={"url": "wf.war"}))


def test_without_the_settings_the_workflow_hole_is_open(tmp_path_factory, sec_store):
    """The control: without the store guard, with 0.12.0's default workflow store (the model store) and the
    model API OFF, POST /models is refused but POST /workflows registers wf.war's model anyway. This is
    what the shipped config closes (test above)."""
    ts = start_server(tmp_path_factory, sec_store, models="",
                      properties={"workflow_store": str(sec_store), "enable_model_api": "false"},
                      store_guard=False)
    try:
        key = ts.tokens.management
        r = mgmt(ts, "POST", "/models", key, params={"url": "polydet.mar"})
        assert r.status_code == 405, r.text  # the model API switch works for /models...
        r = mgmt(ts, "POST", "/workflows", key, params={"url": "wf.war"})
        assert r.status_code == 200, r.text  # ...but not for /workflows
        assert [m["modelName"] for m in mgmt(ts, "GET", "/models", key).json()["models"]] == ["wf__m1"]
    finally:
        ts.stop()


def test_management_apis_are_not_on_the_inference_or_metrics_port(server):
    for base, key in ((server.inference_url, server.tokens.inference), (server.inference_url, server.tokens.management),
                      (server.metrics_url, None)):
        for method, path in (("POST", "/models?url=polydet.mar"), ("GET", "/models"), ("POST", "/workflows?url=wf.war"),
                             ("POST", "/token?type=management")):
            r = requests.request(method, base + path, headers=auth(key) if key else {}, timeout=30)
            assert r.status_code in (400, 404), (base, path, r.status_code)
            assert r.json()["type"] in ("ResourceNotFoundException", INVALID_KEY), (base, path, r.text)


def test_what_tokens_do_not_protect(server):
    """Documented in SECURITY.md: the metrics port and the OpenAPI description answer without a token (so
    both stay on loopback). Neither leaks a key."""
    keys = json.loads(server.key_file.read_text())
    secrets = [keys["inference"]["key"], keys["management"]["key"], keys["API"]["key"]]
    metrics = requests.get(f"{server.metrics_url}/metrics", timeout=30)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text
    for base in (server.inference_url, server.management_url):
        for r in (requests.options(base + "/", timeout=30), requests.get(base + "/api-description", timeout=30)):
            assert r.status_code == 200 and r.json()["info"]["version"] == "0.12.0"
            assert not any(s in r.text for s in secrets)
    assert not any(s in metrics.text for s in secrets)
    assert refused(requests.get(f"{server.inference_url}/ping", timeout=30))  # /ping is not open
