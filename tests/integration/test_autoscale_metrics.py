"""Metrics for autoscaling (issue 15.5-6) on a real TorchServe under a known closed-loop load: queue depth and
in-flight requests by Little's law over TorchServe's own counters, checked against what the clients saw and
against a bound the batch size sets; the adapter's query on a real Prometheus; every metric the dashboard and
the alert rules query present on /metrics; a worker restart seen by the restart query; and the pod's nginx
(polydet.serving.podproxy) with Secret keys, key rotation and a renewed TorchServe key.

One TorchServe for the module (conftest: 1 worker, batchSize 4, maxBatchDelay 200 ms)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml
from conftest import ARCHIVE_ENV
from serving_helpers import REPO, assert_same_result, auth, load_file

DEPLOY = REPO / "deploy"
BATCH, WORKERS = int(ARCHIVE_ENV["BATCH_SIZE"]), int(ARCHIVE_ENV["MAX_WORKERS"])
LABELS = 'namespace="polydet-test",pod="polydet-0"'  # what Prometheus attaches, as the Kubernetes scrape would
OCTET = {"Content-Type": "application/octet-stream"}


def counters(server) -> dict[str, float]:
    """TorchServe's ts_* counters of the model polydet."""
    out = {}
    for line in requests.get(f"{server.metrics_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ts_") and 'model_name="polydet"' in line:
            out[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


@dataclass
class Phase:
    clients: int
    start: float = 0.0
    end: float = 0.0
    calls: list = field(default_factory=list)  # (sent, answered, status) in time.time() seconds
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)

    def delta(self, name: str) -> float:
        return self.after.get(name, 0.0) - self.before.get(name, 0.0)

    def client_in_flight(self, a: float | None = None, b: float | None = None) -> float:
        """Time-averaged number of requests the clients had outstanding over [a, b]."""
        a, b = a or self.start, b or self.end
        return sum(max(0.0, min(t1, b) - max(t0, a)) for t0, t1, _ in self.calls) / (b - a)


