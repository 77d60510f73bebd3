"""``polydet doctor``: every runtime and converter polydet can use, checked against the versions it pins, with
the fix for each problem. Exits 1 when something required is broken (``--json``: machine-readable).

The version matrix is pyproject.toml's requirements (one owner per fact): read from the checkout's
pyproject.toml for an editable install (PEP 610's direct_url.json names the folder), else from the installed
distribution's metadata, which pip wrote from the same file. Core requirements are required; an extra's
package that is not installed is only noted, but one installed at a version the pins do not allow, or that
fails to import, is an error: polydet was checked against the pinned versions only. Beside the matrix:
Java for TorchServe, TensorRT (GPU hosts; not on PyPI) and the isolated venvs of polydet.envs (KServe,
PyTriton, rknn-toolkit2: built or not, and the toolkit version inside).

Imports run in a child process (one at a time, so a runtime that crashes its process is named, and
``NNCF_CI=1``: NNCF decides on import whether to send usage telemetry); ``--quick`` skips them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

JAVA_MIN = 17  # TorchServe 0.12's frontend (polydet.serving.server.missing_prerequisite says the same)
# TensorRT is not a pyproject requirement (not installable from PyPI); backends/tensorrt.py is written for these.
TENSORRT = SpecifierSet(">=10,<12")
# The isolated venvs: name -> "module:EnvSpec attribute" (each spec owns its pins).
ENV_SPECS = {"kserve": "polydet.fronts.launch:KSERVE", "pytriton": "polydet.fronts.launch:TRITON",
             "rknn": "polydet.export.rknn:RKNN_ENV"}
ERRORS = ("missing", "mismatch", "broken")  # statuses that fail the doctor
IMPORT_TIMEOUT_S = 300


@dataclass
class Finding:
    name: str  # distribution, tool or venv
    group: str  # "core", the extra(s) that pin it, "system", "gpu" or "venv"
    want: str  # the version specifier checked against ("" when none)
    found: str | None  # the installed version (None: absent)
    status: str  # ok | not-installed | not-built | missing | mismatch | broken
    fix: str = ""
    detail: str = ""

    @property
    def error(self) -> bool:
        return self.status in ERRORS


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_source() -> tuple[str, list[str]]:
    """(where the pins come from, polydet's requirement strings with ``; extra == "x"`` markers)."""
    dist = metadata.distribution("polydet")
    try:
        url = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        url = {}
    if url.get("dir_info", {}).get("editable") and url.get("url", "").startswith("file://"):
        pyproject = Path(url["url"][len("file://"):]) / "pyproject.toml"
        if pyproject.is_file():
            return str(pyproject), requirements_of(pyproject)
    return f"polydet {dist.version} metadata", list(dist.requires or [])


def requirements_of(pyproject: Path) -> list[str]:
    """pyproject.toml's dependencies and optional-dependencies as requirement strings (extras as markers)."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [f'{r}; extra == "{extra}"' for r in items]
    return reqs


def matrix(reqs: list[str]) -> dict[str, tuple[SpecifierSet, list[str]]]:
    """distribution -> (every specifier pinned for it, the groups pinning it); polydet's own extras skipped."""
    rows: dict[str, tuple[SpecifierSet, list[str]]] = {}
    for text in reqs:
        r = Requirement(text)
        if _norm(r.name) == "polydet":
            continue
        extra = re.search(r'extra\s*==\s*"([^"]+)"', str(r.marker or ""))
        group = extra.group(1) if extra else "core"
        spec, groups = rows.get(r.name, (SpecifierSet(), []))
        rows[r.name] = (spec & r.specifier, groups + [group])
    return rows


def check_distribution(name: str, spec: SpecifierSet, groups: list[str]) -> Finding:
    want, group = str(spec), ",".join(groups)
    required = "core" in groups
    try:
        found = metadata.version(name)
    except metadata.PackageNotFoundError:
        fix = f"pip install '{name}{want}'" if required else f"pip install 'polydet[{groups[0]}]'"
        return Finding(name, group, want, None, "missing" if required else "not-installed", fix)
    if spec and not spec.contains(found, prereleases=True):
        return Finding(name, group, want, found, "mismatch", f"pip install '{name}{want}'",
                       "polydet was checked with the pinned version only")
    return Finding(name, group, want, found, "ok")


def module_of(name: str, installed: dict[str, list[str]]) -> str | None:
    """The top-level module a distribution installs (the one named like it, else the first public one);
    ``installed``: ``importlib.metadata.packages_distributions()``."""
    mods = sorted(m for m, ds in installed.items() if _norm(name) in {_norm(d) for d in ds} and not m.startswith("_"))
    same = [m for m in mods if _norm(m) == _norm(name)]
    return (same or mods or [None])[0]


_CHILD = r"""
import importlib, json, sys
out = open(sys.argv[1], "a")  # not stdout: an imported module may print, or replace sys.stdout
for name in sys.argv[2:]:
    out.write(json.dumps({"module": name}) + "\n"); out.flush()
    try:
        importlib.import_module(name)
        error = None
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"[:500]
    out.write(json.dumps({"module": name, "error": error}) + "\n"); out.flush()
"""


def import_check(modules: list[str]) -> dict[str, str | None]:
    """module -> None (imports) or why not; a child that dies is restarted after the module that killed it."""
    import tempfile

    result: dict[str, str | None] = {}
    todo = list(modules)
    env = {**os.environ, "NNCF_CI": "1"}
    with tempfile.TemporaryDirectory(prefix="polydet-doctor-") as tmp:
        while todo:
            log = Path(tmp) / f"imports{len(result)}.jsonl"
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(log), *todo], capture_output=True, text=True,
                                  env=env, timeout=IMPORT_TIMEOUT_S)
            current = None
            for msg in map(json.loads, log.read_text().splitlines() if log.is_file() else []):
                current = msg["module"]
                if "error" in msg:
                    result[current], current = msg["error"], None
            if current is not None:  # the child died while importing it
                result[current] = f"the import killed the process (exit status {proc.returncode})"
            elif len(result) < len(modules):  # the child stopped without saying where
                for m in todo:
                    result.setdefault(m, f"not reached: the import child exited {proc.returncode}: {proc.stderr[-300:]}")
            todo = [m for m in todo if m not in result]
    return result


