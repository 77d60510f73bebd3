"""polydet doctor: the version matrix is pyproject.toml's pins; planted problems are reported with their fix and
fail the run; this environment passes."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from polydet import doctor
from polydet.cli import main as cli

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pyproject_pins() -> dict[str, set[str]]:
    """The oracle: distribution -> the version specifiers pyproject.toml gives it (parsed here, by hand)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    items = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins: dict[str, set[str]] = {}
    for item in items:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", item.split(";")[0].strip())
        name, spec = m.group(1), m.group(3).replace(" ", "")
        if name.lower() != "polydet":
            pins.setdefault(name, set()).update(s for s in spec.split(",") if s)
    return pins


def test_the_matrix_is_pyprojects_pins():
    source, reqs = doctor.pins_source()
    assert source == str(PYPROJECT)  # this checkout is an editable install: its pyproject.toml is the source
    rows = doctor.matrix(reqs)
    assert {name: {str(s) for s in spec} for name, (spec, _) in rows.items()} == _pyproject_pins()
    assert rows["onnxslim"][1] == ["optimize"] and rows["numba"][1] == ["core"]
    assert rows["shapely"][1] == ["bench", "test"]


def _fake_version(monkeypatch, **fake):
    real = metadata.version

    def version(name):
        if name in fake:
            if fake[name] is None:
                raise metadata.PackageNotFoundError(name)
            return fake[name]
        return real(name)

    monkeypatch.setattr(doctor.metadata, "version", version)


def test_a_planted_version_mismatch_is_reported_with_its_fix(monkeypatch, capsys):
    _fake_version(monkeypatch, onnxslim="0.1.42")
    assert cli(["doctor", "--json", "--quick"]) == 1
    out = json.loads(capsys.readouterr().out)
    bad = [f for f in out["findings"] if f["status"] in doctor.ERRORS]
    assert out["ok"] is False and [f["name"] for f in bad] == ["onnxslim"]
    assert bad[0] == {"name": "onnxslim", "group": "optimize", "want": "==0.1.98", "found": "0.1.42",
                      "status": "mismatch", "fix": "pip install 'onnxslim==0.1.98'",
                      "detail": "polydet was checked with the pinned version only"}


def test_a_missing_core_package_fails_but_a_missing_extra_is_only_noted(monkeypatch, capsys):
    _fake_version(monkeypatch, numba=None, MNN=None)
    assert doctor.main(["--quick"]) == 1
    text = capsys.readouterr().out
    assert "      missing  numba - (core: <0.69,>=0.68)  -> pip install 'numba<0.69,>=0.68'" in text
    assert "not-installed  MNN - (mnn: ==3.6.1)  -> pip install 'polydet[mnn]'" in text
    assert "backend mnn: not usable here (MNN not-installed); cpu, batch dynamic, fp32, files .mnn .json" in text
    assert text.rstrip().endswith("1 problem(s)")


def test_an_import_that_fails_or_kills_its_process_is_named(tmp_path, monkeypatch):
    (tmp_path / "doctor_probe_raises.py").write_text("raise ImportError('libfoo.so.1: cannot open shared object')\n")
    (tmp_path / "doctor_probe_dies.py").write_text("import os\nos._exit(9)\n")
    (tmp_path / "doctor_probe_fine.py").write_text("print('a module that prints')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    got = doctor.import_check(["doctor_probe_raises", "doctor_probe_dies", "doctor_probe_fine"])
    assert got == {"doctor_probe_raises": "ImportError: libfoo.so.1: cannot open shared object",
                   "doctor_probe_dies": "the import killed the process (exit status 9)", "doctor_probe_fine": None}


def test_an_unbuilt_venv_is_not_an_error_and_names_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYDET_ENVS", str(tmp_path))
    f = doctor.check_venv("rknn", doctor.ENV_SPECS["rknn"])
    assert (f.status, f.want, f.found, f.error) == ("not-built", "rknn-toolkit2==2.5.0", None, False)
    assert f.fix == "built on first use; now: polydet doctor --build rknn" and f.detail.startswith(str(tmp_path))


@pytest.mark.slow
def test_this_environment_passes(capsys):
    """Every pinned package installed here imports and matches its pin (imports included: ~1 min)."""
    assert cli(["doctor", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {f["name"]: f for f in out["findings"]}
    assert out["ok"] is True and not [f for f in out["findings"] if f["status"] in doctor.ERRORS]
    assert by_name["onnxruntime"]["status"] == "ok" and by_name["java"]["status"] == "ok"
    assert by_name["tensorrt"]["status"] == "not-installed"  # no host here has TensorRT
    assert {by_name[v]["status"] for v in doctor.ENV_SPECS} <= {"ok", "not-built"}


def test_the_backends_view_comes_from_their_manifests(monkeypatch, capsys):
    _fake_version(monkeypatch, onnxruntime="1.0.0")  # below the onnx extra's >=1.17
    assert doctor.main(["--json", "--quick"]) == 1
    rows = {b["name"]: b for b in json.loads(capsys.readouterr().out)["backends"]}
    from polydet.backends import MODULES, backend_class

    assert list(rows) == list(MODULES)
    assert (rows["onnxruntime"]["usable"], rows["onnxruntime"]["why_not"]) == (False, ["onnxruntime mismatch"])
    assert (rows["tensorrt"]["usable"], rows["tensorrt"]["why_not"]) == (False, ["tensorrt not-installed"])
    assert rows["torchscript"]["usable"] and rows["rknn"]["usable"]  # rknn: its venv is built at the first use
    manifest = json.loads(json.dumps(backend_class(Path("m.ncnn.param")).manifest()))
    assert rows["ncnn"] == {**manifest, "usable": True, "why_not": []}
    assert manifest["files"] == [".ncnn.param", ".ncnn.bin", ".ncnn.json"] and manifest["batch"] == "one"