def load(server, body: bytes, clients: int, seconds: float) -> Phase:
    """``clients`` closed-loop clients posting ``body`` for ``seconds``; TorchServe's counters before and after."""
    phase, lock = Phase(clients, before=counters(server)), threading.Lock()
    deadline = time.time() + seconds
    headers = {**OCTET, **auth(server.tokens.inference)}

    def client():
        with requests.Session() as s:
            while time.time() < deadline:
                t0 = time.time()
                r = s.post(f"{server.inference_url}/predictions/polydet", data=body, headers=headers, timeout=60)
                with lock:
                    phase.calls.append((t0, time.time(), r.status_code))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    phase.start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.end = time.time()
    phase.after = counters(server)
    return phase


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """A real Prometheus scraping the server every second, with deploy/prometheus/alerts.yaml loaded."""
    exe = shutil.which("prometheus")
    if not exe:
        pytest.skip("Prometheus is not installed (Debian package prometheus; `make sysdeps` installs it)")
    d = tmp_path_factory.mktemp("prometheus")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shutil.copy(DEPLOY / "prometheus" / "alerts.yaml", d / "alerts.yaml")
    (d / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["alerts.yaml"],
        "scrape_configs": [{"job_name": "polydet", "static_configs": [{
            "targets": [f"127.0.0.1:{server.ports.metrics}"], "labels": {"namespace": "polydet-test", "pod": "polydet-0"}}]}]}))
    log = open(d / "prometheus.log", "wb")
    proc = subprocess.Popen([exe, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while not _query(api, f'up{{job="polydet",{LABELS}}} == 1', quiet=True):
            assert proc.poll() is None and time.monotonic() < deadline, (d / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _query(api: str, expr: str, at: float | None = None, quiet: bool = False) -> list:
    try:
        r = requests.get(f"{api}/query", params={"query": expr, **({"time": at} if at else {})}, timeout=10)
    except requests.ConnectionError:
        if quiet:
            return []
        raise
    if quiet and not r.ok:
        return []
    assert r.ok and r.json()["status"] == "success", f"{expr}: {r.text[:500]}"
    return r.json()["data"]["result"]


def _value(api: str, expr: str, at: float | None = None) -> float:
    (row,) = _query(api, expr, at)
    return float(row["value"][1])


@pytest.fixture(scope="module")
def phases(server, jpeg, prometheus):
    """One client for 8 s, then 2 x BATCH clients for 20 s (Prometheus scraping throughout)."""
    load(server, jpeg, 2, 3)  # warm-up
    return {1: load(server, jpeg, 1, 8), 2 * BATCH: load(server, jpeg, 2 * BATCH, 20)}


def test_idle_counters_stand_still(server, phases, prometheus):
    first = counters(server)
    time.sleep(2.5)  # Prometheus scrapes meanwhile: scraping is not a request
    assert counters(server) == first and set(first) == {
        "ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds"}


def test_queue_depth_and_in_flight_follow_the_load(phases):
    for clients, p in phases.items():
        assert {s for *_, s in p.calls} == {200}
        assert p.delta("ts_inference_requests_total") == len(p.calls)  # exact: one count per request
        server_s = p.delta("ts_inference_latency_microseconds") / 1e6
        client_s = sum(t1 - t0 for t0, t1, _ in p.calls)
        # TorchServe's time per request is part of the client's: its sum is below, by the client's and the
        # network's share only.
        assert 0.75 * client_s <= server_s <= client_s, (clients, server_s, client_s)
        duration = p.end - p.start
        in_flight, queue = server_s / duration, p.delta("ts_queue_latency_microseconds") / 1e6 / duration
        print(f"\n{clients} client(s): {len(p.calls)} requests in {duration:.1f} s; in flight {in_flight:.2f} "
              f"(clients {p.client_in_flight():.2f}), waiting in the queue {queue:.2f}")
        assert in_flight <= clients
        # A request in TorchServe waits in the queue or is in a worker's batch (at most BATCH per worker).
        assert max(0.0, in_flight - BATCH * WORKERS - 0.5) <= queue <= in_flight
    # TorchServe stamps a job "scheduled" when its batch goes to the worker (BatchAggregator.getRequest), after
    # the aggregator waited up to maxBatchDelay for partners: a lone request's queue time is that whole delay.
    lone, delay = phases[1], int(ARCHIVE_ENV["MAX_BATCH_DELAY"]) / 1e3
    assert 0.9 * delay <= lone.delta("ts_queue_latency_microseconds") / 1e6 / len(lone.calls) <= delay + 0.05
    busy = phases[2 * BATCH]
    assert busy.delta("ts_queue_latency_microseconds") / 1e6 / (busy.end - busy.start) >= 2.0


def adapter_query(name: str, window: str) -> str:
    """The adapter rule's metricsQuery as the adapter fills it for the HPA's selector (model_name=polydet)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "adapter-rules.yaml").read_text())["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    series = re.fullmatch(r"\^(\w+)\$", rule["name"]["matches"]).group(1)
    q = rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.GroupBy>>", "pod")
    q = q.replace("<<.LabelMatchers>>", f'{LABELS},model_name="polydet"')
    assert "[1m]" in q
    return q.replace("[1m]", window)  # the test's load lasts 20 s, not minutes


def test_the_adapters_queries_on_a_real_prometheus(phases, prometheus):
    busy = phases[2 * BATCH]
    at = busy.end - 1.5
    time.sleep(max(0.0, busy.end + 2.5 - time.time()))  # the last samples of the window are scraped
    in_flight = _value(prometheus, adapter_query("polydet_in_flight", "[15s]"), at)
    queue = _value(prometheus, adapter_query("polydet_queue_depth", "[15s]"), at)
    clients_saw = busy.client_in_flight(at - 15, at)
    print(f"\nPrometheus, 15 s before the end of the load: in flight {in_flight:.2f} (clients {clients_saw:.2f}), "
          f"queue {queue:.2f}")
    assert 0.7 * clients_saw <= in_flight <= 1.1 * clients_saw
    assert max(0.0, in_flight - BATCH * WORKERS - 1.0) <= queue <= in_flight


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", expr))


def _dashboard():
    return load_file("polydet_dashboard", DEPLOY / "grafana" / "dashboard.py")


def test_every_metric_of_the_dashboard_and_the_alerts_is_on_metrics(server, phases, prometheus):
    assert _post(server.inference_url, b"not an image", server.tokens.inference).status_code == 400  # a 4xx sample
    time.sleep(2.5)  # scraped by Prometheus
    text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    sampled = {line.split("{", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    queries = _dashboard().queries()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"][0]["rules"]
    names = set().union(*map(metric_names, queries + [r["expr"] for r in rules])) - {"up"}  # up: Prometheus's own
    assert len(names) >= 12
    # Requests5XX is declared but has no sample until a 5xx happens; every other name has samples by now.
    assert {n for n in names if n not in sampled} <= {"Requests5XX"}
    assert {n for n in names if n not in sampled and n not in declared} == set()
    for q in queries:  # each panel's query runs on a real Prometheus; those without Requests5XX give data
        result = _query(prometheus, q.replace("$__rate_interval", "1m"))
        assert result or "Requests5XX" in q, q


def test_the_alert_rules_load_and_stay_silent_on_a_healthy_server(prometheus):
    rules = requests.get(f"{prometheus}/rules", timeout=10).json()["data"]["groups"][0]["rules"]
    assert sorted(r["name"] for r in rules) == sorted(
        r["alert"] for r in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())["groups"][0]["rules"])
    assert [(r["name"], r["health"], r["state"]) for r in rules if r["health"] != "ok" or r["state"] != "inactive"] == []


def test_a_killed_worker_shows_in_the_restart_query(server, prometheus):
    query = _dashboard().queries()[-1]
    assert "WorkerLoadTime" in query and _value(prometheus, query) == 0
    (worker,) = requests.get(f"{server.management_url}/models/polydet", headers=auth(server.tokens.management),
                             timeout=10).json()[0]["workers"]
    os.kill(worker["pid"], signal.SIGKILL)
    time.sleep(1)
    server.wait_ready("polydet", timeout=240)
    deadline = time.monotonic() + 120
    while (v := _value(prometheus, query)) == 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert v == 1


# ---- the pod's nginx: Secret keys in front of TorchServe's own --------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(predicate, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture(scope="module")
def pod_proxy(server, tmp_path_factory):
    from polydet.serving.proxy import nginx_binary

    if nginx_binary() is None:
        pytest.skip("nginx is not installed (Debian package nginx; `make sysdeps` installs it)")
    d = tmp_path_factory.mktemp("podproxy")
    keys = d / "keys"
    keys.write_text("# the Secret's file\nold-client-key-0123456789\n")
    port, mport = _free_port(), _free_port()
    args = ["--home", str(server.key_file.parent), "--keys", str(keys), "--run-dir", str(d / "run"),
            "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}",
            "--upstream", f"127.0.0.1:{server.ports.inference}", "--metrics-upstream", f"127.0.0.1:{server.ports.metrics}"]
    log = open(d / "podproxy.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "polydet.serving.podproxy", "run", *args], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        assert _until(lambda: _port_open(port), 20), (d / "podproxy.log").read_text()
        yield {"proc": proc, "url": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{mport}", "keys": keys,
               "args": args, "run": d / "run", "log": d / "podproxy.log"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _post(url: str, body: bytes, key: str | None):
    return requests.post(f"{url}/predictions/polydet", data=body, timeout=60,
                         headers={**OCTET, **(auth(key) if key else {})})


def test_the_pod_proxy_takes_secret_keys_only(server, pod_proxy, jpeg):
    url = pod_proxy["url"]
    direct = _post(server.inference_url, jpeg, server.tokens.inference)
    assert direct.status_code == 200
    r = _post(url, jpeg, "old-client-key-0123456789")
    assert r.status_code == 200, r.text
    assert_same_result(r.json(), direct.json())
    for key in (None, server.tokens.inference, "old-client-key-012345678"):  # none, TorchServe's own, one short
        r = _post(url, jpeg, key)
        assert (r.status_code, r.json()["code"]) == (401, 401), key
    m = requests.get(f"{pod_proxy['metrics']}/metrics", timeout=10)
    assert m.status_code == 200 and "ts_inference_requests_total{" in m.text
    assert requests.get(f"{pod_proxy['metrics']}/api-description", timeout=10).status_code == 404
    check = [sys.executable, "-m", "polydet.serving.podproxy", "check", *pod_proxy["args"]]
    assert subprocess.run(check, capture_output=True).returncode == 0
    other = pod_proxy["keys"].with_name("other")
    other.write_text("not-a-key-of-the-secret-0000\n")
    bad = [a if a != str(pod_proxy["keys"]) else str(other) for a in check]
    assert subprocess.run(bad, capture_output=True).returncode == 1


def test_client_keys_rotate_through_the_secrets_file(pod_proxy, jpeg):
    url, keys = pod_proxy["url"], pod_proxy["keys"]
    new = "new-client-key-9876543210"
    keys.write_text(f"old-client-key-0123456789\n{new}\n")  # step 1: both
    assert _until(lambda: _post(url, jpeg, new).status_code == 200)
    assert _post(url, jpeg, "old-client-key-0123456789").status_code == 200
    keys.write_text(f"{new}\n")  # step 2: clients moved, the old key removed
    assert _until(lambda: _post(url, jpeg, "old-client-key-0123456789").status_code == 401)
    assert _post(url, jpeg, new).status_code == 200
    keys.write_text("short\n")  # a broken Secret keeps the keys in force
    time.sleep(2.5)
    assert _post(url, jpeg, new).status_code == 200
    keys.write_text(f"{new}\n")


def test_a_renewed_torchserve_key_is_picked_up(server, pod_proxy, jpeg):
    old = server.tokens.inference
    r = requests.post(f"{server.management_url}/token", params={"type": "inference"},
                      headers=auth(server.tokens.api), timeout=10)
    assert r.status_code == 200, r.text
    server._tokens = None  # key_file.json has the new key
    assert server.tokens.inference != old and _post(server.inference_url, jpeg, old).status_code != 200
    assert _until(lambda: _post(pod_proxy["url"], jpeg, "new-client-key-9876543210").status_code == 200)
    assert "keys changed, nginx reloaded" in pod_proxy["log"].read_text()


def test_the_pod_proxy_stops_on_sigterm(pod_proxy):
    import psutil

    proc = pod_proxy["proc"]
    nginx_pid = int((pod_proxy["run"] / "nginx.pid").read_text())
    assert psutil.pid_exists(nginx_pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert _until(lambda: not psutil.pid_exists(nginx_pid), 5)