def add_imports(findings: list[Finding]) -> None:
    """Turn installed distributions that fail to import into ``broken`` findings."""
    dists = metadata.packages_distributions()
    installed = {f.name: module_of(f.name, dists) for f in findings if f.status in ("ok", "mismatch")}
    modules = {name: mod for name, mod in installed.items() if mod}
    errors = import_check(sorted(set(modules.values())))
    for f in findings:
        err = errors.get(modules.get(f.name, ""), None)
        if err:
            f.status, f.detail = "broken", f"import {modules[f.name]}: {err}"
            f.fix = f"pip install --force-reinstall '{f.name}{f.want}'"


def check_java(findings: list[Finding]) -> Finding | None:
    """Java for TorchServe's frontend, when torchserve is installed."""
    if not any(f.name == "torchserve" and f.found for f in findings):
        return None
    want, fix = f">={JAVA_MIN}", f"install a Java {JAVA_MIN}+ runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
    java = shutil.which("java")
    if not java:
        return Finding("java", "system", want, None, "broken", fix, "torchserve is installed but java is not on PATH")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return Finding("java", "system", want, None, "broken", fix, f"cannot read `java -version`: {out[:200]}")
    major = int(m.group(2)) if m.group(1) == "1" else int(m.group(1))  # "1.8.0" is Java 8
    found = out.split('"')[1]
    if major < JAVA_MIN:
        return Finding("java", "system", want, found, "broken", fix, f"TorchServe needs Java {JAVA_MIN}+")
    return Finding("java", "system", want, found, "ok")


def check_tensorrt() -> Finding:
    fix = ("GPU hosts only, not on PyPI: NVIDIA's wheel (pip install --extra-index-url https://pypi.nvidia.com "
           "tensorrt) or a TensorRT tarball; README, TensorRT")
    try:
        found = metadata.version("tensorrt")
    except metadata.PackageNotFoundError:
        found = None
    if found is None:
        return Finding("tensorrt", "gpu", str(TENSORRT), None, "not-installed", fix)
    if not TENSORRT.contains(found, prereleases=True):
        return Finding("tensorrt", "gpu", str(TENSORRT), found, "mismatch", fix,
                       "polydet's TensorRT backend is written for TensorRT 10.x and 11.x")
    return Finding("tensorrt", "gpu", str(TENSORRT), found, "ok")


