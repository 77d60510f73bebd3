"""polydet as a user installs it: the wheel in a new virtual environment, outside the checkout.

`polydet serve` in an empty folder must archive the bundled weights with the handler and config the
package ships, start TorchServe (its workers running the new environment's Python, hence the wheel's
polydet), answer the sample request with the bundled model's detection, and `polydet stop` must stop it.
The new environment gets polydet from the wheel only; its dependencies (torch, TorchServe...) are the
project environment's, made visible with a .pth file so that nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import psutil
import pytest
from serving_helpers import REPO

from polydet.serving.properties import HTTP_LISTENERS, GRPC_LISTENERS
from polydet.serving.server import Ports


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(root / "dist")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (root / "dist").glob("polydet-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # the project's packages after the wheel's: a plain path line, so the checkout's editable-install hook
    # (a .pth inside that folder) is not run and `import polydet` finds the wheel
    (site / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir, wheel


def test_the_wheel_holds_what_serving_needs(user_env):
    import zipfile

    _, wheel = user_env
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"polydet/assets/config.properties", "polydet/assets/polydet_handler.py",
            "polydet/assets/polydet_main_area.pt", "polydet/assets/sample.jpg", "polydet/serving/metrics.yaml",
            "polydet/serving/log4j2.xml", "polydet/serving/storeguard/polydet-store-guard.jar"} <= names


def test_serve_in_an_empty_folder_answers_with_the_bundled_model(user_env, tmp_path):
    env_dir, _ = user_env
    py, polydet = env_dir / "bin" / "python", env_dir / "bin" / "polydet"
    where = subprocess.check_output([str(py), "-c", "import polydet; print(polydet.__file__)"], text=True).strip()
    assert where.startswith(str(env_dir)), where
    folder = tmp_path / "empty"
    folder.mkdir()
    ports = Ports.free()
    env = {**os.environ, "POLYDET_INFERENCE_PORT": str(ports.inference),
           "POLYDET_MANAGEMENT_PORT": str(ports.management), "POLYDET_METRICS_PORT": str(ports.metrics),
           "POLYDET_GRPC_INFERENCE_PORT": str(ports.grpc_inference),
           "POLYDET_GRPC_MANAGEMENT_PORT": str(ports.grpc_management), "TMPDIR": str(tmp_path)}
    env.pop("POLYDET_BIND_ADDRESS", None)
    assert len(HTTP_LISTENERS) + len(GRPC_LISTENERS) == 5
    try:
        r = subprocess.run([str(polydet), "serve", "--timeout", "240"], cwd=folder, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        lines = r.stdout.splitlines()
        result = json.loads(lines[lines.index(next(x for x in lines if x.startswith("sample "))) + 1])
        assert (result["width"], result["height"]) == (556, 800)  # the sample the package ships
        assert [d["class_name"] for d in result["detections"]] == ["page"]
        assert result["detections"][0]["score"] > 0.9
        assert sorted(p.name for p in (folder / "model_store").iterdir()) == ["polydet.mar", "polydet_onnx.mar"]
        state = json.loads((folder / "logs" / "polydet-serve.json").read_text())
        java = psutil.Process(state["pid"])
        workers = [p for p in java.children(recursive=True) if "model_service_worker" in " ".join(p.cmdline())]
        assert workers and all(p.cmdline()[0] == str(py) for p in workers), [p.cmdline()[:2] for p in workers]
        assert f"-javaagent:{env_dir}" in " ".join(java.cmdline())  # the guard from the installed package
    finally:
        stop = subprocess.run([str(polydet), "stop"], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not java.is_running()
