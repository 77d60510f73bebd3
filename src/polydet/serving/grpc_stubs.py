"""gRPC stubs for TorchServe, generated from the .proto files inside the installed torchserve.

TorchServe's wheel ships no .proto files in site-packages; inference.proto and management.proto are
inside ts/frontend/model-server.jar. They are extracted and compiled with grpc_tools.protoc into
``$POLYDET_CACHE`` (default ``~/.cache/polydet``) ``/grpc/<torchserve version>/`` on first use, so the
stubs always match the server that is installed and nothing is copied into the repository.
google/rpc/status.proto is imported from googleapis-common-protos at run time. An empty cache (a fresh
machine, CI) is the normal first state: :func:`cache_dir` and :func:`load` generate the stubs when missing.
"""

from __future__ import annotations

import importlib
import os
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

from ..errors import MissingDependencyError, require

PROTOS = ("inference.proto", "management.proto")
MODULES = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
_loaded: SimpleNamespace | None = None


def _location() -> Path:
    from ts.version import __version__

    root = Path(os.environ.get("POLYDET_CACHE") or Path.home() / ".cache" / "polydet")
    return root / "grpc" / f"torchserve-{__version__}"


def _complete(out: Path) -> bool:
    return all((out / f"{name}.py").is_file() for name in MODULES)


def cache_dir() -> Path:
    """This TorchServe's stubs folder in the cache, with the stubs in it: generated there if missing."""
    out = _location()
    if not _complete(out):
        generate(out)
    return out


def _jar() -> Path:
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise MissingDependencyError(f"TorchServe's frontend jar not found at {jar}")
    return jar


def generate(out: Path | None = None) -> Path:
    """Extract the protos from the jar and compile them into ``out``; return ``out``."""
    require("grpc_tools", "grpcio-tools", "serve")
    from grpc_tools import protoc

    out = Path(out or _location())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")  # build aside, rename: safe for parallel first use
    (tmp / "proto").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_jar()) as z:
        for name in PROTOS:
            (tmp / "proto" / name).write_bytes(z.read(name))
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    import google.rpc.status_pb2 as status_pb2  # googleapis-common-protos carries status.proto

    googleapis = Path(status_pb2.__file__).parents[2]
    for name in PROTOS:
        args = ["protoc", f"-I{tmp / 'proto'}", f"-I{well_known}", f"-I{googleapis}",
                f"--python_out={tmp}", f"--grpc_python_out={tmp}", str(tmp / "proto" / name)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {name} (args {args})")
    try:
        tmp.rename(out)
    except OSError:  # another process won the race; use its stubs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load() -> SimpleNamespace:
    """Return the stub modules: inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc."""
    global _loaded
    if _loaded is not None:
        return _loaded
    require("grpc", "grpcio", "serve")
    require("google.rpc.status_pb2", "googleapis-common-protos", "serve")
    out = cache_dir()
    # The generated *_pb2_grpc modules import their *_pb2 siblings as top-level modules.
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    mods = {name: importlib.import_module(name) for name in MODULES}
    _loaded = SimpleNamespace(**mods)
    return _loaded
