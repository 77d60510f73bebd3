"""The store guard on a real TorchServe: nothing but the store's own .mar files can be registered.

TorchServe 0.12.0 registers a ``url`` that names a directory (absolute, or relative to its start
folder) as an exploded model, and follows a store entry that is a symbolic link, whatever
``allowed_urls`` says; the directory's handler then runs in a worker. Each hostile model here has a
handler that writes a marker file when it is imported: the guard must refuse the registration over REST
and gRPC *and* the marker must never appear. The control test starts the same config without the agent
and shows the hole (the marker is written), so these tests can fail.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from reliability_helpers import start_server

from polydet.serving.client import ClientError, GrpcClient, RestClient

GUARD = "polydet store guard"


def hostile_model(folder: Path, marker: Path) -> Path:
    """An exploded model (MAR-INF/MANIFEST.json + a handler) whose handler writes ``marker`` on import."""
    (folder / "MAR-INF").mkdir(parents=True)
    manifest = {"createdOn": "01/01/2026 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
                "model": {"modelName": "intruder", "handler": "intruder.py", "modelVersion": "1.0"}}
    (folder / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    (folder / "intruder.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "def handle(data, context):\n    return ['owned'] * len(data or [])\n")
    return folder


@pytest.fixture(scope="module")
def guard_store(store, tmp_path_factory):
    """The test store plus entries that link out: a link to a directory, a .mar link to a directory, and a
    .mar link to a valid archive outside the store."""
    d = tmp_path_factory.mktemp("guard_store")
    shutil.copy(store / "polydet.mar", d / "polydet.mar")
    outside = tmp_path_factory.mktemp("guard_outside")
    shutil.copy(store / "polydet_v2.mar", outside / "v2_outside.mar")
    return d, outside


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    return tmp_path_factory.mktemp("guard_markers")


def cases(ts, store: Path, outside: Path, markers: Path) -> dict[str, Path]:
    """{url to register: the marker its handler would write}, built for the server ``ts``."""
    out = {}
    absolute = hostile_model(outside / "abs_dir", markers / "abs")
    out[str(absolute)] = markers / "abs"
    out[str(absolute) + "/"] = markers / "abs"
    # TorchServe resolves a relative url against its start folder (the JVM's working directory)
    hostile_model(ts.run_dir / "rel_dir" / "inner", markers / "rel")
    out["rel_dir/inner"] = markers / "rel"
    link_dir = hostile_model(outside / "link_target", markers / "link")
    (store / "linked").symlink_to(link_dir, target_is_directory=True)
    out["linked"] = markers / "link"
    (store / "linked_dir.mar").symlink_to(link_dir, target_is_directory=True)
    out["linked_dir.mar"] = markers / "link"
    (store / "linked_file.mar").symlink_to(outside / "v2_outside.mar")
    out["linked_file.mar"] = markers / "none"  # a valid archive, but through a link out of the store
    return out


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, guard_store, markers):
    store, outside = guard_store
    ts = start_server(tmp_path_factory, store)
    try:
        yield ts, cases(ts, store, outside, markers)
    finally:
        ts.stop()


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_nothing_outside_the_store_is_registered_or_run(guarded, markers, transport):
    ts, urls = guarded
    rest = RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens)
    with GrpcClient(ts.grpc_inference_target, ts.grpc_management_target, tokens=ts.tokens) as grpc_client:
        client = rest if transport == "rest" else grpc_client
        for url in urls:
            with pytest.raises(ClientError) as e:
                client.register(url, model_name="intruder")
            assert e.value.status in (404, "NOT_FOUND") and GUARD in e.value.message, (url, e.value)
            assert len(e.value.message) < 400, e.value.message  # the url is quoted, not echoed whole
    time.sleep(1.0)  # a worker would have imported the handler by now (READY takes ~3 s, import first)
    assert sorted(p.name for p in markers.iterdir()) == []
    assert [m["modelName"] for m in rest.list()["models"]] == ["polydet"]


def test_store_archives_still_register_by_name(guarded):
    ts, _ = guarded
    rest = RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens)
    assert "registered" in rest.register("polydet.mar", model_name="again", initial_workers=1)["status"]
    assert "unregistered" in rest.unregister("again", "1.0")["status"]


def test_the_agent_is_on_the_frontends_command_line(guarded):
    import psutil

    ts, _ = guarded
    args = psutil.Process(ts.pid).cmdline()
    agents = [a for a in args if a.startswith("-javaagent:")]
    assert len(agents) == 1 and agents[0].endswith("polydet-store-guard.jar") and os.path.isabs(agents[0][11:])
    assert "polydet store guard: active" in (ts.log_dir / "torchserve.out").read_text()


def test_without_the_agent_a_directory_outside_the_store_runs_its_code(tmp_path_factory, guard_store):
    """The control: the same config minus the agent registers an absolute directory, and its handler runs."""
    store, _ = guard_store
    marker_dir = tmp_path_factory.mktemp("control_marker")
    folder = hostile_model(tmp_path_factory.mktemp("control") / "dir", marker_dir / "control")
    ts = start_server(tmp_path_factory, store, store_guard=False)
    try:
        rest = RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens)
        rest.register(str(folder), model_name="intruder", initial_workers=1)
        assert (marker_dir / "control").read_text() == "imported"
        assert "intruder" in [m["modelName"] for m in rest.list()["models"]]
    finally:
        ts.stop()
