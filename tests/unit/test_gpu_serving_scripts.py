"""The device scripts' pure parts (issue 14): the served sweep's recommendation, its time budget, and the
AOTInductor probe's clean environment and choice of package. The device runs are scripts/gpu_serving_bench.sh."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _module(name):
    sys.path.insert(0, str(SCRIPTS))  # gpu_serving_bench imports gpu_serving_load beside it
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _module("gpu_serving_bench")


@pytest.fixture(scope="module")
def probe():
    return _module("gpu_aoti_probe")


def _row(w, b, d, ips, p99, failures=0):
    return {"workers": w, "batch_size": b, "max_batch_delay": d, "per_request": 8, "img_per_s": ips, "p99_ms": p99,
            "failures": failures, "clients": 256, "layout": f"w{w}xt1 b{b} d{d}", "gpu_mib_per_worker": 900}


def test_recommend_prefers_the_fastest_layout_within_the_p99_target(bench):
    sweep = [_row(8, 16, 5, 5200.0, 120.0), _row(4, 16, 5, 4800.0, 90.0), _row(12, 8, 2, 6000.0, 80.0, failures=3),
             _row(4, 32, 10, 4100.0, 60.0)]
    rec = bench.recommend(sweep, "polydet_aoti")
    assert (rec["min_workers"], rec["max_workers"], rec["batch_size"], rec["max_batch_delay"]) == (4, 4, 16, 5)
    assert rec["img_per_s"] == 4800 and rec["p99_ms"] == 90.0 and rec["p99_within_target"] is True
    assert rec["images_per_request"] == 8 and rec["engine"] == "polydet_aoti" and len(rec["sweep"]) == 4


def test_recommend_without_a_layout_within_target_takes_the_fastest_without_failures(bench):
    sweep = [_row(8, 16, 5, 5200.0, 120.0), _row(4, 16, 5, 4800.0, 150.0), _row(12, 8, 2, 6000.0, 80.0, failures=1)]
    rec = bench.recommend(sweep, "polydet")
    assert (rec["max_workers"], rec["batch_size"], rec["img_per_s"], rec["p99_within_target"]) == (8, 16, 5200, False)


def test_budget_counts_registration_and_each_load(bench):
    b = bench.Budget(100.0)
    assert b.fits(points=6, seconds=5.0)  # 25 + 6 * 11 = 91 s
    assert not b.fits(points=7, seconds=5.0)  # 102 s
    b.end = time.monotonic() + 20.0
    assert not b.fits(points=0, seconds=5.0)


def test_probe_loads_with_the_step_wheels_off_the_search_paths(probe):
    env = {"LD_LIBRARY_PATH": "/tmp/gb_site/nvidia/cu13/lib:/usr/local/lib", "PYTHONPATH": "/tmp/gb_site:/w/src",
           "HOME": "/root"}
    assert probe.clean_env(env) == {"LD_LIBRARY_PATH": "/usr/local/lib", "PYTHONPATH": "/w/src", "HOME": "/root"}


def test_probe_picks_the_first_loading_variant_the_backend_can_serve(probe, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "WORK", tmp_path)
    for name in probe.VARIANTS:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.pt2").write_text(name)
    rows = {"polydet_fp16_cl_meta_dyn": {"load_torch": {"ok": False}},
            "polydet_fp16_cl_plain_dyn": {"load_torch": {"ok": True}},  # no metadata: the backend cannot serve it
            "polydet_fp32_meta_dyn": {"load_torch": {"ok": True}}}
    best = tmp_path / "best" / "aoti.pt2"
    assert probe.pick_best(rows, best) == "polydet_fp32_meta_dyn"
    assert best.read_text() == "polydet_fp32_meta_dyn"
    assert probe.pick_best({"polydet_fp16_cl_meta_dyn": {"load_torch": {"ok": False}}}, tmp_path / "none.pt2") is None
