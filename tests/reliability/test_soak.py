"""A short run of benchmarks/soak.py (the full 20,000-request run and its numbers are in RELIABILITY.md)."""

from __future__ import annotations

import json

import pytest

from serving_helpers import REPO, load_file

# The Java frontend's RSS climbs for its first ~800 requests (JIT, heap sizing; measured: 262 -> 360 MiB,
# then flat within 1 % for 2,200 more), so the baseline is taken after 1,000.
REQUESTS, WARMUP = 1500, 1000


def _soak_module():
    return load_file("polydet_soak", REPO / "benchmarks" / "soak.py")


def test_short_soak_keeps_memory_flat_and_answers_everything(store, tmp_path, capsys):
    out = tmp_path / "soak.json"
    rc = _soak_module().main(["--requests", str(REQUESTS), "--warmup", str(WARMUP), "--concurrency", "4",
                              "--model-store", str(store), "--json-out", str(out)])
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert rc == 0, printed
    assert res["ok"] and res["failures"] == {} and not res["worker_restarted"]
    assert res["requests"] == REQUESTS and res["samples"] >= 30
    for proc in ("worker", "java"):
        assert 0 < res[proc]["baseline_mib"] and res[proc]["growth"] < res["max_growth"], (proc, res[proc])
    assert "OK" in printed.splitlines()[-1]


def test_soak_through_the_proxy_with_slow_bodies_and_bombs_mixed_in(store, tmp_path, capsys):
    """Issue 17's Done-when, short form (RELIABILITY.md has the 5-minute run): small-file bombs among the
    requests and rounds of stalled 15 MiB bodies at nginx; every good request 200, every bomb its 4xx, no
    stalled connection left open, memory within its budgets."""
    from polydet.serving.proxy import nginx_binary

    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or `make sysdeps`)")
    out = tmp_path / "soak.json"
    rc = _soak_module().main(["--duration", "120", "--requests", "100000", "--warmup", str(WARMUP - 200), "--concurrency", "4",
                              "--proxy", "--probes", "--model-store", str(store), "--json-out", str(out)])
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert rc == 0 and res["ok"], printed
    assert res["failures"] == {} and res["requests"] > WARMUP
    probes = res["slow_body_probes"]
    assert probes["rounds"] >= 2 and "open" not in probes["ended"] and set(probes["ended"]) <= {"401", "503", ""}
    assert res["java"]["peak_mib"] <= res["java_budget_mib"]
