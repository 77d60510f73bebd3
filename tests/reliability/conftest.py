"""Fixtures of the reliability and security tests: a real TorchServe 0.12.0 per test module.

Mirrors tests/integration/conftest.py (archive.sh into a temporary store, ``polydet.serving.server.TorchServe``
on free loopback ports with its own TMPDIR and start folder, tokens from key_file.json, stopped by PID) and
reuses its serving_helpers.py; this suite's own helpers are in reliability_helpers.py. The archives here
differ in the settings the tests need: one worker, a small ``max_pixels`` (the configurable pixel cap)
and a second version for the register-under-traffic test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from serving_helpers import REPO  # noqa: E402

from bad_inputs import MAX_PIXELS  # noqa: E402
from reliability_helpers import start_server  # noqa: E402

from polydet.serving.server import missing_prerequisite  # noqa: E402

ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")

# One worker (archive.sh ships two; test_faults scales to two where that matters) with batchSize 4 and a
# long maxBatchDelay: requests sent together share one batch even on a loaded 2-core machine. conf 0.001
# so the random-weight demo model detects something (good answers are compared with the same artifact
# in-process, detection by detection).
ARCHIVE_ENV = {"MIN_WORKERS": "1", "MAX_WORKERS": "1", "BATCH_SIZE": "4", "MAX_BATCH_DELAY": "200",
               "CONF": "0.001", "MAX_DET": "20", "RESPONSE_TIMEOUT": "60", "MAX_PIXELS": str(MAX_PIXELS)}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/reliability" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """polydet.mar (1.0, max_pixels 4 MP) and polydet_v2.mar (2.0, same artifact), built by archive.sh."""
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("rel_archives")
    store, build, tmp = root / "model_store", root / "build", root / "tmp"
    tmp.mkdir()
    # torch-model-archiver stages files in $TMPDIR/<model name>: a private TMPDIR keeps two test runs on one
    # host from packing each other's files.
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp), **ARCHIVE_ENV)
    r = subprocess.run(["bash", str(REPO / "archive.sh"), "--store", str(store), "--build", str(build),
                        "--formats", "torchscript"], env=env, capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"archive.sh failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    artifact = next((build / "polydet-1.0").glob("*.torchscript"))
    r = subprocess.run([str(ARCHIVER), "--model-name", "polydet_v2", "--version", "2.0", "--serialized-file",
                        str(artifact), "--handler", str(REPO / "handlers" / "polydet_handler.py"), "--config-file",
                        str(build / "polydet-1.0" / "model-config.yaml"), "--export-path", str(store)],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"torch-model-archiver failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return store


@pytest.fixture(scope="session")
def artifact(store) -> Path:
    return next((store.parent / "build" / "polydet-1.0").glob("*.torchscript"))


@pytest.fixture(scope="session")
def bundled(store) -> bool:
    """True when the archives hold the trained weights (archive.sh names the demo artifact *_RANDOM_DEMO)."""
    names = zipfile.ZipFile(store / "polydet.mar").namelist()
    return not any("RANDOM_DEMO" in n for n in names)


@pytest.fixture(scope="session")
def local(artifact):
    """The served artifact run in-process with the archive's thresholds: good answers must equal it."""
    from polydet.pipeline import DetectOptions, Detector

    opts = DetectOptions(conf=float(ARCHIVE_ENV["CONF"]), max_det=int(ARCHIVE_ENV["MAX_DET"]))
    return Detector.from_artifact(artifact, options=opts, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def server(tmp_path_factory, store):
    """One TorchServe per test module with the repository's config.properties."""
    ts = start_server(tmp_path_factory, store)
    yield ts
    ts.stop()
