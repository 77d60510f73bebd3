"""Read a pickled training checkpoint without running any of its code.

A YOLOv5 training checkpoint is a pickle of whole ``nn.Module`` objects: unpickling it normally imports
the training repository's ``models.*`` and calls whatever the pickle names, which is arbitrary code
execution. Here every global the pickle names goes through ``find_class``, which returns either

- an inert stand-in (``Stub``) for the model classes (the repository's ``models.yolo``,
  ``models.common``, ``models.experimental``, its ``utils.*``, ``torch.nn`` layers and containers,
  ``argparse.Namespace``): the pickle's NEWOBJ/REDUCE make a bare instance and BUILD stores the state
  (``__dict__``: ``_modules``, ``_parameters``, ``_buffers``, attributes) in it; nothing else happens;
- a real, data-only constructor from a short allowlist (tensor rebuilding, OrderedDict, numpy arrays and
  scalars, torch dtypes/devices/sizes, pure paths), the set torch's own ``weights_only`` loader trusts;
- or, for anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``...), a ``Refused``
  stand-in that is just as inert, so that the load finishes, the refused object's place in the
  checkpoint can be named, and ``UnsafeCheckpointError`` is raised. Nothing named by the pickle runs.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import pathlib
import pickle
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelLoadError

# Namespaces whose classes become stand-ins. The training repository's model code and helpers (never
# imported: the names only label the stand-ins) and torch's layers (stand-ins too, so a pickle's state
# never reaches a real module's __setstate__).
STUB_MODULES = ("models.yolo", "models.common", "models.experimental", "argparse")  # argparse: Namespace
STUB_PREFIXES = ("models.", "utils.", "torch.nn.modules.")
_TORCH_REBUILD = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state")


class UnsafeCheckpointError(ModelLoadError):
    """The checkpoint names a global outside the allowlist (e.g. ``os.system``); it was not run."""


class UnreadableCheckpointError(ModelLoadError):
    """The file is not a torch pickle at all (corrupt, truncated, another format)."""


class Stub:
    """Inert stand-in for a class named by a checkpoint; keeps the pickled state and nothing else."""

    pickle_global = ("", "")  # (module, name) as written in the pickle
    refused = False

    def __init__(self, *args, **kwargs):  # REDUCE calls the class: keep the arguments, run nothing
        self.__dict__["stub_args"] = (args, kwargs)

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self.__dict__["stub_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {'.'.join(self.pickle_global)}>"


_STUBS: dict[tuple[str, str, bool], type[Stub]] = {}


def stub_class(module: str, name: str, refused: bool = False) -> type[Stub]:
    key = (module, name, refused)
    if key not in _STUBS:
        label = name.replace(".", "_") if name.replace(".", "_").isidentifier() else "Unnamed"
        _STUBS[key] = type(label, (Stub,), {"pickle_global": (module, name), "refused": refused,
                                            "__module__": __name__})
    return _STUBS[key]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store bytes (numpy buffers) as ``_codecs.encode(text, 'latin1')``; only that
    (compared as a string: looking a codec up would import it)."""
    if not isinstance(encoding, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "l1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _module_attr(module, name: str):
    """``module.name`` from the module's own namespace: ``getattr`` could run a lazy-import ``__getattr__``."""
    return vars(module).get(name) if module is not None else None


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _data_global(module: str, name: str):
    """A real constructor that only builds data, or None."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "builtins" and name in ("set", "frozenset", "slice", "complex"):
        return {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex}[name]
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    if module == "torch._utils" and name in _TORCH_REBUILD:
        return getattr(torch._utils, name)
    if module == "torch" and (name in ("Size", "device") or isinstance(_module_attr(torch, name), torch.dtype)):
        return _module_attr(torch, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_multiarray(), name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        dtype_class = _module_attr(vars(np).get("dtypes"), name)  # numpy >= 1.25 pickles dtypes by class
        if isinstance(dtype_class, type) and issubclass(dtype_class, np.dtype):
            return dtype_class
    if module == "pathlib" and name in ("Path", "PosixPath", "PurePosixPath"):
        return pathlib.PurePosixPath  # a pure path does no I/O when built
    if module == "pathlib" and name in ("WindowsPath", "PureWindowsPath"):
        return pathlib.PureWindowsPath
    return None


def _is_stub_namespace(module: str, name: str) -> bool:
    if not all(part.isidentifier() for part in name.split(".")):
        return False
    if module.startswith("torch.nn.modules."):  # only real layer/container names, e.g. Conv2d, Sequential
        layer = _module_attr(torch.nn, name)
        return isinstance(layer, type) and issubclass(layer, torch.nn.Module)
    return module in STUB_MODULES or module.startswith(STUB_PREFIXES)


def resolve_global(module: str, name: str, refused: list[str]):
    """What ``find_class(module, name)`` returns; records refused names in ``refused``."""
    # Protocol-2 pickles (torch's default) spell some names the Python 2 way (``__builtin__.set``);
    # pickle's own find_class renames them through these tables, so do the same.
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    data = _data_global(module, name)
    if data is not None:
        return data
    if _is_stub_namespace(module, name):
        return stub_class(module, name)
    refused.append(f"{module}.{name}")
    return stub_class(module, name, refused=True)


def _pickle_module(refused: list[str]) -> types.SimpleNamespace:
    """A stand-in for the ``pickle`` module, for ``torch.load(pickle_module=...)``: torch subclasses its
    Unpickler (adding tensor storages) and calls its ``load`` for the legacy format's headers."""

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            return resolve_global(module, name, refused)

    def load(f, **kwargs):
        return RestrictedUnpickler(f, **kwargs).load()

    return types.SimpleNamespace(__name__="polydet.restricted_pickle", Unpickler=RestrictedUnpickler,
                                 load=load, UnpicklingError=pickle.UnpicklingError)


def is_torchscript_zip(path: Path) -> bool:
    """TorchScript archives are torch zips too; theirs has a code/ folder (torch.load would run it)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 2)[1:2] == ["code"] for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def restricted_load(path: str | Path):
    """Unpickle a torch checkpoint with stand-ins for its classes. Raises UnsafeCheckpointError naming
    every refused global and where it sits; ModelLoadError when the file is not a readable pickle."""
    path = Path(path)
    if is_torchscript_zip(path):
        raise ModelLoadError(f"{path} is a TorchScript archive, not a checkpoint: pass it as a model artifact")
    refused: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-format pickles warn that a stand-in has no source
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module(refused))
    except Exception as e:  # noqa: BLE001 - a corrupt or hostile pickle can fail anywhere
        if refused:
            raise UnsafeCheckpointError(_refusal(path, refused, {})) from None
        raise UnreadableCheckpointError(f"cannot read {path} as a torch checkpoint: {e}") from e
    if refused:
        raise UnsafeCheckpointError(_refusal(path, refused, find_refused(obj)))
    return obj


def _refusal(path: Path, refused: list[str], where: dict[str, list[str]]) -> str:
    lines = [f"refused to load {path}: the pickle names globals outside polydet's allowlist (not run; "
             "a pickle is code, polydet only reads model data from it):"]
    for name in dict.fromkeys(refused):
        places = where.get(name) or ["(not kept in the loaded object)"]
        lines.append(f"  {name} at {', '.join(places[:4])}{' ...' if len(places) > 4 else ''}")
    return "\n".join(lines)


def _children(obj):
    """(label, child) pairs of a container or stand-in, labelled as a path segment."""
    if isinstance(obj, dict):
        return [(f"[{k!r}]", v) for k, v in obj.items()] + [(f"<key {k!r}>", k) for k in obj if isinstance(k, Stub)]
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [("{...}", v) for v in obj]
    if isinstance(obj, Stub):
        out = []
        for k, v in obj.__dict__.items():
            if k in ("_modules", "_parameters", "_buffers") and isinstance(v, dict):
                out += [(f".{name}", child) for name, child in v.items()]
            else:
                out.append((f".{k}", v))
        return out
    return []


def find_refused(obj, limit: int = 100_000) -> dict[str, list[str]]:
    """``{global name: [paths in the checkpoint]}`` of every refused stand-in (class or instance)."""
    found: dict[str, list[str]] = {}
    stack, seen = [("checkpoint", obj)], set()
    while stack and len(seen) < limit:
        path, o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        cls = o if isinstance(o, type) and issubclass(o, Stub) else type(o) if isinstance(o, Stub) else None
        if cls is not None and cls.refused:
            found.setdefault(".".join(cls.pickle_global), []).append(path)
        stack.extend((path + label, child) for label, child in reversed(_children(o)))
    return found
