"""Fixtures that run a real TorchServe 0.12.0: archives built once per session by archive.sh, one server
per test module on free loopback ports with its own TMPDIR and start folder, stopped by PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving_helpers import REPO, encode, page_image

from polydet.serving.server import missing_prerequisite

ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")

# Batching settings of the test archives: maxBatchDelay long enough that requests sent together share a
# batch on a loaded 2-core CI machine, and a low conf so even the random-weight demo model detects
# something (the detections-per-image metric must become non-zero).
ARCHIVE_ENV = {"MIN_WORKERS": "1", "MAX_WORKERS": "1", "BATCH_SIZE": "4", "MAX_BATCH_DELAY": "200", "CONF": "0.001", "MAX_DET": "20",
               "RESPONSE_TIMEOUT": "60"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store with polydet.mar (TorchScript, 1.0), polydet_onnx.mar and polydet_v2.mar (2.0).

    Built by archive.sh from the bundled weights when weights/ has them, else from random weights.
    """
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("archives")
    store, build = root / "model_store", root / "build"
    env = dict(os.environ, PYTHON=sys.executable, **ARCHIVE_ENV)
    r = subprocess.run(["bash", str(REPO / "archive.sh"), "--store", str(store), "--build", str(build)],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"archive.sh failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    # A second version of the same model for the management tests: the same artifact, version 2.0.
    artifact = next((build / "polydet-1.0").glob("*.torchscript"))
    subprocess.run([str(ARCHIVER), "--model-name", "polydet_v2", "--version", "2.0", "--serialized-file",
                    str(artifact), "--handler", str(REPO / "handlers" / "polydet_handler.py"), "--config-file",
                    str(build / "polydet-1.0" / "model-config.yaml"), "--export-path", str(store)], check=True)
    return store


@pytest.fixture(scope="session")
def artifact(model_store) -> Path:
    """The TorchScript artifact inside polydet.mar (for in-process comparisons)."""
    return next((model_store.parent / "build" / "polydet-1.0").glob("*.torchscript"))


def start_server(tmp_path_factory, model_store, models="polydet.mar", ready=("polydet",)):
    from polydet.serving.server import Ports, TorchServe

    run_dir = tmp_path_factory.mktemp("ts")
    ts = TorchServe(run_dir, REPO / "config.properties", ports=Ports.free(), model_store=model_store,
                    models=models)
    ts.start()
    try:
        for name in ready:
            ts.wait_ready(name, timeout=240)
    except BaseException:
        ts.stop()
        raise
    return ts


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_store):
    """One TorchServe per test module serving polydet (TorchScript)."""
    ts = start_server(tmp_path_factory, model_store)
    print(f"\nTorchServe pid {ts.pid}: polydet READY {ts.ready_seconds:.1f} s after start", file=sys.stderr)
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    return encode(page_image())


@pytest.fixture(scope="session")
def local(artifact):
    """The same artifact run in-process with the archive's thresholds: the served answers must match it."""
    from polydet.pipeline import DetectOptions, Detector

    opts = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))
    return Detector.from_artifact(artifact, options=opts)
