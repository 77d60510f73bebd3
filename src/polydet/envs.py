"""Isolated virtual environments for toolchains that conflict with polydet's pins.

KServe downgrades protobuf/psutil/grpcio-tools, PyTriton needs numpy < 2, rknn-toolkit2 pins its own
onnx/torch: none of them may be installed into polydet's environment. Each lives in a venv that polydet
builds once and reuses, keyed by a hash of what it installs, and is only ever called through a
subprocess (``run``), never imported here.

polydet itself is made importable in such a venv without installing it (its dependencies would pull
the conflicting pins back): a folder in the venv holds a link to this polydet package and a ``.pth``
file puts that folder on the venv's path. The spec lists the dependencies the code run there needs.

Where the venvs live: ``$POLYDET_ENVS``, else ``$XDG_DATA_HOME/polydet/envs`` (``~/.local/share/...``).
``make test`` points it at ``.venvs/`` in the checkout, so a fresh clone builds each venv once per run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STAMP = ".polydet-env-ready"


class EnvBuildError(RuntimeError):
    """An isolated venv could not be built; the message names the venv, the command and pip's last lines."""


@dataclass(frozen=True)
class EnvSpec:
    name: str
    requirements: tuple[str, ...]  # pip requirement strings; pin them, with the reason where they are declared
    with_polydet: bool = True  # link this polydet package into the venv (see the module docstring)
    pip_args: tuple[str, ...] = field(default=())  # extra pip install arguments, e.g. ("--no-deps",)

    def key(self) -> str:
        text = "\n".join((self.name, *self.requirements, *self.pip_args, str(self.with_polydet), sys.version))
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def envs_root() -> Path:
    if os.environ.get("POLYDET_ENVS"):
        return Path(os.environ["POLYDET_ENVS"]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "polydet" / "envs"


def env_dir(spec: EnvSpec) -> Path:
    return envs_root() / f"{spec.name}-{spec.key()}"


def python_of(spec: EnvSpec) -> Path:
    return env_dir(spec) / "bin" / "python"


def is_ready(spec: EnvSpec) -> bool:
    return (env_dir(spec) / STAMP).is_file()


def _link_polydet(where: Path) -> None:
    package = Path(__file__).resolve().parent
    link_dir = where / "polydet-link"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / "polydet"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(package, target_is_directory=True)
    site = subprocess.run(
        [str(where / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(site) / "polydet-link.pth").write_text(f"{link_dir}\n")


def _pip(where: Path, args: Sequence[str], log: Callable[[str], None]) -> None:
    cmd = [str(where / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log(f"[polydet env {where.name}] pip install {' '.join(args)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise EnvBuildError(f"building the isolated venv {where}: `{' '.join(cmd)}` failed:\n{tail}")


def ensure(spec: EnvSpec, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Path:
    """Build the venv of ``spec`` unless it is already built; return its python. Safe to call concurrently."""
    where = env_dir(spec)
    if is_ready(spec):
        return python_of(spec)
    where.parent.mkdir(parents=True, exist_ok=True)
    with open(where.parent / f".{where.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second caller waits here, then finds the stamp
        if is_ready(spec):
            return python_of(spec)
        log(f"[polydet env] building {where} (once; reused afterwards)")
        venv.EnvBuilder(with_pip=True, clear=True).create(where)
        if spec.requirements:
            _pip(where, [*spec.pip_args, *spec.requirements], log)
        if spec.with_polydet:
            _link_polydet(where)
        (where / STAMP).write_text("\n".join(spec.requirements) + "\n")
    return python_of(spec)


def run(spec: EnvSpec, args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``python args...`` in the venv of ``spec`` (built first if needed); kwargs go to subprocess.run."""
    return subprocess.run([str(ensure(spec)), *args], **kwargs)


def popen(spec: EnvSpec, args: Sequence[str], **kwargs) -> subprocess.Popen:
    """Start ``python args...`` in the venv of ``spec`` (a server, stopped by the caller through its PID)."""
    return subprocess.Popen([str(ensure(spec)), *args], **kwargs)
