"""The store guard's committed jar is built from the committed sources (reproducibly), and config paths
of the agent resolve like the log config's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from polydet.serving.server import resolve_paths
from polydet.serving.storeguard import build, jar_path


def test_the_jar_records_the_digest_of_the_current_sources():
    assert jar_path().is_file()
    m = build.read_manifest(jar_path())
    assert m["Premain-Class"] == build.AGENT_CLASS
    assert m["Polydet-Source-SHA256"] == build.source_digest(), \
        "stale jar: run `python -m polydet.serving.storeguard.build` and commit it"


def test_rebuilding_gives_the_committed_jar_byte_for_byte(tmp_path):
    if not shutil.which("javac"):
        pytest.skip("javac (a JDK) is not installed")
    if build.javac_version() != build.read_manifest(jar_path())["Polydet-Javac"]:
        pytest.skip(f"{build.javac_version()} is not the javac the jar was built with")
    out = build.build(tmp_path / "guard.jar")
    assert out.read_bytes() == jar_path().read_bytes()


def test_vmarg_paths_resolve_against_the_config_folder(tmp_path):
    props = {"vmargs": "-Xmx1g -javaagent:a/guard.jar=opt=1 -Dlog4j.configurationFile=l.xml "
                       "-javaagent:/abs/g.jar -Dother=rel/x"}
    out = resolve_paths(props, tmp_path)["vmargs"].split()
    assert out == ["-Xmx1g", f"-javaagent:{tmp_path / 'a/guard.jar'}=opt=1",
                   f"-Dlog4j.configurationFile={tmp_path / 'l.xml'}", "-javaagent:/abs/g.jar", "-Dother=rel/x"]
    assert Path(out[1][len("-javaagent:"):].split("=")[0]).is_absolute()
