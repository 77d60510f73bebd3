"""The capability manifest: every backend declares its runtime's capabilities as data (Backend.capabilities),
joined with its export row by Backend.manifest(); callers ask it instead of a backend's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from polydet import doctor
from polydet.backends import MODULES, backend_classes, load_backend
from polydet.backends.base import Backend, Capabilities
from polydet.export import FORMATS, export
from polydet.meta import Precision

SRC = Path(__file__).resolve().parents[2] / "src" / "polydet"
NOT_ON_PYPI = {"tensorrt"}  # the TensorRT backend's runtime: NVIDIA's index or a tarball (doctor: check_tensorrt)


def test_every_backend_declares_its_own_capabilities():
    _, reqs = doctor.pins_source()
    pins = doctor.matrix(reqs)  # pyproject.toml's distributions -> (specifier, the extras pinning them)
    assert [cls.name for cls in backend_classes()] == list(MODULES)
    for cls in backend_classes():
        caps = cls.__dict__.get("capabilities")
        assert isinstance(caps, Capabilities), f"{cls.name} declares no capabilities of its own"
        assert set(caps.devices) <= {"cpu", "cuda"} and caps.devices
        assert caps.batch in ("dynamic", "one") and caps.shapes in ("artifact", "any")
        assert caps.custom_ops == ()  # polydet artifacts load no plugin library
        for dist in caps.runtime:  # each runtime is a pinned distribution (doctor checks it) or not on PyPI
            assert dist in pins or dist in NOT_ON_PYPI, (cls.name, dist)
            if caps.extra:
                assert caps.extra in pins[dist][1] or "core" in pins[dist][1], (cls.name, dist, caps.extra)
        if caps.env:
            assert caps.env in doctor.ENV_SPECS


def test_the_manifest_joins_the_export_row():
    by_name = {cls.name: cls.manifest() for cls in backend_classes()}
    json.dumps(by_name)  # data: JSON as it is
    for fmt in FORMATS.values():
        m = by_name[fmt.backend]
        assert m["format"] == fmt.name and m["precisions"] == [p.value for p in fmt.precisions]
        assert m["files"] == [fmt.suffix, *fmt.companions] and m["files"][0] in m["suffixes"] + [".ncnn.param"]
        assert m["calibration"] is (Precision.INT8 in fmt.precisions)
    assert by_name["eager"]["format"] is None and by_name["eager"]["shapes"] == "any"
    assert by_name["rknn"]["files"] == [".rknn", ".json", ".split.onnx"] and by_name["rknn"]["env"] == "rknn"
    assert [n for n, m in by_name.items() if m["batch"] == "one"] == ["ncnn", "rknn"]
    assert [n for n, m in by_name.items() if m["fp16_cast"]] == ["torchscript", "eager"]


def test_no_caller_branches_on_a_backend_name():
    """Outside a backend's own module (and its exporter), nothing compares a backend's name."""
    names = "|".join(MODULES)
    pattern = re.compile(rf"""\.name\s*(==|!=|in)\s*[\(\[\{{]?\s*["']({names})["']""")
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_loaded_artifact_agrees_with_its_declaration(fmt, tmp_path):
    path, _ = export("random", fmt, out=tmp_path / f"m{FORMATS[fmt].suffix}", imgsz=64, verify=False)
    backend = load_backend(path)
    caps = type(backend).capabilities
    assert isinstance(backend, Backend) and backend.device.type in caps.devices
    assert backend.max_batch is None and caps.batch == "dynamic"  # exported with a dynamic batch
    assert backend.precision.value in type(backend).manifest()["precisions"]


def test_eval_takes_another_input_size_only_where_the_backend_declares_any(tmp_path):
    """polydet.evaluate asks capabilities.shapes: the eager checkpoint runs at 256, a fixed ONNX refuses it."""
    from polydet.data.synth import write_dataset
    from polydet.evaluate import evaluate_artifact

    data = tmp_path / "val"
    write_dataset(data, 2, seed=999, progress=False, preview=0)
    onnx_path, _ = export("random", "onnx", out=tmp_path / "m.onnx", imgsz=64, verify=False)
    with pytest.raises(ValueError, match="is a fixed 64 px export: --imgsz 96 needs an eager checkpoint"):
        evaluate_artifact(onnx_path, data, imgsz=96)
    weights = SRC / "assets" / "polydet_main_area.pt"
    assert load_backend(weights).capabilities.shapes == "any"
    assert set(evaluate_artifact(weights, data, imgsz=256)) >= {"map50", "map"}
