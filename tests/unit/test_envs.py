"""The isolated-venv seam (polydet.envs): built once, reused, polydet importable without its pins."""

from __future__ import annotations

import subprocess
import sys

import pytest

from polydet import envs


def test_a_venv_is_built_once_and_sees_this_polydet(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYDET_ENVS", str(tmp_path))
    spec = envs.EnvSpec(name="probe", requirements=())
    logs: list[str] = []
    py = envs.ensure(spec, log=logs.append)
    assert py.is_file() and envs.is_ready(spec)
    assert any("building" in m for m in logs)
    out = subprocess.run(
        [str(py), "-c", "import sys, polydet.options as o; print(o.__file__); print(sys.prefix)"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    import polydet.options

    assert out[0] == polydet.options.__file__ or out[0].endswith("polydet/options.py")
    assert out[1] != sys.prefix and out[1].startswith(str(tmp_path))
    # numpy and friends are not inherited: the venv holds only what its spec installs
    probe = envs.run(spec, ["-c", "import numpy"], capture_output=True, text=True)
    assert probe.returncode != 0 and "numpy" in probe.stderr
    logs.clear()
    assert envs.ensure(spec, log=logs.append) == py and logs == []


def test_a_failed_install_names_the_venv_and_pip_output(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYDET_ENVS", str(tmp_path))
    spec = envs.EnvSpec(name="broken", requirements=("polydet-no-such-package-xyz==0.0.1",), with_polydet=False)
    with pytest.raises(envs.EnvBuildError, match=r"broken-.*polydet-no-such-package-xyz"):
        envs.ensure(spec, log=lambda m: None)
    assert not envs.is_ready(spec)


def test_the_key_changes_with_what_is_installed():
    a = envs.EnvSpec(name="x", requirements=("kserve==0.21.0",))
    b = envs.EnvSpec(name="x", requirements=("kserve==0.21.1",))
    assert a.key() != b.key() and envs.env_dir(a) != envs.env_dir(b)
