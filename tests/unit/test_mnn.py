"""MNN (its converter's library function, its runtime): the same detections as ONNX Runtime, metadata beside
the model, and a conversion that installs nothing and opens no connection (MNN's command-line entry points
import a logger that runs pip and posts to a remote endpoint)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("MNN", reason="MNN is not installed (pip install 'polydet[mnn]')")

from artifact_helpers import assert_detects_like

from polydet.backends import load_backend  # noqa: E402
from polydet.errors import ConfigError, ModelLoadError  # noqa: E402
from polydet.export import export  # noqa: E402
from polydet.meta import ModelInfo  # noqa: E402
from polydet.pipeline import DetectOptions  # noqa: E402

IMGSZ = 128
OPTS = DetectOptions(conf=0.0003, max_det=20)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnn")
    mp = pytest.MonkeyPatch()

    def refused(*a, **k):
        raise AssertionError(f"the MNN export tried to reach out: {a[:2]}")

    # the conversion runs with every way out refused: sockets, subprocesses, os.system
    for target, name in ((socket, "socket"), (socket, "create_connection"), (subprocess, "Popen"), (os, "system")):
        mp.setattr(target, name, refused)
    try:
        out = {"mnn": export("random", "mnn", out=d / "r.mnn", imgsz=IMGSZ)}
    finally:
        mp.undo()
    out["onnx"] = export("random", "onnx", out=d / "r.onnx", imgsz=IMGSZ)
    return out


def test_the_conversion_installs_and_sends_nothing(artifacts):
    assert "MNN.tools.utils.log" not in sys.modules and "MNN.tools" not in sys.modules
    assert "aliyun" not in sys.modules  # the logger's SDK (pip-installed by it when missing)


def test_export_writes_the_model_and_its_metadata(artifacts):
    path, diff = artifacts["mnn"]
    assert sorted(p.name for p in path.parent.glob("r.*")) == ["r.json", "r.mnn", "r.onnx"]
    assert diff["corners_px"] < 1e-3 and diff["scores"] < 1e-5  # measured ~8e-6: the same arithmetic
    backend = load_backend(path)
    assert backend.name == "mnn" and backend.max_batch is None
    assert backend.info == ModelInfo(names=["page", "photo"], imgsz=IMGSZ)


def test_the_same_detections_as_onnx_runtime_on_mixed_sizes(artifacts):
    assert_detects_like(artifacts["mnn"][0], artifacts["onnx"][0], OPTS, px=0.05)


def test_fp16_is_refused_and_a_model_without_metadata_too(artifacts, tmp_path):
    with pytest.raises(ConfigError, match="mnn cannot be exported in fp16"):
        export("random", "mnn", out=tmp_path / "h.mnn", imgsz=IMGSZ, precision="fp16")
    lone = tmp_path / "lone.mnn"
    lone.write_bytes(artifacts["mnn"][0].read_bytes())
    with pytest.raises(ModelLoadError, match="needs lone.json beside it"):
        load_backend(lone)
