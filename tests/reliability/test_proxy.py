"""nginx in front of a real TorchServe (polydet.serving.proxy): slow and unauthenticated clients hold nothing in
the Java frontend, and a scale-down under load fails no request. Each has a control straight at TorchServe that
shows the hole the proxy closes (issue 17, items 2 and 3)."""

from __future__ import annotations

import sys
import time

import pytest
import requests
from bad_inputs import OCTET, jpeg, page
from probes import MIB, answers, stall
from reliability_helpers import Traffic, start_server, wait_workers
from serving_helpers import auth

from polydet.serving.client import ClientError, RestClient
from polydet.serving.proxy import (
    CLIENT_TIMEOUT_S,
    CONN_PER_CLIENT,
    Proxy,
    free_port,
    nginx_binary,
)

# The frontend's RSS may grow by at most this while 40 such connections stall at the proxy: nothing reaches
# TorchServe, so what remains is the noise of an idle JVM (measured: RELIABILITY.md). The control straight at
# TorchServe grows by more than this with 20 connections.
RSS_BOUND_MIB = 64
BODY = jpeg(page())


@pytest.fixture(scope="module")
def server(tmp_path_factory, store):
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or `make sysdeps`)")
    ts = start_server(tmp_path_factory, store)
    yield ts
    ts.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, server):
    upstream = server.inference_url.removeprefix("http://")
    p = Proxy(tmp_path_factory.mktemp("nginx"), upstream, free_port(),
              max_body=int(server.properties["max_request_size"])).start()
    yield p
    p.stop()


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / MIB


def probe(ts, port: int, n: int, token: str | None, hold_s: float = 4.0) -> tuple[float, float, list]:
    """The slow-body probe: the frontend's RSS before and (at most) while ``n`` connections stall."""
    before = rss_mib(ts.pid)
    socks = stall(port, n, token)
    peak, deadline = before, time.monotonic() + hold_s
    while time.monotonic() < deadline:
        peak = max(peak, rss_mib(ts.pid))
        time.sleep(0.2)
    return before, peak, socks


@pytest.mark.parametrize("token", [False, True], ids=["no_token", "inference_token"])
def test_stalled_bodies_through_the_proxy_hold_no_frontend_memory(server, proxy, token):
    """40 connections declare 16 MiB, send 15 MiB and stall: without a token nginx answers 401 before reading
    the body; with one it buffers the body in a temp file, answers 503 beyond CONN_PER_CLIENT connections and
    closes the rest after CLIENT_TIMEOUT_S. TorchServe sees nothing; its RSS stays within RSS_BOUND_MIB."""
    n = 40
    before, peak, socks = probe(server, proxy.port, n, server.tokens.inference if token else None)
    ends = answers(socks, within=CLIENT_TIMEOUT_S + 10)
    print(f"\nthrough nginx, {n} stalled bodies (15 of 16 MiB sent) ({'with' if token else 'without'} a token): frontend RSS "
          f"{before:.0f} -> peak {peak:.0f} MiB; answers {sorted({s for s, _ in ends})}, last closed "
          f"{max(t for _, t in ends):.1f} s after the hold", file=sys.stderr)
    assert peak - before < RSS_BOUND_MIB
    statuses = [s for s, _ in ends]
    assert "open" not in statuses, "nginx left a stalled connection open"
    if token:
        # 408 is not sent: nginx just closes a connection whose body timed out.
        assert statuses.count("503") == n - CONN_PER_CLIENT and set(statuses) <= {"503", ""}, statuses
    else:
        assert statuses == ["401"] * n
    # TorchServe still answers through the proxy afterwards.
    r = requests.post(f"{proxy.url}/predictions/polydet", data=BODY,
                      headers={**auth(server.tokens.inference), **OCTET}, timeout=60)
    assert r.status_code == 200, r.text[:300]


def test_the_proxy_refuses_before_reading(proxy, server):
    r = requests.post(f"{proxy.url}/predictions/polydet", data=BODY, headers=OCTET, timeout=30)
    assert (r.status_code, r.json()["code"]) == (401, 401)
    big = b"\0" * (int(server.properties["max_request_size"]) + 1)
    r = requests.post(f"{proxy.url}/predictions/polydet", data=big, timeout=30,
                      headers={**auth(server.tokens.inference), **OCTET})
    assert r.status_code == 413


