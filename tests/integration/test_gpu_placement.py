"""Issue 18 items 1 and 4 on a real TorchServe 0.12.0 without a GPU: the frontend counts GPUs from
CUDA_VISIBLE_DEVICES' entries and hands out gpu_id with no CUDA involved, so a probe handler that only writes
down its gpu_id shows where `polydet archive --gpu --gpus` + `polydet serve --gpus` put the workers (the
oracle: what the frontend did, against polydet.serving.gpus' expectation), and that a killed worker comes back
on its GPU while the others keep answering."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import requests

from polydet.serving.archive import SERVED, Batching, gpu_batching, model_config
from polydet.serving.gpus import parse_gpus, visible_gpus
from polydet.serving.server import Ports, TorchServe, missing_prerequisite

PROBE = '''import json, os


class Probe:
    def initialize(self, context):
        self.gpu_id = context.system_properties.get("gpu_id")
        with open(os.environ["POLYDET_PROBE_LOG"], "a") as f:
            f.write(f"{os.getpid()} {self.gpu_id}\\n")
        self.initialized = True

    def handle(self, data, context):
        return [json.dumps({"pid": os.getpid(), "gpu_id": self.gpu_id})] * len(data)
'''
VISIBLE = "0,1,2"  # three fake GPUs: TorchServe 0.12.0 counts the entries and asks nothing else


def archive(tmp: Path, spec: str, per_gpu: int) -> tuple[Path, object, int]:
    placement = parse_gpus(spec, visible_gpus({"CUDA_VISIBLE_DEVICES": VISIBLE}))
    base = dataclasses.replace(Batching(), min_workers=per_gpu, max_workers=per_gpu, batch_size=1)
    batching = gpu_batching(placement, base)
    (tmp / "probe.py").write_text(PROBE)
    (tmp / "model-config.yaml").write_text(model_config(batching, SERVED))
    store = tmp / "store"
    store.mkdir()
    subprocess.run([sys.executable, "-m", "model_archiver.model_packaging", "--model-name", "probe", "--version",
                    "1.0", "--handler", str(tmp / "probe.py"), "--config-file", str(tmp / "model-config.yaml"),
                    "--export-path", str(store)], check=True, capture_output=True)
    return store, placement, batching.min_workers


def workers(ts) -> list[dict]:
    r = requests.get(f"{ts.management_url}/models/probe", headers={"Authorization": f"Bearer {ts.tokens.management}"},
                     timeout=10)
    return r.json()[0]["workers"]


def wait_ready(ts, n: int, timeout: float = 120.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        ws = workers(ts)
        if sum(w["status"] == "READY" for w in ws) == n:
            return ws
        assert time.monotonic() < deadline, ws
        time.sleep(0.3)


def probe_log(path: Path) -> dict[int, str]:
    return {int(p): g for p, g in (line.split() for line in path.read_text().splitlines())}


@pytest.fixture
def served(tmp_path, monkeypatch):
    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    started = []

    def start(spec: str, per_gpu: int):
        store, placement, n = archive(tmp_path, spec, per_gpu)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", VISIBLE)
        monkeypatch.setenv("POLYDET_PROBE_LOG", str(tmp_path / "probe.log"))
        ts = TorchServe(tmp_path / "run", ports=Ports.free(), model_store=store, models="probe.mar",
                        properties={**placement.properties(), "metrics_mode": "log"})
        ts.start()
        started.append(ts)
        return ts, placement, n

    yield start
    for ts in started:
        ts.stop()


@pytest.mark.parametrize("spec", ["2", "0,2"])
def test_torchserve_puts_the_one_gpu_worker_count_on_each_named_gpu(served, tmp_path, spec):
    ts, placement, n = served(spec, per_gpu=2)
    ws = wait_ready(ts, n)
    seen = probe_log(tmp_path / "probe.log")
    assert sorted(seen) == sorted(w["pid"] for w in ws)
    assert Counter(seen.values()) == Counter(str(g) for g in placement.assign(n))
    assert Counter(seen.values()) == {str(g): 2 for g in placement.device_ids}


def test_a_killed_gpu_worker_comes_back_on_its_gpu_while_the_others_answer(served, tmp_path):
    ts, placement, n = served("0,2", per_gpu=1)
    ws = wait_ready(ts, n)
    seen = probe_log(tmp_path / "probe.log")
    victim = next(p for p, g in seen.items() if g == "2")
    proc = psutil.Process(victim)
    os.kill(victim, signal.SIGKILL)
    psutil.wait_procs([proc], timeout=10)
    head = {"Authorization": f"Bearer {ts.tokens.inference}"}
    answers = [requests.post(f"{ts.inference_url}/predictions/probe", data=b"x", headers=head, timeout=30)
               for _ in range(5)]  # while the victim's replacement starts
    assert [r.status_code for r in answers] == [200] * 5
    assert {r.json()["gpu_id"] for r in answers} >= {0}
    after = wait_ready(ts, n)
    now = probe_log(tmp_path / "probe.log")
    new = [p for p in now if p not in seen]
    assert len(new) == 1 and now[new[0]] == "2", now  # the same GPU, a new process
    assert sorted(w["pid"] for w in after) == sorted([*(p for p in seen if p != victim), new[0]])
    assert len(ws) == n
