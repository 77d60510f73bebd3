"""Fixtures of the reliability and security tests: a real TorchServe 0.12.0 per test module.

Mirrors tests/integration/conftest.py (archive.sh into a temporary store, ``polydet.serving.server.TorchServe``
on free loopback ports with its own TMPDIR and start folder, tokens from key_file.json, stopped by PID) and
reuses its serving_helpers.py; this suite's own helpers are in reliability_helpers.py. The archives here
differ in the settings the tests need: one worker, a small ``max_pixels`` (the configurable pixel cap)
and a second version for the register-under-traffic test.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from serving_helpers import build_test_store, local_detector, store_artifact  # noqa: E402

from bad_inputs import MAX_PIXELS  # noqa: E402
from reliability_helpers import start_server  # noqa: E402

# One worker (archive.sh ships two; test_faults scales to two where that matters) with batchSize 4 and a
# long maxBatchDelay: requests sent together share one batch even on a loaded 2-core machine. conf 0.001
# so the random-weight demo model detects something (good answers are compared with the same artifact
# in-process, detection by detection).
ARCHIVE_ENV = {"MIN_WORKERS": "1", "MAX_WORKERS": "1", "BATCH_SIZE": "4", "MAX_BATCH_DELAY": "200",
               "CONF": "0.001", "MAX_DET": "20", "RESPONSE_TIMEOUT": "60", "MAX_PIXELS": str(MAX_PIXELS)}


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """polydet.mar (1.0, max_pixels 4 MP) and polydet_v2.mar (2.0, same artifact), built by archive.sh."""
    return build_test_store(tmp_path_factory.mktemp("rel_archives"), ARCHIVE_ENV, "--formats", "torchscript")


@pytest.fixture(scope="session")
def artifact(store) -> Path:
    return store_artifact(store)


@pytest.fixture(scope="session")
def bundled(store) -> bool:
    """True when the archives hold the trained weights (archive.sh names the demo artifact *_RANDOM_DEMO)."""
    names = zipfile.ZipFile(store / "polydet.mar").namelist()
    return not any("RANDOM_DEMO" in n for n in names)


@pytest.fixture(scope="session")
def local(artifact):
    """The served artifact run in-process with the archive's thresholds: good answers must equal it."""
    return local_detector(artifact, ARCHIVE_ENV, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def server(tmp_path_factory, store):
    """One TorchServe per test module with the repository's config.properties."""
    ts = start_server(tmp_path_factory, store)
    yield ts
    ts.stop()