def test_control_stalled_bodies_straight_at_torchserve_grow_the_frontend(tmp_path_factory, store):
    """The hole the proxy closes: 20 such connections straight at TorchServe grow its RSS by more than the
    bound (its own server: the memory does not come back)."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed: the proxy this control is compared with cannot run")
    ts = start_server(tmp_path_factory, store)
    try:
        before, peak, socks = probe(ts, ts.ports.inference, 20, None)
        for s in socks:
            s.close()
    finally:
        ts.stop()
    print(f"\nstraight at TorchServe, 20 stalled bodies (15 of 16 MiB sent) without a token: frontend RSS {before:.0f} -> "
          f"peak {peak:.0f} MiB", file=sys.stderr)
    assert peak - before > RSS_BOUND_MIB


def test_stalled_bodies_straight_at_torchserve_are_capped_and_given_back(tmp_path_factory, store):
    """Without the proxy, the shipped vmargs bound the same attack (issue 17.2): 60 stalled 15 MiB bodies
    without a token. Before (direct memory = -Xmx, pooled): 203 -> 1,327 MiB, 1,311 MiB after they closed.
    Now the direct-memory cap holds the peak and the unpooled allocator gives the memory back."""
    ts = start_server(tmp_path_factory, store)
    try:
        assert "-XX:MaxDirectMemorySize=256m" in ts.properties["vmargs"], ts.properties["vmargs"]
        before, peak, socks = probe(ts, ts.ports.inference, 60, None, hold_s=8.0)
        for s in socks:
            s.close()
        time.sleep(15)
        after = rss_mib(ts.pid)
        r = requests.post(f"{ts.inference_url}/predictions/polydet", data=BODY, timeout=60,
                          headers={**auth(ts.tokens.inference), **OCTET})
    finally:
        ts.stop()
    print(f"\nstraight at TorchServe, 60 stalled bodies: frontend RSS {before:.0f} -> peak {peak:.0f} -> "
          f"{after:.0f} MiB 15 s after they closed", file=sys.stderr)
    assert peak - before < 256 + 160  # the direct cap plus the heap's own growth (measured: +327)
    assert after - before < 160  # given back (measured: +112; pooled it kept +1,108)
    assert r.status_code == 200, r.text[:300]


def scale_down_under_load(ts, url: str, rounds: int = 3, threads: int = 6) -> list:
    """``threads`` clients post to ``url`` while the model goes 1 -> 2 -> 1 workers ``rounds`` times
    (synchronous scale-downs). Returns the outcomes."""
    rest = RestClient(ts.inference_url, ts.management_url, tokens=ts.tokens)
    with Traffic(url, ts.tokens.inference, BODY, threads=threads, max_requests=50000, timeout=60) as traffic:
        traffic.wait_for(20)
        for _ in range(rounds):
            rest.scale("polydet", min_worker=2, max_worker=2)
            wait_workers(ts, 2)
            traffic.wait_for(40)
            try:
                rest.scale("polydet", min_worker=1, max_worker=1)
            except ClientError as e:  # seen: 500 with an empty message; the worker is removed all the same
                print(f"\nsynchronous scale-down answered {e.status} {e.body!r:.200}", file=sys.stderr)
            wait_workers(ts, 1)
    return traffic.snapshot()


def _report(label: str, outcomes: list) -> list:
    failed = [o for o in outcomes if o.status != 200]
    print(f"\n{label}: {len(outcomes)} requests, {len(failed)} failed "
          f"{sorted({(str(o.status), o.body[:80]) for o in failed})}", file=sys.stderr)
    return failed


def test_scale_down_under_load_through_the_proxy_fails_nothing(server, proxy):
    failed = _report("scale-down through nginx", scale_down_under_load(server, f"{proxy.url}/predictions/polydet"))
    retried = [line for line in (proxy.run_dir / "access.log").read_text().splitlines() if "upstream " in line
               and "," in line.split("upstream ", 1)[1]]
    print(f"nginx sent {len(retried)} request(s) twice: {[line.split('upstream ')[1] for line in retried]}",
          file=sys.stderr)
    assert failed == []


def test_control_scale_down_under_load_straight_at_torchserve(server, proxy):
    """Not asserted to fail (the race is timing-dependent): the count is reported."""
    outcomes = scale_down_under_load(server, f"{server.inference_url}/predictions/polydet")
    failed = _report("scale-down straight at TorchServe", outcomes)
    # 500 "Worker scaled down."/"Worker died." for a batch at the worker; a batch still filling is never
    # answered (the client's timeout ends it).
    assert all(o.status in (500, "ReadTimeout") for o in failed), failed[:3]


def test_the_rendered_config_passes_nginx_t_and_refuses_unsafe_values(tmp_path):
    import subprocess

    from polydet.errors import ConfigError
    from polydet.serving.proxy import render_config

    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or `make sysdeps`)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_config(tmp_path, "127.0.0.1:1", "127.0.0.1:2", max_body=123))
    text = conf.read_text()
    assert "@" not in text and "client_max_body_size 123;" in text
    r = subprocess.run([nginx_binary(), "-t", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "e.log")],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with pytest.raises(ConfigError):
        render_config(tmp_path, "127.0.0.1:1; include /etc/passwd", "127.0.0.1:2")


def test_serve_with_proxy_answers_through_nginx_and_stop_stops_both(tmp_path, store, capsys):
    """`polydet serve --proxy PORT` starts nginx in front (the sample request goes through it); `polydet stop`
    stops nginx and TorchServe by PID."""
    import json

    import psutil
    from serving_helpers import REPO

    from polydet.cli import main
    from polydet.serving.server import (
        STATE_FILE,
        Ports,
        read_properties,
        write_properties,
    )

    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx, or `make sysdeps`)")
    props = read_properties(REPO / "config.properties")
    props.update(Ports.free().properties())
    write_properties(props, tmp_path / "config.properties")
    (tmp_path / "model_store").symlink_to(store)
    port, nginx = free_port(), None
    try:
        assert main(["serve", "--root", str(tmp_path), "--no-build", "--proxy", str(port)]) == 0
        out = capsys.readouterr().out
        state = json.loads((tmp_path / "logs" / STATE_FILE).read_text())
        nginx = psutil.Process(state["proxy"]["pid"])
        assert f"inference  http://127.0.0.1:{port}" in out and "sample " in out, out
        assert f"http://127.0.0.1:{port}/predictions/polydet" in out
        r = requests.post(f"http://127.0.0.1:{port}/predictions/polydet", data=BODY, headers=OCTET, timeout=30)
        assert r.status_code == 401  # no token: nginx refuses before the body
    finally:
        assert main(["stop", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"nginx pid {state['proxy']['pid']} stopped" in out, out
    assert nginx is not None and not nginx.is_running()
