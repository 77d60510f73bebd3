"""`polydet serve` / `polydet stop` end to end, in a copy of the repository layout on free ports."""

from __future__ import annotations

import json

import psutil
import pytest
from serving_helpers import REPO, assert_contract, encode, page_image

from polydet.serving.server import STATE_FILE, Ports, read_properties, write_properties


@pytest.fixture
def root(tmp_path, model_store):
    """ROOT/config.properties (the repo's, on free ports), ROOT/model_store, ROOT/examples/page.jpg."""
    props = read_properties(REPO / "config.properties")
    props.update(Ports.free().properties())
    write_properties(props, tmp_path / "config.properties")
    (tmp_path / "model_store").symlink_to(model_store)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "page.jpg").write_bytes(encode(page_image()))
    return tmp_path


def test_serve_waits_ready_prints_detections_and_stop_stops_it(root, capsys):
    from polydet.cli import main

    java, workers = None, []
    try:
        assert main(["serve", "--root", str(root), "--no-build"]) == 0
        out = capsys.readouterr().out
        state = json.loads((root / "logs" / STATE_FILE).read_text())
        java = psutil.Process(state["pid"])
        workers = java.children(recursive=True)
        assert java.is_running() and workers, "the Java frontend and its worker run after serve returns"
        assert f"TorchServe pid {state['pid']}: model 'polydet' READY" in out
        sample = json.loads(out.split("sample ", 1)[1].splitlines()[1])
        assert_contract(sample, 480, 360)
        assert "stop: polydet stop" in out
        assert (root / "key_file.json").exists()

        assert main(["serve", "--root", str(root), "--no-build"]) == 1  # one server per folder
        assert "already running" in capsys.readouterr().err
    finally:
        assert main(["stop", "--root", str(root)]) == 0
    assert "stopped" in capsys.readouterr().out
    assert java is not None and not java.is_running() and not any(w.is_running() for w in workers)
    assert not (root / "logs" / STATE_FILE).exists() and not (root / "key_file.json").exists()
    assert main(["stop", "--root", str(root)]) == 0  # nothing left to stop: says so, no error
    assert "no TorchServe started" in capsys.readouterr().out
