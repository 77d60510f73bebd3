"""Issue 18 on a host with several GPUs (scripts/gpu_multi_bench.sh step 2 runs it; skipped with fewer than two
CUDA GPUs, without TorchServe or Java). `polydet archive --gpu --gpus all`'s archive served with its
number_of_gpu: every GPU gets the same number of workers, each request's answer is the in-process Detector's,
/metrics shows each GPU's images (exactly the ones sent, summed), memory, and the describe line's memory; then
one GPU's workers are killed: the others keep answering and the killed ones come back on their GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from polydet.serving.server import missing_prerequisite

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more CUDA GPUs"),
              pytest.mark.skipif(missing_prerequisite() is not None, reason=str(missing_prerequisite()))]
PER_GPU = 2


def bench():
    spec = importlib.util.spec_from_file_location("gpu_multi_bench", REPO / "scripts" / "gpu_multi_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ready_workers(ts, n: int, timeout: float = 300.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(f"{ts.management_url}/models/polydet", timeout=10,
                         headers={"Authorization": f"Bearer {ts.tokens.management}"})
        ws = r.json()[0]["workers"]
        if sum(w["status"] == "READY" for w in ws) == n:
            return ws
        assert time.monotonic() < deadline, ws
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from polydet.serving.archive import Batching, ArchiveJob, build_archives, gpu_batching
    from polydet.serving.gpus import parse_gpus, visible_gpus
    from polydet.serving.server import Ports, TorchServe

    tmp = tmp_path_factory.mktemp("multi")
    placement = parse_gpus("all", visible_gpus())
    base = dataclasses.replace(Batching(), min_workers=PER_GPU, max_workers=PER_GPU, batch_size=4, max_batch_delay=5)
    job = ArchiveJob(tmp / "store", tmp / "build", weights=str(REPO / "weights/polydet_main_area.pt"),
                     formats=("torchscript",), imgsz=224, batching=gpu_batching(placement, base), device="cuda")
    build_archives(job)
    ts = TorchServe(tmp / "run", ports=Ports.free(), model_store=job.store, models="polydet.mar",
                    properties=placement.properties())
    ts.start()
    try:
        ready_workers(ts, placement.workers(PER_GPU))
        yield ts, placement, next((tmp / "build" / "polydet-1.0").glob("*.torchscript"))
    finally:
        ts.stop()


def post_all(ts, jpegs: list[bytes], threads: int = 16) -> list:
    head = {"Authorization": f"Bearer {ts.tokens.inference}", "Content-Type": "application/octet-stream"}
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(lambda j: requests.post(f"{ts.inference_url}/predictions/polydet", data=j, headers=head,
                                                   timeout=120), jpegs))


def images_by_device(ts) -> dict[str, float]:
    m = bench()
    return m.by_device(m.parse_metrics(requests.get(f"{ts.metrics_url}/metrics", timeout=10).text), "PolydetImages")


def test_every_gpu_serves_and_shows_on_metrics(served):
    from polydet.pipeline import Detector

    ts, placement, artifact = served
    jpeg = (REPO / "src/polydet/assets/sample.jpg").read_bytes()
    want = Detector.from_artifact(artifact, device="cuda:0", gpu_decode=False).detect([jpeg])[0]
    before = images_by_device(ts)
    answers = post_all(ts, [jpeg] * (32 * placement.count))
    assert [r.status_code for r in answers] == [200] * len(answers)
    for r in answers:
        polys = np.array([d["polygon"] for d in r.json()["detections"]])
        assert len(polys) == len(want) and np.abs(polys - want.polygons).max() <= 2.0
    time.sleep(2)  # the frontend exports what it parses from the workers' logs
    after = images_by_device(ts)
    sent = {d: after.get(d, 0) - before.get(d, 0) for d in after}
    assert set(sent) == set(placement.devices()) and sum(sent.values()) == len(answers)
    text = requests.get(f"{ts.metrics_url}/metrics", timeout=10).text
    for d in placement.devices():
        assert f'PolydetGpuMemoryMB{{Device="{d}"' in text, d
    log = (ts.log_dir / "model_log.log").read_text(errors="replace")
    for d in placement.devices():  # the describe line of each worker, with its memory
        assert log.count(f"on {d}, classes") == PER_GPU, d
    assert log.count("MiB reserved by this worker") == placement.workers(PER_GPU)


def test_a_gpus_workers_killed_the_others_answer_and_they_come_back(served):
    m = bench()
    ts, placement, _ = served
    victim = placement.device_ids[-1]
    q = lambda *a: subprocess.run(["nvidia-smi", *a, "--format=csv,noheader"], capture_output=True,  # noqa: E731
                                  text=True, check=True).stdout
    pids = m.pids_on_gpu(q("--query-compute-apps=pid,gpu_bus_id"), q("--query-gpu=index,pci.bus_id"),
                         m.physical_index(victim))
    assert len(pids) == PER_GPU
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)  # the frontend sees the sockets close and stops handing those workers jobs
    jpeg = (REPO / "src/polydet/assets/sample.jpg").read_bytes()
    answers = post_all(ts, [jpeg] * 32)
    assert [r.status_code for r in answers] == [200] * 32  # the other GPUs answer
    ready_workers(ts, placement.workers(PER_GPU))
    before = images_by_device(ts)
    assert [r.status_code for r in post_all(ts, [jpeg] * (32 * placement.count))] == [200] * (32 * placement.count)
    time.sleep(2)
    assert images_by_device(ts).get(f"cuda:{victim}", 0) > before.get(f"cuda:{victim}", 0)  # back on its GPU
