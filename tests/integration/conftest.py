"""Fixtures that run a real TorchServe 0.12.0: archives built once per session by archive.sh, one server
per test module on free loopback ports with its own TMPDIR and start folder, stopped by PID.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from serving_helpers import ARCHIVER, REPO, build_test_store, encode, local_detector, page_image, store_artifact

__all__ = ["ARCHIVER"]  # test_multi_image_served imports it from here

# Batching settings of the test archives: maxBatchDelay long enough that requests sent together share a
# batch on a loaded 2-core CI machine, and a low conf so even the random-weight demo model detects
# something (the detections-per-image metric must become non-zero).
ARCHIVE_ENV = {"MIN_WORKERS": "1", "MAX_WORKERS": "1", "BATCH_SIZE": "4", "MAX_BATCH_DELAY": "200", "CONF": "0.001", "MAX_DET": "20",
               "RESPONSE_TIMEOUT": "60"}


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store with polydet.mar (TorchScript, 1.0), polydet_onnx.mar and polydet_v2.mar (2.0).

    Built by archive.sh from the bundled weights when weights/ has them, else from random weights.
    """
    return build_test_store(tmp_path_factory.mktemp("archives"), ARCHIVE_ENV)


@pytest.fixture(scope="session")
def artifact(model_store) -> Path:
    """The TorchScript artifact inside polydet.mar (for in-process comparisons)."""
    return store_artifact(model_store)


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
    return local_detector(artifact, ARCHIVE_ENV)
