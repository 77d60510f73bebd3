"""mypy on the TensorRT modules against tensorrt-stubs: the only check the runtime path gets here (no host
has TensorRT). Install: pip install mypy==2.4.1 and pip install --no-deps tensorrt-stubs==10.13.0.35.1
(pyproject.toml's `tensorrt-types` extra says why --no-deps).

tensorrt-stubs 10.13.0.35.1 installs its .pyi files as the packages ``tensorrt``/``tensorrt_bindings``
without a py.typed marker (so mypy skips them as installed packages) and with a few syntax errors in
plugin methods we never call (a parameter named ``in``, a default before a non-default). The test copies
them, patches those lines, and points mypy at the copy; everything else comes from the stubs as shipped.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = [ROOT / "src/polydet/backends/tensorrt.py", ROOT / "src/polydet/export/tensorrt.py"]
# Every TensorRT name the two modules use (checked to exist in the stubs; mypy checks how they are used).
NAMES = ["Runtime", "Logger", "deserialize_cuda_engine", "num_io_tensors", "get_tensor_name", "get_tensor_mode",
         "TensorIOMode", "get_tensor_shape", "get_tensor_dtype", "get_tensor_profile_shape",
         "create_execution_context", "set_input_shape", "set_tensor_address", "execute_async_v3", "Builder",
         "create_network", "NetworkDefinitionCreationFlag", "STRONGLY_TYPED", "OnnxParser", "parse_from_file",
         "num_errors", "get_error", "num_inputs", "get_input", "create_builder_config", "set_memory_pool_limit",
         "MemoryPoolType", "WORKSPACE", "create_optimization_profile", "set_shape", "Dims",
         "add_optimization_profile", "build_serialized_network", "__version__"]
CONFIG = """[mypy]
follow_imports = silent
ignore_missing_imports = True
check_untyped_defs = True
warn_unused_ignores = True
mypy_path = {stubs}
[mypy-tensorrt.*]
ignore_missing_imports = False
[mypy-tensorrt,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
[mypy-torch.*]
follow_imports = skip
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    pytest.importorskip("mypy", reason="mypy not installed (pip install mypy==2.4.1)")
    spec = importlib.util.find_spec("tensorrt")
    locations = list(spec.submodule_search_locations or []) if spec else []
    found = [Path(p) for p in locations if (Path(p) / "__init__.pyi").is_file()]
    bindings = importlib.util.find_spec("tensorrt_bindings")
    if not found or bindings is None:
        pytest.skip("tensorrt-stubs not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    out = tmp_path_factory.mktemp("stubs")
    shutil.copytree(found[0], out / "tensorrt")
    shutil.copytree(Path(next(iter(bindings.submodule_search_locations or []))), out / "tensorrt_bindings")
    pyi = out / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"([(,] ?)in: ", r"\1in_: ", pyi.read_text())
    pyi.write_text(re.sub(r"(power: Weights = None, channel_axis: int)\)", r"\1 = ...)", text))
    return out


def mypy(stubs: Path, files: list[Path], tmp_path: Path) -> subprocess.CompletedProcess:
    ini = tmp_path / "mypy.ini"
    ini.write_text(CONFIG.format(stubs=stubs))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ini), "--cache-dir",
                           str(stubs.parent / "mypy_cache"), *map(str, files)], check=False, capture_output=True,
                          text=True, cwd=ROOT)


def test_tensorrt_modules_type_check_against_the_stubs(stubs, tmp_path):
    r = mypy(stubs, MODULES, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found in 2 source files" in r.stdout


def test_the_check_can_fail(stubs, tmp_path):
    """The stubs are really consulted: TensorRT 8's removed binding API is an error."""
    bad = tmp_path / "polydet_bad_trt.py"
    bad.write_text("import tensorrt as trt\n\n\ndef run(ctx: trt.IExecutionContext, stream: int) -> bool:\n"
                   "    return ctx.execute_async_v2([], stream)\n")
    r = mypy(stubs, [bad], tmp_path)
    assert r.returncode == 1
    assert '"IExecutionContext" has no attribute "execute_async_v2"' in r.stdout


def test_the_stubs_hold_every_name_we_use(stubs):
    text = (stubs / "tensorrt_bindings" / "tensorrt.pyi").read_text() + (stubs / "tensorrt" / "__init__.pyi").read_text()
    source = "".join(p.read_text() for p in MODULES)
    missing = [n for n in NAMES if not re.search(rf"\b(def {n}\b|class {n}\b|{n}\s*:)", text)]
    assert missing == []
    assert [n for n in NAMES if n not in source] == []  # the list is the modules' own, not a wish list