def check_venv(name: str, where: str) -> Finding:
    """One isolated venv: not built (fine: built on first use), or built with its toolkit at the pinned version."""
    from . import envs

    module, _, attr = where.partition(":")
    try:
        spec = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        return Finding(name, "venv", "", None, "broken", "reinstall polydet", f"{where}: {e}")
    pin = Requirement(spec.requirements[0])
    build = f"built on first use; now: polydet doctor --build {name}"
    if not envs.is_ready(spec):
        return Finding(name, "venv", f"{pin.name}{pin.specifier}", None, "not-built", build, str(envs.env_dir(spec)))
    probe = ("import importlib.metadata as m, sys; print(m.version(sys.argv[1]))")
    try:
        r = subprocess.run([str(envs.python_of(spec)), "-c", probe, pin.name], capture_output=True, text=True,
                           timeout=120)
    except OSError as e:
        r = subprocess.CompletedProcess([], 1, "", str(e))
    found = r.stdout.strip() or None
    if r.returncode or not found or not pin.specifier.contains(found, prereleases=True):
        return Finding(name, "venv", f"{pin.name}{pin.specifier}", found, "broken",
                       f"rm -rf {envs.env_dir(spec)} && polydet doctor --build {name}", (r.stderr or "")[-300:])
    return Finding(name, "venv", f"{pin.name}{pin.specifier}", found, "ok", detail=str(envs.env_dir(spec)))


def diagnose(imports: bool = True) -> tuple[str, list[Finding]]:
    """(where the pins came from, every finding)."""
    source, reqs = pins_source()
    findings = [check_distribution(name, spec, groups) for name, (spec, groups) in matrix(reqs).items()]
    if imports:
        add_imports(findings)
    java = check_java(findings)
    findings += ([java] if java else []) + [check_tensorrt()]
    findings += [check_venv(name, where) for name, where in ENV_SPECS.items()]
    return source, findings


def backends(findings: list[Finding]) -> list[dict]:
    """Each backend's manifest (polydet.backends: Backend.manifest()) and whether it can run here: every
    distribution it imports installed without an error, and its isolated venv not broken (an unbuilt one
    is built at the first use)."""
    from .backends import backend_classes

    state = {_norm(f.name): f for f in findings}
    rows = []
    for cls in backend_classes():
        m = cls.manifest()
        fine = {d: ("ok",) for d in m["runtime"]} | ({m["env"]: ("ok", "not-built")} if m["env"] else {})
        why = [f"{d} {state[_norm(d)].status}" if _norm(d) in state else f"{d} not checked" for d in fine
               if _norm(d) not in state or state[_norm(d)].status not in fine[d]]
        rows.append({**m, "usable": not why, "why_not": why})
    return rows


def report(source: str, findings: list[Finding], rows: list[dict]) -> str:
    lines = [f"polydet doctor: versions pinned by {source}"]
    for f in findings:
        lines.append(f"{f.status:>13}  {f.name} {f.found or '-'} ({f.group}: {f.want or 'any'})"
                     + (f"  -> {f.fix}" if f.status != "ok" and f.fix else "") + (f"  [{f.detail}]" if f.error else ""))
    for b in rows:
        state = "usable" if b["usable"] else f"not usable here ({', '.join(b['why_not'])})"
        lines.append(f"backend {b['name']}: {state}; {'/'.join(b['devices'])}, batch {b['batch']}, "
                     f"{' '.join(b['precisions']) or 'any precision'}, files {' '.join(b['files'])}")
    bad = [f for f in findings if f.error]
    lines.append(f"{len(bad)} problem(s)" if bad else "no problems")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet doctor", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    p.add_argument("--quick", action="store_true", help="versions only: do not import each runtime")
    p.add_argument("--build", metavar="VENV", choices=list(ENV_SPECS), help="build an isolated venv now, then check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.build:
        from . import envs

        module, _, attr = ENV_SPECS[args.build].partition(":")
        envs.ensure(getattr(importlib.import_module(module), attr))
    source, findings = diagnose(imports=not args.quick)
    ok, rows = not any(f.error for f in findings), backends(findings)
    if args.json:
        print(json.dumps({"ok": ok, "source": source, "findings": [asdict(f) for f in findings], "backends": rows},
                         indent=1))
    else:
        print(report(source, findings, rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
