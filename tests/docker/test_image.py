"""Build the Dockerfile for real and serve a request from the image (slow); the entrypoint's and the
healthcheck's helpers on their own (fast).

No Docker daemon here and `podman run` is refused (setrlimit), so: Debian's buildah builds the image
(`buildah bud --isolation chroot`, scripts/build_image.sh --local: a debootstrapped bookworm base cached
in ~/.cache/polydet/docker, this host's pip CA bundle and CPU torch wheel folder mounted into the build),
and `buildah run --isolation chroot` runs the image's own ENTRYPOINT with the host's network, on free
loopback ports given through the entrypoint's environment. Skips, with the reason, only when buildah
cannot be installed (or the test is not root, which buildah's chroot isolation and apt-get need).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("POLYDET_DOCKER_CACHE", Path.home() / ".cache" / "polydet" / "docker"))
BASE = "localhost/polydet-base:bookworm"
JAVA_MAIN = "org.pytorch.serve.ModelServer"
PORT_ENV = ("POLYDET_INFERENCE_PORT", "POLYDET_MANAGEMENT_PORT", "POLYDET_METRICS_PORT",
            "POLYDET_GRPC_INFERENCE_PORT", "POLYDET_GRPC_MANAGEMENT_PORT")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _buildah_reason() -> str | None:
    """None when buildah and debootstrap are usable (installing them with apt if needed), else why not."""
    if os.geteuid() != 0:
        return "needs root: buildah --isolation chroot, debootstrap and apt-get run as root"
    missing = [tool for tool in ("buildah", "debootstrap") if not shutil.which(tool)]
    if not missing:
        return None
    if not shutil.which("apt-get"):
        return f"{' and '.join(missing)} missing and no apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "buildah", "debootstrap"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            return f"buildah could not be installed ({' '.join(cmd)} exit {r.returncode}): {_tail(r.stdout + r.stderr, 10)}"
    return None


def _buildah(*args: str, check: bool = True, timeout: float = 120) -> str:
    r = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"buildah {' '.join(args)} failed ({r.returncode}): {_tail(r.stderr)}")
    return r.stdout.strip()


# buildah's chroot runner re-executes itself from a sealed memfd copy; sealing fails with EBUSY now and then
# while another process briefly maps the copy (seen once in CI). It happens before the command starts,
# so a retry is safe; any other failure is the command's own and is reported as it is.
MEMFD_RACE = "sealing memfd copy"


def _run_argv(name: str, *cmd: str) -> list[str]:
    """The ``buildah run`` command line that runs cmd in container name (as its user, workdir, host network)."""
    return ["buildah", "run", "--isolation", "chroot", name, "--", *cmd]


def _run_in(name: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``buildah run`` of cmd in container name, retried (3 tries) only on buildah's memfd race."""
    for attempt in range(3):
        r = subprocess.run(_run_argv(name, *cmd), capture_output=True, text=True, timeout=timeout)
        if MEMFD_RACE not in r.stderr:
            break
        time.sleep(1 + attempt)
    return r


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # all bound at once so none is handed out twice
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """Tag of an image built from this checkout; removed afterwards (the cached base image is kept)."""
    reason = _buildah_reason()
    if reason:
        pytest.skip(reason)
    if os.environ.get("POLYDET_TEST_IMAGE"):  # iterate on the tests against an image built before
        yield os.environ["POLYDET_TEST_IMAGE"]
        return
    env = dict(os.environ, POLYDET_DOCKER_CACHE=str(CACHE))
    r = subprocess.run([str(REPO / "docker" / "make_base_image.sh"), BASE], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"base image: {_tail(r.stdout + r.stderr)}"
    tag = f"localhost/polydet-test:{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("image") / "build.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        r = subprocess.run([str(REPO / "scripts" / "build_image.sh"), "--local", "--base", BASE, "--tag", tag],
                           env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1500)
    seconds = time.monotonic() - t0
    try:
        assert r.returncode == 0, f"image build failed after {seconds:.0f} s:\n{_tail(log.read_text(), 60)}"
        print(f"\nimage {tag} built in {seconds:.0f} s")
        yield tag
    finally:
        _buildah("rmi", "--force", tag, check=False)


@pytest.fixture(scope="module")
def config(image) -> dict:
    return json.loads(_buildah("inspect", "--type", "image", image))["Docker"]["config"]


@pytest.fixture
def container(image):
    """(name, rootfs mount point) of a working container of the image; removed afterwards."""
    name = f"polydet-test-{uuid.uuid4().hex[:12]}"
    _buildah("from", "--pull-never", "--name", name, image)
    try:
        yield name, Path(_buildah("mount", name))
    finally:
        _buildah("umount", name, check=False)
        _buildah("rm", name, check=False)


@pytest.mark.slow
def test_image_config(config, container):
    _, root = container
    assert config["User"] == "10001:10001"
    assert sorted(config["ExposedPorts"]) == ["7070/tcp", "7071/tcp", "8080/tcp", "8081/tcp", "8082/tcp"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/opt/polydet/venv/bin/python", "/opt/polydet/docker/healthcheck.py"]
    assert config["Entrypoint"] == ["/opt/polydet/venv/bin/python", "/opt/polydet/docker/entrypoint.py"]
    assert config["StopSignal"] == "SIGTERM"
    assert "POLYDET_BIND_ADDRESS=127.0.0.1" in config["Env"]
    # Debian bookworm's python3 (3.11) in the venv, torch the CPU build (not PyPI's multi-GB CUDA one).
    site = root / "opt/polydet/venv/lib/python3.11/site-packages"
    assert [p.name for p in site.glob("torch-*.dist-info")] == ["torch-2.13.0+cpu.dist-info"]
    assert (root / "usr/lib/jvm/java-17-openjdk-amd64/bin/java").exists()
    # Archives built at build time, owned by root: the server's user cannot plant code in the store.
    store = root / "opt/polydet/model_store"
    assert sorted(p.name for p in store.iterdir()) == ["polydet.mar", "polydet_onnx.mar"]
    for p in (store, *store.iterdir()):
        st = p.stat()
        assert st.st_uid == 0 and not st.st_mode & stat.S_IWOTH, p


NUMBA_CACHE = "var/cache/polydet/numba"  # NUMBA_CACHE_DIR in the image, relative to its root
# What a worker does at start-up (Detector.warmup), reporting numba's cache statistics.
_NUMBA_PROBE = ("import json; from polydet.ops import nms; assert nms.warmup() == 'numba'; "
                "s = nms.numba_kernel().nms_image.stats; "
                "print(json.dumps({'hits': sum(s.cache_hits.values()), 'misses': sum(s.cache_misses.values())}))")


def _files(folder: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file under folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_numba_cache_is_built_into_the_image_and_loaded_as_the_user(config, container):
    """The NMS kernel was compiled at build time into NUMBA_CACHE_DIR, writable by the server's user;
    a process of that user in the image loads it from there (cache hits, no compilation)."""
    name, root = container
    assert f"NUMBA_CACHE_DIR=/{NUMBA_CACHE}" in config["Env"] and "NUMBA_CPU_NAME=generic" in config["Env"]
    cache = root / NUMBA_CACHE
    st = cache.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o755)
    before = _files(cache)
    assert any(p.endswith(".nbi") for p in before) and any(p.endswith(".nbc") for p in before), before
    assert {p.stat().st_uid for p in cache.rglob("*")} == {10001}
    r = _run_in(name, "/opt/polydet/venv/bin/python", "-c", _NUMBA_PROBE, timeout=180)
    assert r.returncode == 0, _tail(r.stdout + r.stderr)
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["hits"] >= 1 and stats["misses"] == 0, stats
    assert _files(cache) == before  # nothing compiled, nothing written


def _wait_ready(runner: subprocess.Popen, key_file: Path, management: str, log: Path, timeout: float = 180) -> str:
    """Wait until polydet's worker is READY; return the management key."""
    import requests

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        assert runner.poll() is None, f"container exited with {runner.returncode}:\n{_tail(log.read_text())}"
        try:
            key = json.loads(key_file.read_text())["management"]["key"]
            r = requests.get(f"{management}/models/polydet", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            last = f"HTTP {r.status_code} {r.text[:200]}"
            if r.ok and any(w["status"] == "READY" for d in r.json() for w in d["workers"]):
                return key
        except (OSError, ValueError, KeyError, requests.RequestException) as e:
            last = repr(e)
        time.sleep(0.3)
    raise AssertionError(f"not READY after {timeout:.0f} s (last: {last}):\n{_tail(log.read_text())}")


def _start_entrypoint(name: str, config: dict, log: Path) -> subprocess.Popen:
    """The image's own ENTRYPOINT + CMD, as its configured user and workdir, started again (3 tries) only
    when buildah failed on its memfd race before the entrypoint ran."""
    for attempt in range(3):
        with open(log, "w") as out:
            runner = subprocess.Popen(_run_argv(name, *config["Entrypoint"], *(config.get("Cmd") or [])),
                                      stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            runner.wait(timeout=3)
        except subprocess.TimeoutExpired:
            return runner  # running: buildah got past its own start-up
        if MEMFD_RACE not in log.read_text():
            return runner  # exited for a reason of its own: _wait_ready reports it with the log
        time.sleep(1 + attempt)
    return runner


def _jpeg() -> bytes:
    import cv2
    import numpy as np

    img = np.full((240, 320, 3), 200, np.uint8)
    cv2.rectangle(img, (60, 50), (250, 180), (30, 30, 30), -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


@pytest.mark.slow
def test_serves_a_request_as_non_root_and_stops_on_sigterm(config, container, tmp_path):
    import psutil
    import requests

    name, root = container
    ports = dict(zip(PORT_ENV, _free_ports(5)))
    _buildah("config", *(a for k, v in ports.items() for a in ("--env", f"{k}={v}")), name)
    inference = f"http://127.0.0.1:{ports['POLYDET_INFERENCE_PORT']}"
    management = f"http://127.0.0.1:{ports['POLYDET_MANAGEMENT_PORT']}"
    home = root / "var/lib/polydet"
    healthcheck = config["Healthcheck"]["Test"][1:]

    # The healthcheck must be able to fail: nothing runs yet.
    r = _run_in(name, *healthcheck)
    assert r.returncode == 1 and r.stdout.startswith("unhealthy:"), r.stdout + r.stderr

    numba_cache = _files(root / NUMBA_CACHE)
    log = tmp_path / "container.log"
    runner = _start_entrypoint(name, config, log)
    tree: list[psutil.Process] = []
    try:
        key = _wait_ready(runner, home / "key_file.json", management, log)
        tokens = json.loads((home / "key_file.json").read_text())
        assert tokens["management"]["key"] == key

        # A real image request with the inference token from the container's key_file.json.
        jpeg = _jpeg()
        r = requests.post(f"{inference}/predictions/polydet", data=jpeg, timeout=60,
                          headers={"Authorization": f"Bearer {tokens['inference']['key']}",
                                   "Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"width", "height", "detections"} and (body["width"], body["height"]) == (320, 240)
        for d in body["detections"]:
            assert set(d) == {"class_id", "class_name", "score", "polygon"}
            assert len(d["polygon"]) == 4 and all(len(p) == 2 for p in d["polygon"])
        # The workers took the numba NMS path, loaded while they started, from the image's cache: they
        # wrote nothing into it (a worker that compiled would have added its own entry).
        model_log = (home / "logs" / "model_log.log").read_text()
        assert "NMS numba" in model_log and "NMS torch" not in model_log, _tail(model_log)
        assert _files(root / NUMBA_CACHE) == numba_cache
        # Token authorization is on: no token, or the management key on the inference port, is refused.
        for headers in ({}, {"Authorization": f"Bearer {key}"}):
            r = requests.post(f"{inference}/predictions/polydet", data=jpeg, timeout=30,
                              headers={"Content-Type": "application/octet-stream", **headers})
            assert r.status_code == 400 and r.json()["type"] == "InvalidKeyException", r.text

        r = _run_in(name, *healthcheck)
        assert (r.returncode, r.stdout.strip()) == (0, "healthy: polydet READY"), r.stdout + r.stderr

        # A key past its expiration time is renewed by the healthcheck with the API key (expiry simulated
        # in the file; TorchServe then issues a new key and the old one stops working).
        key_file = home / "key_file.json"
        keys = json.loads(key_file.read_text())
        old = keys["inference"]["key"]
        keys["inference"]["expiration time"] = "2000-01-01T00:00:00.000000000Z"
        key_file.write_text(json.dumps(keys))
        r = _run_in(name, *healthcheck)
        assert (r.returncode, r.stdout.strip()) == (0, "healthy: polydet READY"), r.stdout + r.stderr
        new = json.loads(key_file.read_text())["inference"]["key"]
        assert new != old
        for token, status in ((old, 400), (new, 200)):
            r = requests.post(f"{inference}/predictions/polydet", data=jpeg, timeout=60,
                              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
            assert r.status_code == status, r.text

        # Every process of the server runs as the image's non-root user, listening on loopback only.
        tree = psutil.Process(runner.pid).children(recursive=True)
        entry = [p for p in tree if p.cmdline() == config["Entrypoint"]]
        java = [p for p in tree if JAVA_MAIN in p.cmdline()]
        workers = [p for p in tree if any("model_service_worker" in a for a in p.cmdline())]
        # archive.sh's default: one single-threaded worker per core of a 2-core machine
        assert len(entry) == 1 and len(java) == 1 and len(workers) == 2, [p.cmdline()[:3] for p in tree]
        server = [*entry, *java, *workers, *entry[0].children()]
        assert {p.uids().real for p in server} == {p.uids().effective for p in server} == {10001}
        listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)  # Java's IPv4-mapped sockets
                     for c in java[0].net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port) for port in ports.values()}
        st = (home / "key_file.json").stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (10001, 0o600)

        # SIGTERM to the entrypoint (what `docker stop` sends PID 1) stops TorchServe and its worker.
        t0 = time.monotonic()
        entry[0].send_signal(signal.SIGTERM)
        assert runner.wait(timeout=40) == 0, _tail(log.read_text())
        stop_seconds = time.monotonic() - t0
        gone, alive = psutil.wait_procs(server, timeout=5)
        assert not alive, [p.cmdline()[:3] for p in alive]
        assert "polydet-entrypoint: TorchServe stopped" in log.read_text()
        assert not (home / "key_file.json").exists()
        print(f"\nstopped {stop_seconds:.1f} s after SIGTERM")
    finally:
        if runner.poll() is None:  # only this test's processes: the buildah run it started and its tree
            try:
                tree = [*tree, *psutil.Process(runner.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
            for p in [psutil.Process(runner.pid), *tree]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            runner.wait(timeout=30)


# -- the helpers, without an image ------------------------------------------------------------------
def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"polydet_docker_{name}", REPO / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_applies_bind_address_ports_and_absolute_paths(monkeypatch, tmp_path):
    entrypoint = _load("entrypoint")
    template = tmp_path / "config.properties"
    template.write_text("# comment\n"
                        "inference_address=http://127.0.0.1:8080\n"
                        "management_address=https://127.0.0.1:8443\n"
                        "metrics_address=http://127.0.0.1:8082\n"
                        "grpc_inference_port=7070\n"
                        "model_store=model_store\n"
                        "metrics_config=/abs/metrics.yaml\n"
                        "vmargs=-Xmx1g -Dlog4j.configurationFile=etc/log4j2.xml\n"
                        "disable_token_authorization=false\n")
    for k in (*PORT_ENV, "POLYDET_BIND_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    from polydet.errors import ConfigError
    from polydet.serving.server import effective_properties
    from polydet.serving.storeguard import jar_path

    assert entrypoint.with_environment(effective_properties(template)) == {
        "inference_address": "http://127.0.0.1:8080",
        "management_address": "https://127.0.0.1:8443",  # scheme and port kept
        "metrics_address": "http://127.0.0.1:8082",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": "7070",
        "grpc_management_port": "7071",  # TorchServe's default, written out
        "model_store": f"{tmp_path}/model_store",  # relative paths: against the template's folder
        "metrics_config": "/abs/metrics.yaml",
        "vmargs": f"-Xmx1g -Dlog4j.configurationFile={tmp_path}/etc/log4j2.xml -javaagent:{jar_path()}",
        "disable_token_authorization": "false",
    }

    monkeypatch.setenv("POLYDET_BIND_ADDRESS", "0.0.0.0")
    monkeypatch.setenv("POLYDET_MANAGEMENT_PORT", "18081")
    monkeypatch.setenv("POLYDET_GRPC_MANAGEMENT_PORT", "17071")
    props = entrypoint.with_environment(effective_properties(template))
    assert [props[k] for k in ("inference_address", "management_address", "metrics_address",
                               "grpc_inference_address", "grpc_management_address", "grpc_inference_port",
                               "grpc_management_port")] == [
        "http://0.0.0.0:8080", "https://0.0.0.0:18081", "http://0.0.0.0:8082", "0.0.0.0", "0.0.0.0", "7070", "17071"]

    monkeypatch.setenv("POLYDET_BIND_ADDRESS", "::")
    props = entrypoint.with_environment(effective_properties(template))
    assert (props["metrics_address"], props["grpc_inference_address"]) == ("http://[::]:8082", "::")

    monkeypatch.setenv("POLYDET_INFERENCE_PORT", "80a")
    with pytest.raises(ConfigError, match="POLYDET_INFERENCE_PORT='80a' is not a port"):
        entrypoint.with_environment(effective_properties(template))


def test_healthcheck_helpers():
    healthcheck = _load("healthcheck")
    assert healthcheck.local_url("http://0.0.0.0:8080") == "http://127.0.0.1:8080"
    assert healthcheck.local_url("http://[::]:8081") == "http://127.0.0.1:8081"
    assert healthcheck.local_url("https://10.1.2.3:8443") == "https://10.1.2.3:8443"
    assert healthcheck.expired({"expiration time": "2020-01-01T00:00:00.123456789Z"})
    assert not healthcheck.expired({"expiration time": "2999-01-01T00:00:00.123456789Z"})
    assert not healthcheck.expired({"key": "API keys do not expire"})
